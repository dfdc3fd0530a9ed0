"""What every trainer's adapter shares (the plain loop, Lightning, the Hugging Face Trainer): the recorder made
from the user's options, the optimizer hooks of the step's streams, and where the recording goes as it
grows (`save_to`, TensorBoard, W&B, the report). The adapters only map their trainer's events onto these.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..data.options import (check_bins, check_near_zero, check_range, check_sample, check_scale, check_units,
                            param_streams)
from ..engine.distributed import is_main_process
from ..engine.find_layers import find_layers, unwrapped
from ..engine.functional import check_functions
from ..engine.ledger import DEVICE_BYTES, HOST_BYTES, MOVE_EVERY, Ledger
from ..engine.recorder import HistogramRecorder
from ..engine.steps import find_params
from ..engine.units import resolve_units

__all__ = ["OPTIONS", "check_options", "recorded_params", "make_recorder", "torch_optimizers", "hook_steps", "Outputs"]

# The recorder's options every adapter takes, with their defaults (the fastai callback's, by name)
OPTIONS = dict(layers=None, bins=100, range=(-10, 10), scale="linear", linthresh=1.0, stats=True, near_zero=0.05,
               sample=None, max_columns=10_000, move_every=MOVE_EVERY, device_bytes=DEVICE_BYTES,
               host_bytes=HOST_BYTES, grads=False, grad_range="auto", grad_scale="linear", units=None,
               params=False, param_grads=False, updates=False, param_range="auto", param_scale="linear",
               functional=False)


def check_options(options: dict) -> dict:
    "`options` (OPTIONS' names), each checked now, so a bad one fails before the first batch; the same dict."
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise TypeError(f"unexpected option(s) {unknown}; the options are {sorted(OPTIONS)}")
    o = {**OPTIONS, **options}
    check_bins(o["bins"]), check_range(o["range"]), check_scale(o["scale"], o["linthresh"])
    check_range(o["grad_range"]), check_scale(o["grad_scale"], o["linthresh"])
    check_range(o["param_range"]), check_scale(o["param_scale"], o["linthresh"])
    check_near_zero(o["near_zero"]), check_sample(o["sample"]), check_units(o["units"])
    Ledger(o["max_columns"], o["move_every"], o["device_bytes"], o["host_bytes"])
    param_streams(o["params"], o["param_grads"], o["updates"]), check_functions(o["functional"])
    return options


def recorded_params(model: nn.Module, modules: dict, options: dict) -> dict:
    "The {name: (parameter, type)} whose step streams `options` ask for, of `model` recording `modules`; {} for none."
    o = {**OPTIONS, **options}
    if not param_streams(o["params"], o["param_grads"], o["updates"]):
        return {}
    return find_params(unwrapped(model), modules, o["params"] if not isinstance(o["params"], bool) else True)


def make_recorder(model: nn.Module, options: dict, modules: dict = None, params: dict = None) -> HistogramRecorder:
    """A recorder of `model`'s layers with `options` (OPTIONS' names): `modules` ({name: module}) and `params`
    (as `recorded_params` gives them) when the caller found them already, else as the options say."""
    o = {**OPTIONS, **options}
    layers = o.pop("layers")
    modules = find_layers(model, layers) if modules is None else modules
    params = recorded_params(model, modules, o) if params is None else params
    streams = param_streams(o.pop("params"), o.pop("param_grads"), o.pop("updates"))
    o.update(units=resolve_units(model, modules, o["units"]), params=params, streams=streams)
    return HistogramRecorder(modules, **o)


def torch_optimizers(optimizers) -> list:
    """The torch optimizers inside a trainer's: Lightning's `LightningOptimizer` (`._optimizer`), Accelerate's
    `AcceleratedOptimizer` (`.optimizer`), or torch's own; one or a list."""
    found = []
    for optimizer in optimizers if isinstance(optimizers, (list, tuple)) else [optimizers]:
        for _ in range(4):  # a wrapper of a wrapper at most (Accelerate's subclasses Optimizer: the inner one steps)
            inner = getattr(optimizer, "_optimizer", None) or getattr(optimizer, "optimizer", None)
            if inner is None or inner is optimizer:
                break
            optimizer = inner
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer: expected a torch.optim.Optimizer (or a list of them, or a trainer's "
                            f"wrapper of one), got {type(optimizer).__name__}")
        found.append(optimizer)
    return found


def hook_steps(recorder: HistogramRecorder, optimizers: list) -> list:
    """Hooks on each optimizer's step for the parameters' streams (`colordim.engine.steps`): the weights kept
    before it, the gradients, weights and update read after it; each its own parameters. Their handles."""
    steps, handles = recorder.steps, []
    if not steps.layers:
        return handles
    for optimizer in optimizers:
        stepped = {id(p) for group in optimizer.param_groups for p in group["params"]}
        handles += [optimizer.register_step_pre_hook(lambda *_, only=stepped: steps.keep_weights(only)),
                    optimizer.register_step_post_hook(lambda *_, only=stepped: steps.after_step(only))]
    return handles


class Outputs:
    """Where a recording goes as it grows, on rank 0 only: `save_to` (atomically, what is new since the last
    save), TensorBoard (`tensorboard`: a log folder) and W&B (`wandb=True`: the active run) at each write,
    and the health report printed at a fit's end (`report=True`)."""
    def __init__(self, save_to=None, tensorboard=None, wandb: bool = False, report: bool = False):
        self.save_to, self.tensorboard, self.wandb, self.report = save_to, tensorboard, wandb, report
        self._board, self._wandb, self._saved = None, None, 0

    def restart(self) -> None:
        "A new recorder: its columns count from 0 again."
        self._saved = 0

    def save(self, recorder: HistogramRecorder) -> None:
        "Write to `save_to` what is new since the last save."
        if self.save_to is not None and recorder.ended != self._saved and is_main_process():
            recorder.view().save(self.save_to)
        self._saved = recorder.ended

    @property
    def writing(self) -> bool:
        "Whether anything goes to TensorBoard or W&B."
        return self.tensorboard is not None or bool(self.wandb)

    def write(self, recorder: HistogramRecorder, grid: bool = False, steps: list = None) -> None:
        """What the host received since the last write, to TensorBoard and W&B; `grid`: the colour-dim grid too.
        `steps`: the trainer's step of every column ended since the last write, in order (None: batches count)."""
        if not self.writing or not is_main_process():
            return
        if self.tensorboard is not None and self._board is None:
            from .tensorboard import LiveBoard
            self._board = LiveBoard(self.tensorboard)
        if self.wandb and self._wandb is None:
            from .wandb_log import WandbLog
            self._wandb = WandbLog()
        parts = recorder.new_parts()  # each batch once, as it came
        if steps is not None and len(steps) != sum(len(part) for part in parts):
            steps = None  # columns the adapter did not see end (none should be): count batches instead
        if steps is not None:  # each part's share of them, in order
            bounds = np.cumsum([0] + [len(part) for part in parts])
            steps = [np.asarray(steps[start:stop]) for start, stop in zip(bounds[:-1], bounds[1:])]
        for writer in (self._board, self._wandb):
            if writer is not None:
                writer.write(parts, grid=recorder.view() if grid else None, steps=steps)

    def finish(self, recorder: HistogramRecorder, trained: bool = True) -> None:
        "A fit's end: the report (when asked, after training), the last save, W&B's last row shown."
        if self.report and trained and recorder.ended and is_main_process():
            from ..health.checks import diagnose
            print(diagnose(recorder.view()))
        self.save(recorder)
        self.commit()

    def commit(self) -> None:
        "W&B's last row shown now (not when something else logs)."
        if self._wandb is not None:
            self._wandb.commit()
