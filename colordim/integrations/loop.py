"""`colordim.record`: the same recorder around a plain PyTorch training loop, without fastai."""
from __future__ import annotations

import warnings
from contextlib import contextmanager

from torch import nn

from ..data.options import param_streams
from .trainers import hook_steps, make_recorder, torch_optimizers
from ..engine.hooks import hook_forward, hook_forward_pre
from ..engine.recorder import HistogramRecorder
from ..data.recording import Recording

__all__ = ["record", "LoopRecorder"]


def _optimizers(optimizer, streams) -> list:
    "`optimizer=` as a list of torch optimizers (inside Accelerate's or Lightning's wrappers), checked; gradients and updates need one."
    optimizers = [] if optimizer is None else torch_optimizers(optimizer)
    needing = [stream for stream in streams if stream in ("param_grad", "update")]
    if needing and not optimizers:
        raise ValueError("param_grads=True and updates=True need the optimizer whose steps they follow: "
                         "record(model, optimizer=opt, ...)")
    return optimizers


class LoopRecorder:
    "Turns each forward pass of a model into a column: 'train' in `model.train()` mode, 'valid' in eval."
    def __init__(self, model: nn.Module, recorder: HistogramRecorder, optimizers=()):
        self.model, self.recorder, self.optimizers = model, recorder, list(optimizers)
        self.current_epoch, self._iterations, self._handles = 0, {"train": 0, "valid": 0}, []
        self._finished = False  # the open column's forward pass has returned: its backward may follow

    def attach(self) -> "LoopRecorder":
        "Hook the layers, then the model itself (its forward hook runs last, after every layer's)."
        self.detach()
        self.recorder.attach(root=self.model if self.recorder.functions else None)  # functional calls: the model's
        # `colordim.engine.hooks`: a copy of the model made in the block carries neither along
        self._handles = [hook_forward_pre(self.model, self._begin), hook_forward(self.model, self._end)]
        self._handles += hook_steps(self.recorder, self.optimizers)  # the parameters' streams, at each step
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
        if not self.optimizers and phase == "train" and self.recorder.steps.layers:  # no optimizer: the weights
            self.recorder.steps.after_step()  # this training pass runs with, as the last step left them

    def _end(self, module, inputs, output):
        self._iterations["train" if self.model.training else "valid"] += 1
        self._finished = True  # the column stays open for the gradients of this pass


@contextmanager
def record(model: nn.Module, layers=None, grads=False, units=None, optimizer=None, params=False,
           param_grads=False, updates=False, **options):
    """Record activation (and, grads=True, gradient) histograms of `layers` of `model` in the block. `units`:
    where each layer's units are, for dead units (`colordim.engine.units`): guessed, or "channels" / "features".

    Per optimizer step, with `optimizer=` (one, or a list): `params=True` the weights of the recorded layers
    (or `params=[names]`, those parameters), `param_grads=True` their gradients as the step sees them,
    `updates=True` what the step changed (and the weights: `recording.update_ratio`). Without an optimizer,
    `params=True` records the weights each training forward pass runs with; gradients and updates need it.

    `functional=True` (or some function names, `colordim.engine.functional.FUNCTIONS`) also records the
    activation functions called inside the modules' forward (`F.relu(self.conv(x))`: `block:relu`)."""
    streams = param_streams(params, param_grads, updates)
    optimizers = _optimizers(optimizer, streams)
    options.update(layers=layers, grads=grads, units=units, params=params, param_grads=param_grads, updates=updates)
    recorder = LoopRecorder(model, make_recorder(model, options), optimizers)
    chosen = recorder.recorder.steps.params
    if optimizers and chosen:
        stepped = {id(p) for optimizer in optimizers for group in optimizer.param_groups for p in group["params"]}
        if not any(id(p) in stepped for p in chosen.values()):
            raise ValueError(f"optimizer: steps none of the parameters to record ({list(chosen)[:6]}...); pass the "
                             "optimizer that trains them")
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
