"""Torch hooks that a copy of the model does not carry along, and that `torch.compile` runs eagerly.

Recording sees a module's outputs through `register_forward_hook`: the contract torch's own fast
paths respect (a fused `nn.TransformerEncoderLayer` runs its real submodules only when one has
hooks). Two things a plain function as a hook would get wrong:

- A copy of a hooked model (`copy.deepcopy`, `pickle`, `torch.save`) copies its hook dicts. A copy
  is another model: it must not record into our columns, nor keep a hook once recording ends. So a
  `Hook` copies as an `Inert` placeholder that does nothing; `remove()` takes the placeholders off
  the deep copies too, and an unpickled one takes itself off at its first call.
- `torch.compile` traces hooks into its graph, with fake tensors: what a hook calls must never run
  there (a recompile per layer, or compiled code handed a temporary tensor), and a graph break is an
  error under `fullgraph=True`. So a traced `Hook` puts one opaque op in the graph instead
  (`colordim::hook`, a `torch.library` custom op): no break, no recompile, and at run time the op
  calls the hook's function eagerly on the real tensors, so a compiled model records exactly what an
  eager one does (`colordim.engine.in_graph`).
"""
from __future__ import annotations

import weakref

import torch
from torch import nn

from . import in_graph

__all__ = ["Hook", "Inert", "hook_forward", "hook_forward_pre", "ours"]

# torch < 2.4 has no custom ops: there a hook is never traced (a graph break), and runs eagerly
_eager_only = (lambda function: function) if in_graph.available else getattr(torch, "_disable_dynamo", lambda f: f)


def hook_forward(module: nn.Module, function, gradient=None, always: bool = False) -> "Hook":
    """Call `function(module, inputs, output)` after each forward of `module`; `remove()` on the result stops
    it. `gradient(module, index, grad)`: where a compiled graph sends the gradient of the output's `index`-th
    tensor (eager code hooks gradients itself, on the tensors `function` is given). `always`: also after a
    forward that raised (then with output None)."""
    hook = Hook(function, module, gradient)
    hook.handle = module.register_forward_hook(hook, always_call=always)
    return hook


def hook_forward_pre(module: nn.Module, function) -> "Hook":
    "Call `function(module, inputs)` before each forward of `module`; `remove()` on the result stops it."
    hook = Hook(function, module, output=False)
    hook.handle = module.register_forward_pre_hook(hook, with_kwargs=True)  # a compiled graph's op takes them
    return hook


class Hook:
    """A torch hook that calls `function(module, ...)` and returns None, so it never replaces a value. Traced
    by torch.compile, it is one op in the graph that calls `function` eagerly (`colordim.engine.in_graph`); there
    `function` gets no inputs (`()`), only the output."""
    __slots__ = ("function", "module", "handle", "copies", "gradient", "output", "key", "__weakref__")

    def __init__(self, function, module: nn.Module, gradient=None, output: bool = True):
        self.function, self.module, self.handle = function, weakref.ref(module), None
        self.copies = []  # (weak reference to a deep copy of the module, the Inert standing in there)
        self.gradient, self.output = gradient, output  # a forward hook's: where compiled gradients go; an output
        self.key = in_graph.register(self)  # what the graph's op finds this hook by

    @_eager_only
    def __call__(self, module, *args):
        if in_graph.tracing():  # torch.compile: one opaque op in the graph instead of this call
            in_graph.trace(self, args[-1] if self.output else args, self.output)
        elif self.output:
            self.function(module, *args)
        else:  # (inputs, keyword inputs): the function takes the inputs
            self.function(module, args[0])

    def run(self, output) -> None:
        "The graph's op at run time: the hook's call on the real output (a module gone since: nothing)."
        module = self.module()
        if module is not None and self.handle is not None:
            self.function(module, (), output) if self.output else self.function(module, ())

    def run_gradient(self, index: int, grad) -> None:
        "The graph's gradient op at run time: the gradient of the output's `index`-th tensor."
        module = self.module()
        if module is not None and self.handle is not None and self.gradient is not None:
            self.gradient(module, index, grad)

    def remove(self) -> None:
        "Take this hook off its module, and its placeholders off the deep copies made meanwhile. Idempotent."
        if self.handle is not None:
            self.handle.remove()
            self.handle = None
        in_graph.unregister(self.key)
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
        if not in_graph.tracing():  # a compiled copy keeps it until it runs eagerly: it does nothing either way
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
