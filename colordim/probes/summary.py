"""`colordim.summary(model, x)`: every module of a model with what `layers=` takes to pick it, before training.

It runs the model once on `x`, in eval mode and without gradients, with a forward hook on each module
for that one call; then it takes the hooks off and puts every module's mode back as it was.
"""
from __future__ import annotations

import html
from dataclasses import dataclass

import torch
from torch import nn

from ..health.report import text_table
from ..engine.find_layers import default_layers, hookable_modules, root_name, unwrapped

__all__ = ["summary", "Summary"]

HEADER = ("index", "name", "type", "output shape", "params", "default")
AGAIN = " (and more calls)"


@dataclass
class Summary:
    "One row per module: index and name (what `layers=` takes), type, output shape, parameters, hooked by default."
    rows: list  # dicts with the keys of HEADER

    def _cells(self, row) -> list[str]:
        return [str(row["index"]), row["name"], row["type"], row["output shape"], f"{row['params']:,}",
                "yes" if row["default"] else ""]

    def __str__(self) -> str:
        table = text_table(HEADER, [self._cells(row) for row in self.rows], right=(0, 4))
        hooked = sum(row["default"] for row in self.rows)
        return "\n".join(table + ["", f"default: hooked when `layers=None` ({hooked} modules, the leaves with "
                                      "parameters); pass indices, names, patterns or classes to `layers=`"])

    __repr__ = __str__

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{html.escape(title)}</th>" for title in HEADER)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in self._cells(row)) + "</tr>"
                       for row in self.rows)
        return f'<table class="colordim-summary"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def summary(model: nn.Module, x) -> Summary:
    """Every module of `model`: its index and name (what `layers=` takes), type, output shape for input `x`
    (a tensor, a tuple of positional inputs, or a dict of keyword inputs), parameter count (its own and its
    children's) and whether colordim hooks it by default. Runs `model` once, in eval without gradients."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    model = unwrapped(model)
    modules = [(root_name(model), model)] + hookable_modules(model)
    shapes = _output_shapes(model, [module for _, module in modules], x)
    chosen = {id(module) for _, module in default_layers(model)}
    return Summary([dict(index="" if position == 0 else position - 1, name=name, type=type(module).__name__,
                         **{"output shape": shapes.get(id(module), "not run"),
                            "params": sum(p.numel() for p in module.parameters()),
                            "default": id(module) in chosen})
                    for position, (name, module) in enumerate(modules)])


def _output_shapes(model: nn.Module, modules: list, x) -> dict:
    "id(module) -> its output's shape(s) in one eval call of `model` on `x`; the modes and hooks as they were."
    modes = [(module, module.training) for module in model.modules()]
    shapes, handles = {}, []

    def seen(module, inputs, output):
        if id(module) not in shapes:
            shapes[id(module)] = _shape(output)
        elif not shapes[id(module)].endswith(AGAIN):  # shared: each call is a layer of its own (`name#2`)
            shapes[id(module)] += AGAIN
    try:
        handles = [module.register_forward_hook(seen) for module in modules]
        model.eval()
        with torch.no_grad():
            if isinstance(x, dict):
                model(**x)
            elif isinstance(x, (tuple, list)):
                model(*x)
            else:
                model(x)
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes:
            module.training = training
    return shapes


def _shape(value) -> str:
    "A module output's shape as text: (2, 10); a container's tensors' shapes; or its type."
    if isinstance(value, torch.Tensor):
        return "(" + ", ".join(str(size) for size in value.shape) + ")" if not value.is_nested else "nested"
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_shape(item) for item in value) + "]" if value else "[]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key}: {_shape(item)}" for key, item in value.items()) + "}"
    return type(value).__name__
