"""The Hugging Face `Trainer`: `ActivationHistogram`, a `transformers.TrainerCallback` that maps the Trainer's
loop onto the recorder (`colordim.hf.ActivationHistogram`).

The Trainer has no event per micro-batch, so columns follow the model's forward passes, as in
`colordim.record`: each one in training mode is a 'train' column, each in eval mode (evaluation during
training) a 'valid' one; the epoch is the Trainer's. The step's streams come from hooks on the torch
optimizer inside Accelerate's: one per optimizer step (`state.global_step` of them), after the gradient
accumulation, unscaling and clipping; a step the grad scaler skips takes none. At each epoch's end the
columns move to the host (summed across ranks when distributed), `save_to` is written (rank 0) and
TensorBoard and W&B get the new histograms when `report_to` has them. The Trainer tells its callbacks of
no exception: after a training that died, the hooks come off at the model's next forward pass outside
the Trainer, before it records anything, and what was recorded stays.
"""
from __future__ import annotations

import os
import sys

try:
    from transformers import TrainerCallback
except ImportError:
    raise ImportError("colordim.hf needs transformers: pip install 'colordim[hf]'") from None

from ..data.recording import Recording
from .loop import LoopRecorder
from .trainers import Outputs, check_options, make_recorder, torch_optimizers

__all__ = ["ActivationHistogram"]

_TRAINER_FILES = ("transformers/trainer.py", "transformers\\trainer.py")
_DEPTH = 60  # frames looked at for the Trainer's


class ActivationHistogram(TrainerCallback):
    """Record a histogram of each chosen layer's output for every forward pass of the Trainer's model, on its
    device. Options as the fastai callback's (`layers`, `bins`, `range`, `grads`, `sample`, `params`,
    `updates`, `functional` ...), and `valid` (record evaluation batches), `save_to` (a path), `report`
    (print `diagnose` when training ends), `loggers` (write to TensorBoard and W&B as `report_to` says)."""
    def __init__(self, valid: bool = True, save_to=None, report: bool = False, loggers: bool = True, **options):
        self.options = check_options(options)
        self.valid, self.loggers = valid, loggers
        self.outputs = Outputs(save_to=save_to, report=report)
        self.histogram_recorder, self._loop = None, None

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        "Hook the chosen layers of the model (names as the model gives them) and the optimizer's steps."
        if self.histogram_recorder is None or list(self.histogram_recorder.modules.values())[0] not in \
                list(model.modules()):
            self.histogram_recorder = make_recorder(model, self.options)
        if self.loggers:
            reports = args.report_to if isinstance(args.report_to, (list, tuple)) else [args.report_to]
            if "tensorboard" in reports and self.outputs.tensorboard is None:
                self.outputs.tensorboard = _logging_dir(args)
            self.outputs.wandb = self.outputs.wandb or "wandb" in reports
        self._loop = _TrainerLoop(model, self.histogram_recorder, torch_optimizers(optimizer), self.valid,
                                  keep_steps=self.outputs.writing)
        self._loop.global_step = state.global_step
        self._loop.attach()

    def on_step_end(self, args, state, control, **kwargs):
        "An optimizer step ended: the next columns' step in the writers."
        if self._loop is not None:
            self._loop.global_step = state.global_step

    def on_epoch_begin(self, args, state, control, **kwargs):
        if self._loop is not None:
            self._loop.start_epoch(int(state.epoch or 0))

    def on_epoch_end(self, args, state, control, **kwargs):
        "The epoch's columns to the host (every rank: a collective when distributed), to `save_to` and the writers."
        if self._loop is not None and self._loop.attached:
            self._loop.close()
            self.histogram_recorder.flush()
            self.outputs.save(self.histogram_recorder)
            self.outputs.write(self.histogram_recorder, grid=True, steps=self._loop.written())

    def on_train_end(self, args, state, control, **kwargs):
        "The hooks come off (the last columns summed across ranks); report, save; the recording stays."
        if self._loop is not None and self._loop.attached:
            self._loop.detach(reduce=True)
            self.outputs.write(self.histogram_recorder, steps=self._loop.written())
            self.outputs.finish(self.histogram_recorder)

    @property
    def recording(self) -> Recording:
        "Everything recorded so far, as a host-side `Recording`."
        if self.histogram_recorder is None or not self.histogram_recorder.ended:
            raise ValueError("ActivationHistogram has recorded nothing yet: train first, `trainer.train()`")
        return self.histogram_recorder.recording


class _TrainerLoop(LoopRecorder):
    """`LoopRecorder` for the Trainer: its epochs, evaluation batches only if asked, off outside the Trainer, and
    (`keep_steps`) each kept column's `state.global_step` (the steps done before it) for the writers."""
    def __init__(self, model, recorder, optimizers, valid: bool, keep_steps: bool = False):
        super().__init__(model, recorder, optimizers)
        self.valid, self.keep_steps = valid, keep_steps
        self.global_step, self._open_step, self._steps = 0, 0, []

    def written(self) -> list:
        "The steps of the columns kept since the last call (and forgotten here)."
        steps, self._steps = self._steps, []
        return steps

    def _close(self) -> None:
        if self._finished and self.keep_steps:
            self._steps.append(self._open_step)
        super()._close()

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def start_epoch(self, epoch: int) -> None:
        "The Trainer's epoch `epoch` begins: its batches count from 0."
        self.close()
        self.current_epoch, self._iterations = epoch, {"train": 0, "valid": 0}

    def close(self) -> None:
        "Keep the last column (its backward has run)."
        self._close()

    def _begin(self, module, inputs):
        if not _in_trainer():  # a training that died left us on: off now, before recording anything
            self._close()
            self.detach()
            return
        if not self.model.training and not self.valid:
            self._close()
            return
        super()._begin(module, inputs)
        self._open_step = self.global_step

    def _end(self, module, inputs, output):
        if self.model.training or self.valid:
            super()._end(module, inputs, output)


def _logging_dir(args) -> str:
    """Where the Trainer's TensorBoard writes: `TENSORBOARD_LOGGING_DIR`, or `args.logging_dir` (transformers
    before 5); else a run of its own beside the Trainer's, `output_dir/runs/colordim`."""
    return os.getenv("TENSORBOARD_LOGGING_DIR") or getattr(args, "logging_dir", None) or \
        os.path.join(args.output_dir, "runs", "colordim")


def _in_trainer() -> bool:
    "Whether the Trainer's code is on the stack (its training or evaluation loop called the model)."
    frame = sys._getframe(2)
    for _ in range(_DEPTH):
        if frame is None:
            return False
        if frame.f_code.co_filename.endswith(_TRAINER_FILES):
            return True
        frame = frame.f_back
    return False
