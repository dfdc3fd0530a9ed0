"""Torch hooks that a copy of the model does not carry along, and that `torch.compile` runs eagerly.

Recording sees a module's outputs through `register_forward_hook`: the contract torch's own fast
paths respect (a fused `nn.TransformerEncoderLayer` runs its real submodules only when one has
hooks). Two things a plain function as a hook would get wrong:

- A copy of a hooked model (`copy.deepcopy`, `pickle`, `torch.save`) copies its hook dicts. A copy
  is another model: it must not record into our columns, nor keep a hook once recording ends. So a
  `Hook` copies as an `Inert` placeholder that does nothing; `remove()` takes the placeholders off
  the deep copies too, and an unpickled one takes itself off at its first call.
- `torch.compile` traces hooks into its graph, with fake tensors: what a hook calls must never run
  there (a recompile per layer, or compiled code handed a temporary tensor). So a `Hook` is never
  traced (`torch._disable_dynamo`, the lazy `torch.compiler.disable`): a graph break, eager values.
"""
from __future__ import annotations

import weakref

import torch
from torch import nn

__all__ = ["Hook", "Inert", "hook_forward", "hook_forward_pre", "ours"]

_never_traced = getattr(torch, "_disable_dynamo", lambda function: function)  # torch < 2.1 has no dynamo


def hook_forward(module: nn.Module, function) -> "Hook":
    "Call `function(module, inputs, output)` after each forward of `module`; `remove()` on the result stops it."
    hook = Hook(function, module)
    hook.handle = module.register_forward_hook(hook)
    return hook


def hook_forward_pre(module: nn.Module, function) -> "Hook":
    "Call `function(module, inputs)` before each forward of `module`; `remove()` on the result stops it."
    hook = Hook(function, module)
    hook.handle = module.register_forward_pre_hook(hook)
    return hook


class Hook:
    "A torch hook that calls `function(module, ...)` and returns None, so it never replaces a value."
    __slots__ = ("function", "module", "handle", "copies", "__weakref__")

    def __init__(self, function, module: nn.Module):
        self.function, self.module, self.handle = function, weakref.ref(module), None
        self.copies = []  # (weak reference to a deep copy of the module, the Inert standing in there)

    # Never traced by torch.compile: a graph break, then this runs eagerly on real tensors. Measured:
    # 0.6 us a call more than a plain function; dynamo is imported at the first call (~1.7 s, once).
    @_never_traced
    def __call__(self, module, *args):
        self.function(module, *args)

    def remove(self) -> None:
        "Take this hook off its module, and its placeholders off the deep copies made meanwhile. Idempotent."
        if self.handle is not None:
            self.handle.remove()
            self.handle = None
        for copied, inert in self.copies:
            module = copied()
            if module is not None:
                inert.take_off(module)
        self.copies = []

    def __deepcopy__(self, memo):
        "A deep copy of the module gets an `Inert`, taken off when this hook is removed."
        inert, original = Inert(), self.module()
        copied = memo.get(id(original)) if original is not None else None
        if isinstance(copied, nn.Module) and self.handle is not None:
            self.copies = [(module, placeholder) for module, placeholder in self.copies if module() is not None]
            self.copies.append((weakref.ref(copied), inert))  # copies made every batch stay bounded: dead ones go
        return inert

    def __reduce__(self):
        "A pickled copy (pickle, torch.save) gets an `Inert`, which takes itself off at its first call."
        return Inert, ()


class Inert:
    "What a copy of a hooked module holds instead of our hook: does nothing, and leaves at its first call."
    __slots__ = ()

    def __call__(self, module, *args):
        self.take_off(module)

    def take_off(self, module: nn.Module) -> None:
        "Remove this placeholder from `module`'s hook dicts (torch iterates a snapshot of them: safe in a call)."
        for name in ("_forward_hooks", "_forward_pre_hooks"):
            hooks = module.__dict__.get(name, {})
            for key in [key for key, hook in hooks.items() if hook is self]:
                del hooks[key]
                for extra in ("_forward_hooks_with_kwargs", "_forward_hooks_always_called",
                              "_forward_pre_hooks_with_kwargs"):
                    module.__dict__.get(extra, {}).pop(key, None)

    def __deepcopy__(self, memo):
        return Inert()

    def __reduce__(self):
        return Inert, ()


def ours(module: nn.Module) -> list:
    "The colordim hooks and placeholders on `module` (what tests check is gone)."
    hooks = [*module._forward_hooks.values(), *module._forward_pre_hooks.values()]
    return [hook for hook in hooks if isinstance(hook, (Hook, Inert))]
