"""Activations that no hook sees: functional calls inside a module's `forward` (`F.relu(self.conv(x))`,
`torch.tanh(h)`, `x.softmax(-1)`), recorded as layers of their own (`functional=True`).

While the model's forward runs (entered by a pre-hook on the root, left by its forward hook, which torch
calls even when the forward raises), a `TorchFunctionMode` sees every torch function call. Calls of
the activation functions in `FUNCTIONS` are recorded; every other call passes straight through. A call is
named by the module whose `forward` made it (found on the Python stack: the nearest `forward` frame of
an `nn.Module`) and the function: `layer1.0:relu`, `block:gelu#2` for its second call in one forward pass,
`model:tanh` for the root's own. Not recorded: calls inside torch's own modules (`nn.ReLU` calls F.relu:
its output is the module's, hooked as such), calls inside a module with no submodules (an activation
module's own workings, as the tanh in Hugging Face's `NewGELUActivation`: hook that module), calls made
by hooks (another tool's), and calls outside any module's forward.

Costs, only when on: a Python `__torch_function__` call per torch function call in the forward pass (a
few microseconds each), and a walk up the stack per activation call. While it is on, torch's fused
fast paths (`nn.TransformerEncoderLayer` in eval) are off, as with any torch function mode. What it
cannot do: inside a `torch.compile` graph no Python runs per call, so a compiled model with
`functional=` is refused at once (`check_not_compiled`).
"""
from __future__ import annotations

import sys
from fnmatch import fnmatchcase

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from .find_layers import root_name
from .hooks import hook_forward, hook_forward_pre

__all__ = ["FUNCTIONS", "FunctionalTap", "check_functions", "check_not_compiled"]

# the activation functions recorded, by name (torch.*, torch.nn.functional.* and Tensor methods alike;
# an in-place variant, `relu_`, by its name without the underscore)
FUNCTIONS = ("relu", "relu6", "leaky_relu", "elu", "selu", "celu", "gelu", "silu", "mish", "softplus", "softsign",
             "tanh", "sigmoid", "hardtanh", "hardsigmoid", "hardswish", "logsigmoid", "softmax", "log_softmax", "glu")
_OURS = {__file__, torch.nn.functional.__file__, torch.overrides.__file__, torch._tensor.__file__}
_CALLS = torch.nn.modules.module.__file__  # Module.__call__: met before a forward, the call is in a hook
_DEPTH = 64  # frames looked at, at most, for the module whose forward made a call


def check_functions(functional) -> tuple:
    """`functional` as (module pattern, function) pairs to record: True for every function of FUNCTIONS in
    every module, False or None for none; else names of FUNCTIONS ("gelu") or "module:function" specs
    ("layer1.*:relu", a glob on the module's name as calls are named), one or a list."""
    if functional is None or functional is False:
        return ()
    if functional is True:
        return tuple(("*", name) for name in FUNCTIONS)
    specs = [functional] if isinstance(functional, str) else functional
    pairs = [tuple(spec.rsplit(":", 1)) if ":" in spec else ("*", spec) for spec in specs
             if isinstance(spec, str)] if isinstance(specs, (list, tuple)) else []
    if not pairs or len(pairs) != len(specs) or any(name not in FUNCTIONS or not module for module, name in pairs):
        raise ValueError(f"functional: {functional!r} is not valid; use True (every activation function), False, "
                         f"function names or 'module:function' specs ('layer1.0:relu', 'blocks.*:gelu') of "
                         f"{FUNCTIONS}")
    return tuple(pairs)


def check_not_compiled(compiled: bool) -> None:
    "Functional calls inside a compiled graph run no Python: say so now rather than record nothing."
    if compiled:
        raise ValueError("functional: a torch.compile'd model runs its functional calls inside the graph, where "
                         "nothing can see them; record the model before compiling it, or use functional=False "
                         "(its modules' outputs are recorded as usual)")


class FunctionalTap(TorchFunctionMode):
    """The mode that records the chosen activation functions' outputs while the root's forward runs.
    `record(layer, function, output)`: the recorder's, called with the call's layer name (`layer1.0:relu#2`),
    the function's (`relu`) and its output."""
    def __init__(self, root: nn.Module, functions: tuple, record):
        super().__init__()
        self.specs = functions  # (module pattern, function) pairs, as `check_functions` gives them
        self.functions = frozenset(name for _, name in functions)
        # the modules whose calls are recorded, by id: the root and those with submodules, not torch's own
        self.names = {id(module): name for name, module in root.named_modules()
                      if (module is root or next(module.children(), None) is not None)
                      and not type(module).__module__.startswith("torch.")}
        self.root_name = root_name(root)
        self.record, self.calls, self.active = record, {}, False
        self._hooks = [hook_forward_pre(root, self.enter), hook_forward(root, self.leave, always=True)]

    def remove(self) -> None:
        "Take the hooks off the root (and leave the mode, if a forward pass is still in it)."
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        self.leave()

    def enter(self, *_) -> None:
        "Watch the calls from now on (the root's forward begins; or a trainer's batch, whose step may not call it)."
        if not self.active:
            self.calls.clear()  # a new forward pass: every call is its owner's first again
            self.active = True
            self.__enter__()

    def leave(self, *_) -> None:
        "Stop watching (the root's forward ended, even by an exception; or the batch did)."
        if self.active:
            self.active = False
            self.__exit__(None, None, None)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        output = func(*args, **(kwargs or {}))
        name = getattr(func, "__name__", "")
        name = name[:-1] if name.endswith("_") and not name.startswith("_") else name
        if name in self.functions and isinstance(output, torch.Tensor):
            owner = self._owner()
            if owner is not None and any(name == wanted and fnmatchcase(owner, pattern) for pattern, wanted in self.specs):
                key = f"{owner}:{name}"
                call = self.calls.get(key, 0)
                self.calls[key] = call + 1
                self.record(key if not call else f"{key}#{call + 1}", name, output)
        return output

    def _owner(self):
        "The name of the module whose forward made this call, or None (torch's own module, a leaf, none)."
        frame = sys._getframe(2)
        for _ in range(_DEPTH):
            if frame is None:
                return None
            code = frame.f_code
            if code.co_filename == _CALLS:  # a hook's call (another tool's, or a test's tap), not a forward's
                return None
            if code.co_name == "forward" and code.co_argcount and code.co_filename not in _OURS:
                module = frame.f_locals.get(code.co_varnames[0])  # `self`, whatever it is called
                if isinstance(module, nn.Module):  # the nearest module's forward: its call, or none's
                    name = self.names.get(id(module))
                    return None if name is None else name or self.root_name
            frame = frame.f_back
        return None
