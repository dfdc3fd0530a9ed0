"""Tensor subclasses whose methods are Python (fastai's): read as plain tensors on the hot path.

fastai's `TensorBase` (`TensorImage`, `TensorCategory`, ...) overrides `__torch_function__`, and a fastai
model's layers pass the input's type on to their outputs: every method call and attribute read on such
an output (`shape`, `dtype`, `detach()`, `numpy()`, each torch op of the GPU path) runs fastai's Python
first, about 6 us each here. A hook reads an output a dozen times; that was about 60 us a hooked module
and batch in a fastai fit, several times what recording itself costs. Inside `reading(output)` torch
skips subclasses' `__torch_function__` (`torch._C.DisableTorchFunctionSubclass`): the same tensor, the
same values, read as the plain tensor it is underneath.

Only for subclasses that hold their values themselves and add Python methods (no `__torch_dispatch__`
of their own). A wrapper subclass (FakeTensor, DTensor, a jagged NestedTensor, a FunctionalTensor) is
read through its own methods, as before: its values are not its own storage's.
"""
from __future__ import annotations

import contextlib

import torch

__all__ = ["reading", "python_methods"]

_SKIP = getattr(torch._C, "DisableTorchFunctionSubclass", None)  # torch >= 2.0
_NOTHING = contextlib.nullcontext()
_kinds: dict = {}  # tensor subclass -> whether its instances are read as plain tensors


def python_methods(cls) -> bool:
    """Whether instances of `cls`, a torch.Tensor subclass, hold their own values and only add Python methods:
    a `__torch_function__` of their own, the default `__torch_dispatch__`."""
    kind = _kinds.get(cls)
    if kind is None:
        function = getattr(cls.__torch_function__, "__func__", cls.__torch_function__)
        dispatch = getattr(cls.__torch_dispatch__, "__func__", cls.__torch_dispatch__)
        kind = _kinds[cls] = _SKIP is not None and issubclass(cls, torch.Tensor) \
            and function is not torch._C._disabled_torch_function_impl \
            and dispatch is torch._C._disabled_torch_dispatch_impl
    return kind


def reading(output):
    """The context to read `output` (a tensor, or a tuple, list or dict of them) in: torch skipping subclasses'
    `__torch_function__` when its tensors are all plain or of `python_methods` subclasses and one is of those;
    else a context that does nothing."""
    kind = type(output)
    if kind is torch.Tensor:
        return _NOTHING
    if isinstance(output, torch.Tensor):
        return _SKIP() if python_methods(kind) else _NOTHING
    if kind in (tuple, list, dict):
        values = output.values() if kind is dict else output
        kinds = {type(value) for value in values if isinstance(value, torch.Tensor)} - {torch.Tensor}
        if kinds and all(python_methods(kind) for kind in kinds):
            return _SKIP()
    return _NOTHING
