"""Hooks inside a `torch.compile` graph: one opaque op per hook call, which runs the hook eagerly.

Dynamo traces a module's forward hooks into its graph, on fake tensors. What colordim's hooks do
(numba kernels, Python state, a new layer the first time a shape or a call is seen) must not be
traced, and a graph break is an error under `fullgraph=True`. So a traced `colordim.engine.hooks.Hook`
adds one op to the graph, `colordim::hook` (a `torch.library` custom op): its inputs are the
output's tensors, its arguments the hook's key and the output's layout (the containers around the
tensors, a constant string). At run time the op rebuilds the output around the real tensors and
calls the hook with it, so a compiled model records what an eager one does, with no graph break and
nothing that changes from batch to batch in the graph (no recompile). A hook on each output tensor
that requires grad does the same for its gradient in backward (`colordim::gradient`).

The ops are registered as effectful ("ordered", as torch's own print op): so no op is dropped for
having no output, and they run in the order the hooks were traced (a column opens before its layers
record, they record before it ends), in backward too.
"""
from __future__ import annotations

import ast
import functools
import itertools
import weakref

import torch

__all__ = ["tracing", "running", "register", "unregister", "trace", "available"]

_hooks, _keys = weakref.WeakValueDictionary(), itertools.count()  # key -> its Hook, while it lives
_running = [0]  # > 0 while a graph's op runs a hook: its tensors are not the ones autograd sees
TENSOR = "..."  # a tensor's place in a layout; anything else but containers and None is "\x00" + its type


def _effects():
    "How to mark an op as effectful, and the effect, in this torch (None: it cannot be done)."
    try:
        from torch._library.effects import EffectType
        return torch.library._register_effectful_op, EffectType.ORDERED
    except (ImportError, AttributeError):
        pass
    try:  # torch 2.4 - 2.9
        from torch._higher_order_ops.effects import _EffectType, _register_effectful_op
        return _register_effectful_op, _EffectType.ORDERED
    except (ImportError, AttributeError):
        return None


_EFFECTS = _effects() if hasattr(torch.library, "custom_op") else None  # custom ops: torch >= 2.4
available = _EFFECTS is not None
tracing = getattr(getattr(torch, "compiler", None), "is_compiling", lambda: False) if available else (lambda: False)


def running() -> bool:
    "Whether a compiled graph's op is running a hook now (so gradients come through `colordim::gradient`)."
    return _running[0] > 0


def register(hook) -> int:
    "A key for `hook`, which the graph's ops find it by (weakly held)."
    key = next(_keys)
    _hooks[key] = hook
    return key


def unregister(key: int) -> None:
    "Forget a hook: a graph still holding its key does nothing at its op."
    _hooks.pop(key, None)


def trace(hook, value, output: bool = True) -> None:
    """What a traced hook adds to the graph: its op, on the tensors of `value` (its output, or a pre-hook's
    inputs, which the op takes only to be placed among them: inductor mishandles an op with no tensor
    inputs), and a gradient op on each tensor of an output that requires grad."""
    tensors = []
    layout = _layout(value, tensors)
    if not output:  # the pre-hook's function takes no output
        layout = "None"
    torch.ops.colordim.hook(tensors, hook.key, layout)
    if hook.gradient is not None and output:
        for index, tensor in enumerate(tensors):
            if tensor.requires_grad:
                tensor.register_hook(_tap(hook.key, index))


def _tap(key: int, index: int):
    "A tensor hook that sends the gradient of tensor `index` of hook `key`'s output to its op."
    def tap(grad):
        torch.ops.colordim.gradient(grad, key, index)
    return tap


def _layout(value, tensors: list) -> str:
    "`value` as a Python literal with `...` for each tensor (appended to `tensors`, in order): traced by dynamo."
    if isinstance(value, torch.Tensor):
        tensors.append(value)
        return TENSOR
    if isinstance(value, tuple):
        return "(" + "".join([_layout(item, tensors) + "," for item in value]) + ")"
    if isinstance(value, list):
        return "[" + ",".join([_layout(item, tensors) for item in value]) + "]"
    if isinstance(value, dict):
        keys = [key if isinstance(key, (str, int)) else str(key) for key in value]
        return "{" + ",".join([repr(key) + ":" + _layout(item, tensors) for key, item in zip(keys, value.values())]) + "}"
    return "None" if value is None else repr("\x00" + type(value).__name__)


def rebuild(layout: str, tensors: list):
    "The output `_layout` described, around `tensors`; other objects stand in as `Opaque` of their type's name."
    if layout == TENSOR:  # a plain tensor: most outputs
        return tensors[0]
    found = iter(tensors)

    def fill(value):
        if value is Ellipsis:
            return next(found)
        if isinstance(value, tuple):
            return tuple(fill(item) for item in value)
        if isinstance(value, list):
            return [fill(item) for item in value]
        if isinstance(value, dict):
            return {key: fill(item) for key, item in value.items()}
        if isinstance(value, str) and value.startswith("\x00"):
            return _opaque(value[1:])
        return value
    return fill(_parsed(layout))


@functools.lru_cache(maxsize=256)
def _parsed(layout: str):
    "A layout as Python values, parsed once: a graph passes the same few layouts every batch."
    return ast.literal_eval(layout)


_opaque_types = {}


def _opaque(name: str):
    "An object whose type is called `name`: what the hook is told of an output's part it cannot see."
    if name not in _opaque_types:
        _opaque_types[name] = type(name, (), {"__doc__": "A part of a compiled module's output that is not a tensor."})
    return _opaque_types[name]()


# CUDA graphs (mode="reduce-overhead") would replay the op's kernels without its Python: inductor keeps ops
# with this tag out of them
_UNSAFE = (torch.Tag.cudagraph_unsafe,) if hasattr(torch.Tag, "cudagraph_unsafe") else ()


def _hook_op(tensors: list, key: int, layout: str) -> None:
    "At run time: hook `key`'s call on the real output."
    hook = _hooks.get(key)
    if hook is None:
        return
    _running[0] += 1
    try:
        hook.run(rebuild(layout, tensors) if hook.output else None)
    finally:
        _running[0] -= 1


def _gradient_op(grad: torch.Tensor, key: int, index: int) -> None:
    "At run time, in backward: the gradient of tensor `index` of hook `key`'s output."
    hook = _hooks.get(key)
    if hook is not None:
        hook.run_gradient(index, grad)


def _nothing(*args) -> None:
    "Both ops' fake implementation: they return nothing."
    return None


if available:
    # Defined with torch.library.Library, one Python kernel for every device (CompositeExplicitAutograd):
    # a call costs 2.4 us, against 7.9 us for the same op made by torch.library.custom_op, whose autograd
    # and dispatch layers are Python too (measured in eager, 2026-12-06; the op runs once per hook call)
    _library = torch.library.Library("colordim", "DEF")
    _library.define("hook(Tensor[] tensors, int key, str layout) -> ()", tags=_UNSAFE)
    _library.define("gradient(Tensor grad, int key, int index) -> ()", tags=_UNSAFE)
    _library.impl("hook", _hook_op, "CompositeExplicitAutograd")
    _library.impl("gradient", _gradient_op, "CompositeExplicitAutograd")
    torch.library.register_fake("colordim::hook", _nothing, lib=_library)
    torch.library.register_fake("colordim::gradient", _nothing, lib=_library)
    for _op in ("colordim::hook", "colordim::gradient"):
        _EFFECTS[0](_op, _EFFECTS[1])
