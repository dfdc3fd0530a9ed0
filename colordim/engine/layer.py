"""`LayerRecorder`: one recorded layer (or one tensor of a module's container output, or its gradient).

It owns what is that layer's alone: its binning, its buffer on the output's device, and its plans,
one per output shape, worked out when a shape is first seen (`colordim.engine.plans`). `add(output)` is the
hot path's last step: plan, buffer row, done. An "auto" range follows the policy of
`colordim.engine.ranges`: set from the first output, widened at once when a CPU output does not fit it
(the plan says so, having added nothing: the counts so far merge exactly, the output is added again);
on other devices the recorder widens it at each move to the host.
"""
from __future__ import annotations

import numpy as np
import torch

from .buffer import LayerBuffer
from .ledger import Ledger
from ..data.layout import Binning
from . import ranges
from .plans import SharedArrays, layout, make_plan
from .ranges import remap
from .torch_kernels import Scratch, finite_extremes
from .units import CHANNELS, FEATURES

__all__ = ["LayerRecorder", "Settings"]

PLANS = 16  # shapes kept per layer: outputs whose shape keeps changing (text of any length) stay bounded


class Settings:
    "What every layer of a recorder shares: the options, the column ledger, the CPU scratch."
    def __init__(self, columns: Ledger, bins: int, stats: bool, near_zero: float, sample):
        self.columns, self.bins, self.stats, self.near_zero, self.sample = columns, bins, stats, near_zero, sample
        self.scratch, self.shared = Scratch(), SharedArrays()  # reused by every layer's calls
        self.unit_maxima = False  # distributed runs: keep each unit's maximum, to merge dead units exactly


class LayerRecorder:
    "One recorded layer: name, binning, buffer and plans; `add(output)` records one output in the open column."
    def __init__(self, name: str, index: int, settings: Settings, range, linthresh, module_slot: int = 0,
                 units: str = CHANNELS):
        self.name, self.index, self.settings = name, index, settings  # index: its place in the host's sizes
        self.units = units     # where its units are: CHANNELS (dim 1) or FEATURES (the last dim), `colordim.engine.units`
        self.module_slot = module_slot  # which of the recorder's modules this is, or is a part of (display order)
        self.linthresh, self.auto = linthresh, range == "auto"
        self.binning = None if self.auto else Binning(settings.bins, *range, linthresh)  # "auto": at the first output
        self.host_binning = None  # the binning of its counts already on the host (the recorder's to merge)
        self.buffer = None     # LayerBuffer, made on the first output's device
        self.plans, self.last, self._made = {}, None, 0  # (shape, device) -> plan; the last used; plans made
        self.skipped = None    # why an output could not be recorded, if one could not

    def add(self, output) -> None:
        "Summarise `output` into the open column (the caller checked that one is open)."
        plan = self.last
        if plan is not None and plan.fits(output):
            call = plan.record  # the output is as the plan reads it: no check again
        else:
            plan = call = self._plan(output)  # the checked call: it takes other float dtypes too
            if plan is None:
                return
        columns = self.settings.columns
        buffer = self.buffer
        if buffer is None or buffer.rows < columns.capacity:
            buffer = self.grown(output.device)
        if call(output, buffer, columns.row):  # an auto range that does not hold it (CPU only): nothing added
            self._widen_for(output, plan, buffer)
        if self.settings.unit_maxima:
            buffer.keep_unit_max(columns.row, plan.unit_max)
        columns.used.append(plan.used)  # its sizes are counted on the host at the flush

    def add_gradient(self, gradient) -> None:
        "A tensor hook: the output's gradient, while its column is still open (a late backward is ignored)."
        if self.settings.columns.row is not None:
            self.add(gradient)

    def _plan(self, output):
        "The plan for an output like this one, made when its shape is first seen; None: it is not recorded."
        if not isinstance(output, torch.Tensor) or not output.is_floating_point():
            self.skipped = f"output is a {type(output).__name__}, not a tensor" \
                if not isinstance(output, torch.Tensor) else f"output dtype {output.dtype} is not floating point"
            return None
        if not output.numel():
            return None
        if self.binning is None:
            self._set_auto_range(output)
        key = (output.shape, output.device, layout(output, self.units == FEATURES))
        if key not in self.plans:
            if len(self.plans) >= PLANS:
                self.plans.clear()
            settings, seed = self.settings, 1009 * self.index + self._made  # a sample of its own per plan
            plan = make_plan(output, settings.sample, seed, settings.bins, self.binning.limits, self.linthresh,
                             settings.near_zero, settings.stats, settings.scratch, settings.shared, grow=self.auto,
                             features=self.units == FEATURES)
            plan.used, self._made = (self.index, plan), self._made + 1  # what a column keeps of each output
            self.plans[key] = plan
        self.last = self.plans[key]
        return self.last

    def _set_auto_range(self, output: torch.Tensor) -> None:
        "range='auto': the narrowest that holds this first output; one host sync for this layer, once."
        self.binning = ranges.first(self.settings.bins, *finite_extremes(output), self.linthresh)

    def _widen_for(self, output: torch.Tensor, plan, buffer) -> None:
        "A CPU output outside the auto range: widen it to hold the output, then add it."
        row = self.settings.columns.row
        wider = ranges.holding(self.settings.bins, *finite_extremes(output), self.binning)
        if wider != self.binning:
            self.rebin(wider)
            if not plan(output, buffer, row):
                return
        # float32 rounding at the very edge, or beyond the widest range: those values go to the edge bins
        plan(output, buffer, row, grow=False)

    @property
    def widens_at_flush(self) -> bool:
        "An auto range whose outputs are not on the CPU: it can only widen when rows come to the host."
        return self.auto and self.last is not None and not self.last.grow

    def rebin(self, binning: Binning) -> None:
        "Bin with `binning` (a wider auto range) from now on; the rows on the device merge to it, exactly."
        if self.buffer is not None:
            rows = min(len(self.buffer), len(self.settings.columns) + 1)  # the finished rows and an open one
            self.buffer.regrid(rows, remap(self.binning, binning))
        self.binning = binning
        for plan in self.plans.values():
            plan.rebin(binning.limits)

    def grown(self, device=None) -> LayerBuffer:
        "The buffer, made (on `device`) or grown to the ledger's capacity."
        capacity = self.settings.columns.capacity
        if self.buffer is None:
            self.buffer = LayerBuffer(capacity, self.settings.bins, device)
        elif len(self.buffer) < capacity:
            self.buffer = self.buffer.grown(capacity)
        return self.buffer

    def edges(self) -> np.ndarray:
        "The bin edges in activation units ((-1, 1) while an auto range has seen no output yet)."
        return (self.binning or Binning(self.settings.bins, -1.0, 1.0, self.linthresh)).edges()

    def clear(self, rows) -> None:
        "Empty `rows` of the buffer (an int or a slice)."
        if self.buffer is not None:
            self.buffer.clear(rows)

