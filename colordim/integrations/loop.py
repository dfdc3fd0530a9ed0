"""`colordim.record`: the same recorder around a plain PyTorch training loop, without fastai."""
from __future__ import annotations

import warnings
from contextlib import contextmanager

from torch import nn

from ..engine.find_layers import find_layers
from ..engine.hooks import hook_forward, hook_forward_pre
from ..engine.recorder import HistogramRecorder
from ..data.recording import Recording
from ..engine.units import resolve_units

__all__ = ["record", "LoopRecorder"]


class LoopRecorder:
    "Turns each forward pass of a model into a column: 'train' in `model.train()` mode, 'valid' in eval."
    def __init__(self, model: nn.Module, recorder: HistogramRecorder):
        self.model, self.recorder = model, recorder
        self.current_epoch, self._iterations, self._handles = 0, {"train": 0, "valid": 0}, []
        self._finished = False  # the open column's forward pass has returned: its backward may follow

    def attach(self) -> "LoopRecorder":
        "Hook the layers, then the model itself (its forward hook runs last, after every layer's)."
        self.detach()
        self.recorder.attach()
        # `colordim.engine.hooks`: a copy of the model made in the block carries neither along
        self._handles = [hook_forward_pre(self.model, self._begin), hook_forward(self.model, self._end)]
        return self

    def detach(self, reduce: bool = False) -> None:
        "Remove every hook; an unfinished forward pass is dropped, every finished one kept."
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._close()
        if reduce:  # the block ended normally: every rank is here, the last epoch is summed across them
            self.recorder.flush()
        self.recorder.detach()

    def epoch(self) -> None:
        "Mark an epoch boundary: the next forward passes belong to the next epoch (optional)."
        self._close()
        self.recorder.flush()  # the finished epoch goes to the host: one transfer per layer
        self.current_epoch += 1
        self._iterations = {"train": 0, "valid": 0}

    @property
    def recording(self) -> Recording:
        "Everything recorded so far, as a host-side Recording that every plot function takes."
        return self.recorder.recording

    def _close(self) -> None:
        "Keep the last column if its forward pass finished (its backward, if any, has run by now)."
        if self._finished:
            self.recorder.end_column()
        self._finished = False

    def _begin(self, module, inputs):
        self._close()  # the previous pass and its gradients are complete; an unfinished one is dropped
        phase = "train" if self.model.training else "valid"
        self.recorder.begin_column(phase, epoch=self.current_epoch, iteration=self._iterations[phase])

    def _end(self, module, inputs, output):
        self._iterations["train" if self.model.training else "valid"] += 1
        self._finished = True  # the column stays open for the gradients of this pass


@contextmanager
def record(model: nn.Module, layers=None, grads=False, units=None, **options):
    """Record activation (and, grads=True, gradient) histograms of `layers` of `model` in the block. `units`:
    where each layer's units are, for dead units (`colordim.engine.units`): guessed, or "channels" / "features"."""
    modules = find_layers(model, layers)
    options.update(grads=grads, units=resolve_units(model, modules, units))
    recorder = LoopRecorder(model, HistogramRecorder(modules, **options))
    completed = False
    try:
        yield recorder.attach()
        completed = True
    finally:
        recorder.detach(reduce=completed)  # on errors and Ctrl-C too (then with this rank's rows only)
    if not recorder.recorder.ended:  # no forward pass finished in the block (each ends a column)
        warnings.warn("colordim.record: the block ran no forward pass of the model, so nothing was recorded. If "
                      "it calls a compiled copy (torch.compile) that ran before the block, torch.compile does not "
                      "see hooks added later: call torch.compiler.reset() before the block, or compile inside it.",
                      RuntimeWarning, stacklevel=3)
