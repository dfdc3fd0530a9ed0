"""`colordim.record`: the same recorder around a plain PyTorch training loop, without fastai."""
from __future__ import annotations

from contextlib import contextmanager

from torch import nn

from .layers import find_layers
from .recorder import HistogramRecorder
from .recording import Recording

__all__ = ["record", "LoopRecorder"]


class LoopRecorder:
    "Turns each forward pass of a model into a column: 'train' in `model.train()` mode, 'valid' in eval."
    def __init__(self, model: nn.Module, engine: HistogramRecorder):
        self.model, self.engine = model, engine
        self.current_epoch, self._iterations, self._handles = 0, {"train": 0, "valid": 0}, []

    def attach(self) -> "LoopRecorder":
        "Hook the layers, then the model itself (its forward hook runs last, after every layer's)."
        self.detach()
        self.engine.attach()
        self._handles = [self.model.register_forward_pre_hook(self._begin),
                         self.model.register_forward_hook(self._end)]
        return self

    def detach(self) -> None:
        "Remove every hook; an unfinished forward pass is dropped, every finished one kept."
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.engine.detach()

    def epoch(self) -> None:
        "Mark an epoch boundary: the next forward passes belong to the next epoch (optional)."
        self.engine.flush()  # the finished epoch goes to the host: one transfer per layer
        self.current_epoch += 1
        self._iterations = {"train": 0, "valid": 0}

    @property
    def recording(self) -> Recording:
        "Everything recorded so far, as a host-side Recording that every plot function takes."
        return self.engine.recording

    def _begin(self, module, inputs):
        phase = "train" if self.model.training else "valid"
        self.engine.begin_column(phase, epoch=self.current_epoch, iteration=self._iterations[phase])

    def _end(self, module, inputs, output):
        phase = "train" if self.model.training else "valid"
        self.engine.end_column()
        self._iterations[phase] += 1


@contextmanager
def record(model: nn.Module, layers=None, **options):
    "Record activation histograms of `layers` of `model` while the block runs; yields a `LoopRecorder`."
    recorder = LoopRecorder(model, HistogramRecorder(find_layers(model, layers), **options))
    try:
        yield recorder.attach()
    finally:
        recorder.detach()  # on errors and Ctrl-C too
