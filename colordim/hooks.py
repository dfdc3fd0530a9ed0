"""How a recorder sees a module's outputs: a torch forward hook, or on the CPU a wrapped `forward`.

A module with a forward hook runs torch's hook path (`Module._call_impl` makes a closure, a set and
dict views on every call): measured here, about 6 us per module in a training step, as much as
summarising a sampled output costs. A module without hooks calls its `forward` straight away. So a
module whose parameters and buffers are all on the CPU gets a `RecordedForward` as its `forward`
instead: it calls the module's own forward, then the hook, with what a forward hook gets.

Elsewhere (a GPU) the hook is a torch forward hook: `nn.DataParallel`'s replicas copy the module's
attributes, and a wrapped `forward` would run the original module's on the replica's inputs.
A copy of a wrapped module (`copy.deepcopy`, `pickle`, `torch.save`) gets the module's own forward
back, not the recording: a copy is another model.
"""
from __future__ import annotations

from itertools import chain

from torch import nn

__all__ = ["hook_forward", "RecordedForward", "USE_WRAPPER"]

USE_WRAPPER = True  # tests set it False to hook every module the way GPU modules are hooked


def hook_forward(module: nn.Module, hook):
    """Call `hook(module, inputs, output)` after each forward of `module`; returns a handle whose
    `remove()` stops it. A `RecordedForward` when the module's tensors are all on the CPU."""
    tensors = chain(module.parameters(), module.buffers())
    if USE_WRAPPER and all(tensor.device.type == "cpu" for tensor in tensors):
        try:
            return RecordedForward(module, hook)
        except (AttributeError, TypeError, RuntimeError):  # a module that refuses a new `forward`
            pass
    return module.register_forward_hook(hook)


def _itself(value):
    "What unpickling a `RecordedForward` gives: the forward it wrapped."
    return value


class RecordedForward:
    """`module.forward` that calls the module's own forward, then `hook(module, inputs, output)`: a
    forward hook without torch's hook path. It is its own handle: `remove()` takes it off."""
    __slots__ = ("module", "call", "hook", "own")

    def __init__(self, module: nn.Module, hook):
        # `own`: an instance attribute `forward` that was there before (another wrapper), to put back
        self.module, self.call, self.hook, self.own = module, module.forward, hook, module.__dict__.get("forward")
        module.forward = self

    def __call__(self, *args, **kwargs):
        output = self.call(*args, **kwargs)
        if self.hook is not None:
            self.hook(self.module, args, output)
        return output

    def remove(self) -> None:
        """Put the module's forward back as it was. If something wrapped this since, it stays, and
        this only stops calling the hook. Safe to call twice."""
        self.hook = None
        attributes = self.module.__dict__
        if attributes.get("forward") is self:
            if self.own is None:
                del attributes["forward"]
            else:
                attributes["forward"] = self.own
                if isinstance(self.own, RecordedForward) and self.own.hook is None:
                    self.own.remove()  # one removed while this was over it: off too now

    @property
    def __wrapped__(self):
        "The forward this wraps: `inspect.signature(module.forward)` is the module's own (some libraries read it)."
        return self.call

    def __reduce__(self):
        "A copy (pickle, copy.deepcopy) gets the forward this wraps: the copy's own, not the recording."
        return _itself, (self.call,)  # a bound method is copied as getattr(the module's copy, "forward")

    def __repr__(self):
        return f"RecordedForward({self.call!r})"
