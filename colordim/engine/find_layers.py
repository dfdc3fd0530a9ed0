"""Turn a layer spec (index, dotted name, glob, module class or module) into named modules."""
from __future__ import annotations

import difflib
from fnmatch import fnmatchcase

from torch import nn

__all__ = ["find_layers", "hookable_modules", "default_layers", "root_name", "unwrapped", "compiled"]

MODEL_NAME = "model"  # what the root module is called when it is hooked itself (see `root_name`)
_SHOWN = 20  # how many available names an error lists


_WRAPPERS = (nn.parallel.DistributedDataParallel, nn.DataParallel)  # DDP (Accelerate's `prepare` too), DataParallel


def _wrapped(model: nn.Module):
    "`model`, then each module it wraps: a `torch.compile` wrapper's, a DDP's or DataParallel's (4 deep at most)."
    for _ in range(4):
        yield model
        inner = getattr(model, "_orig_mod", None) if type(model).__name__ == "OptimizedModule" else \
            model.module if isinstance(model, _WRAPPERS) else None
        if not isinstance(inner, nn.Module):
            return
        model = inner
    yield model


def unwrapped(model: nn.Module) -> nn.Module:
    """The module inside a `torch.compile(model)` wrapper (its layers have the eager names: `0.1`, not
    `_orig_mod.0.1`; hooks on it are traced into the compiled graph) or a DDP / DataParallel wrapper (`0.1`,
    not `module.0.1`), a wrapper in a wrapper too; or `model` itself."""
    *_, inner = _wrapped(model)
    return inner


def compiled(model: nn.Module) -> bool:
    "Whether `model` runs a torch.compile graph: a `torch.compile(model)` wrapper, or compiled in place (`model.compile()`)."
    return any(type(module).__name__ == "OptimizedModule" or getattr(module, "_compiled_call_impl", None) is not None
               for module in _wrapped(model))


def root_name(model: nn.Module) -> str:
    """The root's name as a layer: "model", or "(model)" when a submodule is already called "model"
    (every Hugging Face `*ForCausalLM` has one)."""
    return MODEL_NAME if MODEL_NAME not in dict(model.named_children()) else f"({MODEL_NAME})"


def hookable_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    "Every submodule of `model` (not the model itself), named and in `named_modules()` order."
    return [(name, module) for name, module in model.named_modules() if name]


def default_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The leaf modules that have parameters: what fastai's `ActivationStats` hooks; a model that is itself
    such a leaf (`record(nn.Conv2d(3, 8, 3))`): the model, by its root name."""
    if _leaf_with_parameters(model):
        return [(root_name(model), model)]
    return [(name, module) for name, module in hookable_modules(model) if _leaf_with_parameters(module)]


def _leaf_with_parameters(module: nn.Module) -> bool:
    return next(module.children(), None) is None and next(module.parameters(), None) is not None


def find_layers(model: nn.Module, layers=None) -> dict[str, nn.Module]:
    "Resolve `layers` (one spec or a list of them) to `{name: module}` in the model's order."
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    model = unwrapped(model)
    if layers is None:
        found = default_layers(model)
        if not found:
            raise ValueError(f"layers: {type(model).__name__} has no leaf module with parameters to "
                             f"record by default; pass `layers=` (names: {_available(model)}; "
                             f"{root_name(model)!r}: the model's own output)")
        return dict(found)
    specs = list(layers) if isinstance(layers, (list, tuple, set)) else [layers]
    if not specs:
        raise ValueError("layers: got an empty list; pass None for every leaf module with parameters, "
                         f"or some of: {_available(model)}")
    chosen = {id(module) for spec in specs for _, module in _resolve(model, spec)}
    everything = [(root_name(model), model)] + hookable_modules(model)
    return {name: module for name, module in everything if id(module) in chosen}


def _resolve(model: nn.Module, spec) -> list[tuple[str, nn.Module]]:
    "The modules one spec names; a clear error when it names none."
    modules = hookable_modules(model)
    if isinstance(spec, bool):  # bool is an int, but `layers=True` is surely a mistake
        raise TypeError(f"layers: {spec!r} is not a layer spec; use an int, a name, a pattern, "
                        "a module class or a module")
    if isinstance(spec, int):
        if -len(modules) <= spec < len(modules):
            return [modules[spec]]
        raise ValueError(f"layers: index {spec} is out of range; {type(model).__name__} has "
                         f"{len(modules)} submodules (0..{len(modules) - 1}): {_available(model)}")
    if isinstance(spec, str):
        return _by_name(model, modules, spec)
    if isinstance(spec, type) and issubclass(spec, nn.Module):
        found = [(name, module) for name, module in modules if isinstance(module, spec)]
        if found:
            return found
        raise ValueError(f"layers: {type(model).__name__} has no module of type {spec.__name__}; "
                         f"types present: {_types(modules)}")
    if isinstance(spec, nn.Module):
        if spec is model:
            return [(root_name(model), model)]
        found = [(name, module) for name, module in modules if module is spec]
        if found:
            return found
        raise ValueError(f"layers: the module {type(spec).__name__} given is not part of "
                         f"{type(model).__name__}; pass one of its own modules or a name: {_available(model)}")
    raise TypeError(f"layers: {spec!r} ({type(spec).__name__}) is not a layer spec; use an int index, "
                    "a dotted name like '0.0', a pattern like 'layer*.conv*', a module class like "
                    "nn.ReLU, or a module of the model")


def _by_name(model, modules, spec: str):
    names = [name for name, _ in modules]
    if spec in names:
        return [modules[names.index(spec)]]
    if spec == root_name(model):  # "model", or "(model)" beside a submodule called "model"
        return [(spec, model)]
    if any(char in spec for char in "*?["):
        found = [(name, module) for name, module in modules if fnmatchcase(name, spec)]
        if found:
            return found
        raise ValueError(f"layers: pattern {spec!r} matches no module of {type(model).__name__}; "
                         f"names are: {_available(model)}")
    close = difflib.get_close_matches(spec, names, n=3)
    raise ValueError(f"layers: no module named {spec!r} in {type(model).__name__}; close names: "
                     f"{close or 'none'}; names are: {_available(model)}")


def _available(model: nn.Module) -> str:
    "The first names a user can pass, for error messages."
    names = [name for name, _ in hookable_modules(model)]
    shown = ", ".join(repr(name) for name in names[:_SHOWN])
    more = f", ... ({len(names) - _SHOWN} more; `model.named_modules()` lists them all)" if len(names) > _SHOWN else ""
    return (shown + more) if names else "none (the model has no submodules)"


def _types(modules) -> str:
    return ", ".join(sorted({type(module).__name__ for _, module in modules})) or "none"
