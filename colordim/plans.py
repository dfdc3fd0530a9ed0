"""How one layer's outputs of one shape are summarised: worked out once, then run on every output.

A hook runs once per layer and batch, so whatever does not depend on the values (the sample positions,
the unit layout, which path, the sizes the host counts) is decided when a shape is first seen. On the
CPU the plan is one call to the compiled kernel (`colordim.fused`); elsewhere (a GPU, or no numba)
it is the torch ops of `colordim.summaries`, which never sync.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from . import fused
from .summaries import add_moments, channel_count, histogram_counts, symlog_

__all__ = ["make_plan", "draw_sample", "FusedPlan", "TorchPlan", "LINE"]

USE_FUSED = True  # tests set it False to run the torch path (the GPU's) on the CPU


LINE = 16  # float32 values in a 64-byte cache line
LINES_UP_TO = 64  # outputs of at most 64 x sample values are sampled in whole lines


def draw_sample(shape, size: int, seed: int):
    """About `size` sorted positions in a flat output of `shape`, from `seed`, and the unit (dim 1) of each.

    Reading one value costs its whole 64-byte cache line. In an output of at most 64 x `size` values,
    `size` independent positions would read a large share of its lines (63% when it holds 16 x `size`),
    so the sample is `size // 16` whole lines (runs of 16 neighbouring values) instead: 16 times fewer
    lines for the same count. Neighbours are correlated, so they estimate less than independent values
    (on the demo CNN 4096 values in lines do as well as ~2,700 independent ones), but for the time an
    output of that size allows, much more. Bigger outputs, where independent values are cheap next to
    the layer itself, get `size` independent positions."""
    numel, generator = math.prod(shape), torch.Generator().manual_seed(seed)
    if numel <= LINES_UP_TO * size and size >= LINE:
        lines = torch.randperm(-(-numel // LINE), generator=generator)[:size // LINE]
        positions = (lines[:, None] * LINE + torch.arange(LINE)).reshape(-1)
        positions = positions[positions < numel]  # the last line may be short
    else:  # without repeats when that is cheap; else with (rare among many values): randperm of a big
        # output costs more than the whole sampled run
        positions = torch.randperm(numel, generator=generator)[:size] if numel <= 4 * size \
            else torch.randint(numel, (size,), generator=generator)
    positions = positions.sort().values  # read in memory order: several times faster than at random
    inner = math.prod(shape[2:]) if len(shape) >= 2 else numel
    unit_of = positions // inner % channel_count(shape) if len(shape) >= 2 else torch.zeros_like(positions)
    return positions, unit_of


class TorchPlan:
    "Torch ops on the output's own device, no sync: the path for GPUs (and for the CPU without numba)."
    def __init__(self, shape, device, sample, bins, limits, linthresh, near_zero, stats, scratch):
        self.shape, self.device = torch.Size(shape), torch.device(device)  # the outputs this plan is for
        self.units = channel_count(shape)
        self.sample = None if sample is None else tuple(part.to(device) for part in sample)
        self.options = bins, limits, linthresh, near_zero, stats, scratch
        counted = math.prod(shape) if sample is None else sample[0].numel()
        self.sizes = np.array([math.prod(shape), self.units, counted], dtype=np.int64)  # what the host counts

    def __call__(self, values: torch.Tensor, rows, row: int):
        "Add an output to row `row` of `rows` (DeviceRows); each unit's maximum (for distributed runs)."
        bins, (low, high), linthresh, near_zero, stats, scratch = self.options
        # a float32 view or copy for everything, out of autograd: histc and sums of fp16/bf16 would count
        # in that dtype
        values = values.detach().float()
        flat = values.reshape(-1)
        counted = flat if self.sample is None else flat.index_select(0, self.sample[0])
        binned = counted if linthresh is None else symlog_(counted, linthresh)
        histogram_counts(binned, bins, low, high, rows.counts[row], scratch)
        if not stats:
            return None
        units = None if self.sample is None else (self.sample[1], self.units)
        # on the sample too when there is one: a pass over the whole output is what sampling saves
        return add_moments(values if units is None else counted, near_zero, rows.moments[row], units, scratch)


class FusedPlan:
    "One compiled call per output on the CPU: histogram and moments in one pass (`colordim.fused`)."
    def __init__(self, shape, sample, bins, limits, linthresh, near_zero, stats):
        self.shape, self.device = torch.Size(shape), torch.device("cpu")  # the outputs this plan is for
        self.units = channel_count(shape)
        self.batch = shape[0] if len(shape) >= 2 else 1  # a 0-d or 1-d output is one unit
        if sample is not None:  # positions, the unit of each, and the units with no position; int32 when
            # they fit: half the bytes a call reads, and they must stay in cache from one batch to the next
            index = np.int32 if math.prod(shape) < 2 ** 31 else np.int64
            positions, unit_of = (np.ascontiguousarray(part.numpy(), dtype=index) for part in sample)
            self.sample = positions, unit_of, np.setdiff1d(np.arange(self.units), unit_of).astype(index)
        else:
            self.sample = None
        self.unit_max = np.empty(self.units, dtype=np.float32)
        counted = math.prod(shape) if sample is None else sample[0].numel()
        # the kernels' scratch, kept so that a call allocates nothing: bin keys (of a sample, or of one item
        # of the batch), the gathered sample, and count lanes
        self.keys = np.empty(counted if sample is not None else math.prod(shape) // self.batch, np.int32)
        self.gathered = np.empty(counted, np.float32) if sample is not None else None
        self.lanes = np.zeros((fused.LANES, bins + 3), np.int64)
        self.options = dict(limits=limits, bins=bins, linthresh=linthresh or 0.0, near=near_zero, stats=stats,
                            numel=math.prod(shape), batch=self.batch, sample=self.sample, gathered=self.gathered)
        self.sizes = np.array([math.prod(shape), self.units, counted], dtype=np.int64)
        self.numel = math.prod(shape)
        self._run = fused.run_exact if sample is None else fused.run_sample
        self._rows = self._packed = None  # the rows the packed call writes into, and that call's arguments

    def __call__(self, values: torch.Tensor, rows, row: int):
        "Add an output to row `row` of `rows` (DeviceRows on the CPU); each unit's maximum over the output."
        if values.dtype is not torch.float32:  # bf16/fp16 are counted in float32, as on the torch path
            values = values.detach().float()
        if values.numel() != self.numel or not values.is_cpu:  # the call reads `numel` floats by address
            raise TypeError(f"a plan for CPU outputs of shape {tuple(self.shape)} got {tuple(values.shape)} "
                            f"on {values.device}")
        if not values.is_contiguous():
            values = values.contiguous()  # alive until the call returns
        if rows is not self._rows:  # made or grown since the last call: pack the call for these rows
            counts, moments = rows.host
            self._packed = fused.pack(counts, moments, self.unit_max, self.keys, self.lanes, **self.options)
            self._rows = rows  # kept alive with this plan: the packed call holds the addresses of its arrays
        self._run(*self._packed, values.data_ptr(), row)  # data_ptr: no grad, so no detach needed
        return self.unit_max  # numpy: `DeviceRows.keep_unit_max` takes it as it is


@torch.inference_mode(False)  # its tensors are used in and out of inference mode
def make_plan(values: torch.Tensor, sample: int, seed: int, bins: int, limits, linthresh, near_zero: float,
              stats: bool, scratch):
    "The plan for outputs like `values`: `sample` positions drawn from `seed` when it has more values."
    shape = tuple(values.shape)
    positions = draw_sample(shape, sample, seed) if sample is not None and values.numel() > sample else None
    if USE_FUSED and values.device.type == "cpu" and fused.available():
        return FusedPlan(shape, positions, bins, limits, linthresh, near_zero, stats)
    return TorchPlan(shape, values.device, positions, bins, limits, linthresh, near_zero, stats, scratch)
