"""Which layer an output goes to: the step between a hooked module's forward hook and its `LayerRecorder`.

A module's output is usually one tensor, recorded as the module's layer. The rest is routing:
- a tuple, list or dict of tensors (attention's `(output, weights)`, a Hugging Face model's output
  dict): each tensor is a layer of its own, named by its path (`attn[0]`), added when first seen;
- a module called again in one forward pass (a shared block, a loop): each call a layer (`block#2`);
- activation checkpointing recomputes a forward in backward: not recorded again, its gradient hooked;
- in a compiled graph the output's tensors are not autograd's: their gradients come back through the
  graph's op (`colordim.engine.in_graph`), to the layers waiting for them.
"""
from __future__ import annotations

import torch

from . import in_graph
from .plain import reading

__all__ = ["Routing", "CALLS", "backward_task"]

CALLS = 32  # calls of one module in one forward pass kept apart; from the 32nd on they share a layer
backward_task = getattr(torch._C, "_current_graph_task_id", lambda: -1)  # -1: not inside a backward pass


class Routing:
    """Where each call of each hooked module goes. `layers`: {kind: [LayerRecorder]} by slot (the modules'
    first, then parts and repeat calls, which `add_slot(name, module_slot)` adds); `columns`: the ledger
    (a column open or not)."""
    def __init__(self, layers: dict, columns, add_slot, modules: int):
        self.layers, self.columns, self.add_slot = layers, columns, add_slot
        self.containers, self.part_slots = set(), {}  # module slots that returned containers; (slot, path) -> slot
        self.first_part = {}  # container module slot -> the path of its first part
        self.calls = [0] * modules  # per module: its calls so far in this forward pass
        self.zeros = tuple(self.calls)
        self.repeats = {}  # (module slot, call) -> the slot of that call (a module run again: a layer of its own)
        self.waiting = {}  # compiled graphs: (module slot, tensor index) -> the layers its gradients go to, by call

    def new_forward(self, *_) -> None:
        "A forward pass begins: every module's next call is its first again."
        self.calls[:] = self.zeros

    def forward_hook(self, slot: int):
        "Module `slot`'s forward hook: the hot path's first step."
        activation = self.layers["activation"][slot]
        gradient = self.layers["grad"][slot] if "grad" in self.layers else None
        containers, calls = self.containers, self.calls

        def hook(module, inputs, output):
            if self.columns.row is None:  # between batches or outside a fit: nothing to record
                return
            if type(output) is not torch.Tensor:  # fastai's tensors: read without their Python methods
                with reading(output):
                    return record(output)
            return record(output)

        def record(output):
            call = calls[slot]
            calls[slot] = call + 1
            if call:  # run before in this forward pass: another place in the model, or a recomputation
                return self._again(slot, call, output)
            if isinstance(output, torch.Tensor) and not output.is_nested and slot not in containers:
                activation.add(output)
                if gradient is not None and in_graph.running():  # the graph hooks its own tensors
                    self._expect_gradients(slot, [slot])
                elif gradient is not None and output.requires_grad:
                    # a hook on the output tensor, not register_full_backward_hook: in-place ops break that
                    output.register_hook(gradient.add_gradient)
            else:
                self._add_parts(slot, self._parts(slot, output))
        return hook

    def gradient_in_graph(self, slot: int):
        "Where a compiled graph sends the gradient of module `slot`'s output (its `index`-th tensor)."
        def gradient(module, index: int, grad) -> None:
            waiting = self.waiting.get((slot, index))
            if waiting:  # the last call's first: backward meets a module's calls in reverse order
                self.layers["grad"][waiting.pop()].add_gradient(grad)
        return gradient

    def _expect_gradients(self, slot: int, parts: list) -> None:
        """In a compiled graph the output's tensors are not autograd's (`colordim.engine.in_graph`): the gradient of
        its `index`-th tensor comes to `gradient_in_graph` instead, for the layer `parts[index]`."""
        for index, part in enumerate(parts):
            self.waiting.setdefault((slot, index), []).append(part)

    def _again(self, slot: int, call: int, output) -> None:
        "A module's call after its first in one forward pass: a layer of its own (`name#2`, ...)."
        if backward_task() != -1:  # recomputed during backward (activation checkpointing): seen already,
            self._recomputed(slot, output)  # but its gradient may flow through this copy
            return
        key = (slot, min(call, CALLS - 1))
        if key not in self.repeats:
            suffix = f"#{call + 1}" if call < CALLS - 1 else f"#{CALLS}+"  # the last takes every later call
            self.repeats[key] = self.add_slot(self.layers["activation"][slot].name + suffix, slot)
        self._add_parts(slot, self._parts(self.repeats[key], output))

    def _recomputed(self, slot: int, output) -> None:
        """A checkpointed module's output recomputed in backward: its values are not recorded again, but
        its gradient is hooked. Reentrant checkpointing ran the forward without autograd: the gradient
        flows through this copy only. Without reentrance it flows through the first output, and this
        copy's hook never fires (tested: each gradient is counted once either way)."""
        if "grad" not in self.layers:
            return
        for part, value in self._parts(slot, output):
            if isinstance(value, torch.Tensor) and value.requires_grad:
                value.register_hook(self.layers["grad"][part].add_gradient)

    def _add_parts(self, module_slot: int, parts: list) -> None:
        "Record the parts of one output of module `module_slot` ([(slot, value)]), and hook their gradients."
        grads, graph = "grad" in self.layers, in_graph.running()  # in a graph, the graph hooks its own tensors
        for slot, value in parts:
            self.layers["activation"][slot].add(value)
            if grads and not graph and isinstance(value, torch.Tensor) and value.requires_grad:
                value.register_hook(self.layers["grad"][slot].add_gradient)
        if grads and graph:
            self._expect_gradients(module_slot, [slot for slot, value in parts if isinstance(value, torch.Tensor)])

    def _parts(self, slot: int, output, path: str = "") -> list:
        "[(slot, value)]: the output itself, or one slot per leaf of a tuple, list or dict of them."
        if isinstance(output, torch.Tensor) and output.is_nested:
            output = _real_values(output)
        if not isinstance(output, (tuple, list, dict)):
            if not path and slot in self.first_part:  # a container's module now gives a bare tensor (eval):
                return [(self._part_slot(slot, self.first_part[slot]), output)]  # it is its first part
            return [(slot if not path else self._part_slot(slot, path), output)]
        self.containers.add(slot)
        items = output.items() if isinstance(output, dict) else enumerate(output)
        return [part for key, value in items if value is not None
                for part in self._parts(slot, value, f"{path}[{key!r}]")]

    def _part_slot(self, slot: int, path: str) -> int:
        "The slot of one tensor in a module's container output, added when first seen."
        self.first_part.setdefault(slot, path)
        if (slot, path) not in self.part_slots:
            self.part_slots[(slot, path)] = self.add_slot(self.layers["activation"][slot].name + path, slot)
        return self.part_slots[(slot, path)]


def _real_values(nested: torch.Tensor) -> torch.Tensor:
    "A NestedTensor's values without padding: (tokens, features) from its (batch, length*, features) parts."
    if nested.layout == getattr(torch, "jagged", None):  # torch >= 2.3
        return nested.values()
    parts = nested.unbind()
    return torch.cat([part.reshape(-1, part.shape[-1]) if part.dim() else part.reshape(1, 1) for part in parts])
