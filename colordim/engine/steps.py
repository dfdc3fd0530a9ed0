"""The streams of an optimizer step: each chosen parameter's weights, gradient and update, once per step.

A column with a step gets them; a column without one (a validation batch, a batch that only accumulates
gradients, a step the grad scaler skipped) gets none. A trainer's adapter calls, around the step:

- `keep_weights(only)` before it: a copy of the weights for the update (of the recorded parameters only:
  their memory once more);
- `after_step(only)` after it: the gradients the step used (nothing zeroes them before the step returns:
  accumulated, unscaled by the grad scaler, clipped), the weights as it left them, and the update, after
  minus the kept copy.

Both after the step, not the gradients before it: an optimizer given a closure (LBFGS, and every
Lightning step) computes the gradients inside `step()`, after its pre-hooks ran. fastai, whose events
have no place between the clipping and the step, keeps the weights at each step's end for the next one.

Each parameter is histogrammed by its own `LayerRecorder`, viewed as (1, rows, -1): its units are its
rows (a weight's output units). A weight gradient's dead count is the number of its rows that are
exactly zero (a unit that did not learn this step); the weights' and updates' is, as for an output, the
rows with no value above zero (of little use: it is not worth another pass). Nothing here syncs with the
device.
"""
from __future__ import annotations

import numpy as np
import torch

from ..data.layout import DEAD
from ..data.options import STREAMS
from .find_layers import find_layers

__all__ = ["ParamSteps", "STREAMS", "find_params"]


def find_params(model, modules: dict, chosen=True) -> dict:
    """{name: (parameter, its module's class name)} of the parameters to record, each once, in the model's order:
    `chosen` True, those of `modules` ({layer name: module}); else a spec like `layers=` (or a list): parameter
    names from `model.named_parameters()` ("0.weight"), or layers (index, name, glob, class) whose parameters."""
    named = dict(model.named_parameters())
    owner = {f"{prefix}.{local}" if prefix else local: type(module).__name__
             for prefix, module in model.named_modules() for local, _ in module.named_parameters(recurse=False)}
    if chosen is True:
        wanted = {id(p) for module in modules.values() for p in module.parameters()}
    else:
        wanted = set()
        for spec in chosen if isinstance(chosen, (list, tuple)) else [chosen]:
            wanted |= {id(named[spec])} if isinstance(spec, str) and spec in named else _of_layers(model, spec, named)
    names = [name for name, p in named.items() if id(p) in wanted]
    if not names:
        raise ValueError("params: the chosen layers have no parameters to record; choose layers with weights "
                         "(params=nn.Linear, params=['0', '2']) or name parameters (params=['0.weight', ...])")
    return {name: (named[name], owner.get(name, "")) for name in names}


def _of_layers(model, spec, named: dict) -> set:
    "The ids of the parameters of the layers `spec` names (as `layers=`), or a ValueError saying what is valid."
    try:
        return {id(p) for module in find_layers(model, spec).values() for p in module.parameters()}
    except (ValueError, TypeError) as error:
        shown = ", ".join(list(named)[:12]) + (", ..." if len(named) > 12 else "")
        raise ValueError(f"params: {spec!r} is neither a parameter of the model nor a layer ({error}); use True "
                         f"(the recorded layers' parameters), layers as in `layers=`, or parameter names: {shown}") \
            from None


class ParamSteps:
    "Record each chosen parameter's streams into the open column at an optimizer step (see the module's doc)."
    def __init__(self, params: dict, layers: dict, columns):
        self.params = {name: tensor for name, (tensor, _) in params.items()}  # name -> parameter
        self.layers = layers  # kind -> {name: LayerRecorder}
        self.columns = columns  # the ledger: its open row is where the step goes
        self._before = {}  # name -> the weights kept before a step (then, in place, its update)
        self._fresh = set()  # the names whose kept weights are those before the coming step
        self._done = {}  # name -> the column (`columns.opened`) that has this parameter's step already

    def after_step(self, only=None) -> None:
        "The gradients the step used, the weights it left, the update; `only`: the ids one optimizer steps."
        for name, tensor in self._open(only):
            if "param_grad" in self.layers:
                self._add_grad(name, tensor)
            if "param" in self.layers:
                self._add(self.layers["param"][name], tensor)
            if name in self._fresh and _same(self._before[name], tensor):
                before = self._before[name]
                self._add(self.layers["update"][name], torch.sub(tensor.detach(), before, out=before))
            self._fresh.discard(name)
            self._done[name] = self.columns.opened

    def keep_weights(self, only=None) -> None:
        "Keep the weights as they are now for the next step's update (`only`: the ids one optimizer steps)."
        if "update" in self.layers:
            for name, tensor in self.params.items():
                if only is None or id(tensor) in only:
                    self._keep(name, tensor)

    def forget(self) -> None:
        "Drop the kept weights (the fit ended): their memory goes back."
        self._before, self._fresh = {}, set()

    def _open(self, only):
        "The (name, parameter) pairs to record now: a column is open and this step is not in it yet."
        if self.columns.row is None:
            return []
        chosen = self.params.items() if only is None else [(n, p) for n, p in self.params.items() if id(p) in only]
        return [(name, tensor) for name, tensor in chosen if self._done.get(name) != self.columns.opened]

    def _keep(self, name: str, tensor: torch.Tensor) -> None:
        "Copy the weights into this parameter's kept tensor (made once, again only if the parameter changed)."
        before = self._before.get(name)
        if before is None or not _same(before, tensor):
            before = self._before[name] = torch.empty_like(tensor.detach())
        before.copy_(tensor.detach())
        self._fresh.add(name)

    def _add_grad(self, name: str, tensor: torch.Tensor) -> None:
        grad = tensor.grad
        layer = self.layers["param_grad"][name]
        if grad is None:  # frozen, or not used this step: nothing to record
            return
        if grad.layout != torch.strided:
            layer.skipped = f"gradient layout {grad.layout} is not strided (a sparse gradient)"
            return
        rows = self._add(layer, grad)
        if rows is not None and layer.settings.stats and layer.buffer is not None:
            _count_zero_rows(rows[0], layer.buffer, self.columns.row)

    def _add(self, layer, tensor: torch.Tensor):
        "Histogram `tensor` into the open row, its rows as the units; returns the (1, rows, -1) view (None: empty)."
        values = tensor.detach()
        rows = values.reshape(1, values.shape[0] if values.dim() >= 2 else values.numel(), -1)
        if not rows.numel() or not rows.is_floating_point():
            return None
        layer.add(rows)
        return rows


def _count_zero_rows(rows: torch.Tensor, buffer, row: int) -> None:
    "The moments' dead count of `row`: how many of `rows` (rows, -1) are exactly zero (on the CPU: numpy, in place)."
    if buffer.host is not None and rows.dtype != torch.bfloat16:  # CPU memory: one numpy pass
        nonzero = rows.numpy().any(axis=1)
        buffer.host[1][row, DEAD] = len(nonzero) - np.count_nonzero(nonzero)
    else:  # on the device, no sync
        buffer.moments[row, DEAD].copy_((rows == 0).all(1).sum())


def _same(kept: torch.Tensor, tensor: torch.Tensor) -> bool:
    return kept.shape == tensor.shape and kept.dtype == tensor.dtype and kept.device == tensor.device
