"""PyTorch Lightning: `ActivationHistogram`, a `lightning.pytorch.Callback` that maps Lightning's loop onto
the recorder (`colordim.lightning.ActivationHistogram`).

- a training batch is a 'train' column (epoch `trainer.current_epoch`, iteration `batch_idx`), a
  validation batch a 'valid' one; the sanity check's batches are not recorded;
- the step's streams (`params=`, `param_grads=`, `updates=`) come from hooks on the torch optimizers
  inside Lightning's: a step is taken with the batch that completes `accumulate_grad_batches`, and a step
  the AMP grad scaler skips takes none;
- at each training epoch's end the epoch's columns move to the host (summed across ranks under DDP),
  `save_to` is written (rank 0) and the trainer's TensorBoard and W&B loggers get the new histograms
  and the grid; the fit's end or an exception takes the hooks off, the recording stays on the callback.
"""
from __future__ import annotations

try:
    from lightning.pytorch.callbacks import Callback
except ImportError:  # the older package name
    try:
        from pytorch_lightning.callbacks import Callback
    except ImportError:
        raise ImportError("colordim.lightning needs PyTorch Lightning: pip install 'colordim[lightning]' "
                          "(or pip install lightning)") from None

from ..data.recording import Recording
from .trainers import Outputs, check_options, hook_steps, make_recorder, torch_optimizers

__all__ = ["ActivationHistogram"]


class ActivationHistogram(Callback):
    """Record a histogram of each chosen layer's output for every batch, on the module's device. Options as
    the fastai callback's (`layers`, `bins`, `range`, `grads`, `sample`, `params`, `updates`, `functional`
    ...), and `valid` (record validation batches), `save_to` (a path), `report` (print `diagnose` at the
    fit's end), `loggers` (write to the trainer's TensorBoard and W&B loggers; True by default)."""
    def __init__(self, valid: bool = True, save_to=None, report: bool = False, loggers: bool = True, **options):
        self.options = check_options(options)
        self.valid, self.loggers = valid, loggers
        self.outputs = Outputs(save_to=save_to, report=report)
        self.histogram_recorder, self._handles, self._recording = None, [], None
        self._step, self._steps = 0, []  # the open column's `trainer.global_step`; the ended ones' not yet written

    # --- Lightning's events ----------------------------------------------------------------------------
    def on_fit_start(self, trainer, pl_module):
        "Hook the chosen layers of the LightningModule (found now: a bad spec fails before the first batch)."
        if self.histogram_recorder is None:
            self.histogram_recorder = make_recorder(pl_module, self.options)
        self.histogram_recorder.attach(root=pl_module)
        self._find_loggers(trainer)

    def on_train_start(self, trainer, pl_module):
        "The optimizers exist now: hook their steps for the parameters' streams."
        self._handles = hook_steps(self.histogram_recorder, torch_optimizers(trainer.optimizers))
        self.histogram_recorder.steps.keep_weights()

    def on_train_epoch_start(self, trainer, pl_module):
        batches = trainer.num_training_batches
        self.histogram_recorder.reserve(batches if isinstance(batches, int) else 0)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._begin("train", trainer, batch_idx)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._end()

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        if self._recording_validation(trainer):
            self._begin("valid", trainer, batch_idx)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if self._recording_validation(trainer):
            self._end()

    def on_train_epoch_end(self, trainer, pl_module):
        "The epoch's columns to the host (every rank: a collective under DDP), to `save_to` and the loggers."
        self.histogram_recorder.flush()
        self.outputs.save(self.histogram_recorder)
        self.outputs.write(self.histogram_recorder, grid=True, steps=self._written())

    def on_fit_end(self, trainer, pl_module):
        "Sum the last columns across ranks, report, save; the hooks come off, the recording stays."
        self.histogram_recorder.flush()
        self.outputs.write(self.histogram_recorder, steps=self._written())
        self.outputs.finish(self.histogram_recorder)
        self._unhook()

    def on_exception(self, trainer, pl_module, exception):
        "A fit that died: the hooks come off, and what was recorded is kept (and saved)."
        if self.histogram_recorder is not None:
            self._unhook()
            self.outputs.save(self.histogram_recorder)

    def teardown(self, trainer, pl_module, stage):
        if self.histogram_recorder is not None and self.histogram_recorder.attached:
            self._unhook()

    # --- the rest ------------------------------------------------------------------------------------
    def _begin(self, phase: str, trainer, batch_idx: int) -> None:
        "Open a column; its step in the loggers is the trainer's `global_step` (the steps done before it)."
        self.histogram_recorder.begin_column(phase, epoch=trainer.current_epoch, iteration=batch_idx)
        self.histogram_recorder.watch_functional(True)  # a training_step may call `self.model`, not the root
        self._step = trainer.global_step

    def _end(self) -> None:
        self.histogram_recorder.watch_functional(False)
        self.histogram_recorder.end_column()
        if self.outputs.writing:
            self._steps.append(self._step)

    def _written(self) -> list:
        "The steps of the columns ended since the last write, handed to the writers (and forgotten here)."
        steps, self._steps = self._steps, []
        return steps

    def _recording_validation(self, trainer) -> bool:
        "Validation batches are columns unless asked not to, or in the sanity check, or outside a fit."
        return self.valid and not trainer.sanity_checking and self.histogram_recorder is not None \
            and self.histogram_recorder.attached

    def _find_loggers(self, trainer) -> None:
        "The trainer's TensorBoard and W&B loggers, written to with the fastai callback's writers."
        if not self.loggers:
            return
        for logger in trainer.loggers:
            kind = type(logger).__name__
            if kind == "TensorBoardLogger" and self.outputs.tensorboard is None:
                self.outputs.tensorboard = logger.log_dir
            elif kind == "WandbLogger":
                logger.experiment  # starts the run, so that wandb.run is the logger's
                self.outputs.wandb = True

    def _unhook(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.histogram_recorder.detach()

    @property
    def recording(self) -> Recording:
        "Everything recorded so far, as a host-side `Recording`."
        if self.histogram_recorder is None or not self.histogram_recorder.ended:
            raise ValueError("ActivationHistogram has recorded nothing yet: fit the trainer first, "
                             "e.g. `trainer.fit(model, loaders)`")
        return self.histogram_recorder.recording
