"""How one layer's outputs of one shape are summarised: worked out once, then run on every output.

A hook runs once per layer and batch, so whatever does not depend on the values (the sample positions,
the unit layout, which path, the sizes the host counts) is decided when a shape is first seen. On the
CPU the plan is one call to the compiled kernel (`colordim.engine.cpu_kernel`); elsewhere (a GPU, or no numba)
it is the torch ops of `colordim.engine.torch_kernels`, which never sync.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from . import cpu_kernel, cpu_threads, gpu_kernel
from ..data.layout import MOMENTS
from .torch_kernels import add_moments, channel_count, finite_extremes, histogram_counts, symlog_

__all__ = ["make_plan", "draw_sample", "FusedPlan", "Split", "SharedArrays", "TorchPlan", "TritonPlan", "UnitsLast",
           "units_last", "as_units_last", "features_first", "layout"]

USE_FUSED = True  # tests set it False to run the torch path (the GPU's) on the CPU
USE_TRITON = True  # and this False to run the torch path on (fake) CUDA tensors
LINE = cpu_kernel.LINE  # float32 values in a 64-byte cache line
LINES_UP_TO = 64  # outputs of at most 64 x sample values are sampled in whole lines


def draw_sample(shape, size: int, seed: int):
    """About `size` sorted positions in a flat output of `shape`, from `seed`, the unit (dim 1) of each,
    and the (sorted) indices of the lines they fill, or None when they are independent.

    Reading one value costs its whole 64-byte cache line. In an output of at most 64 x `size` values,
    `size` independent positions would read a large share of its lines (63% when it holds 16 x `size`),
    so the sample is `size // 16` whole lines (runs of 16 neighbouring values) instead: 16 times fewer
    lines for the same count. Neighbours are correlated, so they estimate less than independent values
    (on the demo CNN 4096 values in lines do as well as ~2,700 independent ones), but for the time an
    output of that size allows, much more. Bigger outputs, where independent values are cheap next to
    the layer itself, get `size` independent positions."""
    from torch._subclasses.fake_tensor import unset_fake_temporarily
    with unset_fake_temporarily():  # host constants, from the shape and seed alone: real even under fake tensors
        return _draw_sample(shape, size, seed)


def _draw_sample(shape, size: int, seed: int):
    numel, generator, lines = math.prod(shape), torch.Generator().manual_seed(seed), None
    if numel <= LINES_UP_TO * size and size >= LINE:
        lines = torch.randperm(-(-numel // LINE), generator=generator)[:size // LINE].sort().values
        positions = (lines[:, None] * LINE + torch.arange(LINE)).reshape(-1)
        positions = positions[positions < numel]  # the last line may be short
    else:  # without repeats when that is cheap; else with (rare among many values): randperm of a big
        # output costs more than the whole sampled run
        positions = torch.randperm(numel, generator=generator)[:size] if numel <= 4 * size \
            else torch.randint(numel, (size,), generator=generator)
    positions = positions.sort().values  # read in memory order: several times faster than at random
    inner = math.prod(shape[2:]) if len(shape) >= 2 else numel
    unit_of = positions // inner % channel_count(shape) if len(shape) >= 2 else torch.zeros_like(positions)
    return positions, unit_of, lines


class TorchPlan:
    "Torch ops on the output's own device, no sync: the path for GPUs (and for the CPU without numba)."
    def __init__(self, shape, device, sample, bins, limits, linthresh, near_zero, stats, scratch, grow=False):
        self.shape, self.device = torch.Size(shape), torch.device(device)  # the outputs this plan is for
        self.units = channel_count(shape)
        self.sample = None if sample is None else tuple(part.to(device) for part in sample[:2])
        self.options = bins, limits, linthresh, near_zero, stats, scratch
        self.grow = grow and self.device.type == "cpu"  # elsewhere the host checks at the flush: no sync here
        self.unit_max = None  # each unit's maximum in the last output (stats on), for distributed runs
        counted = math.prod(shape) if sample is None else sample[0].numel()
        self.sizes = np.array([math.prod(shape), self.units, counted], dtype=np.int64)  # what the host counts

    def fits(self, output) -> bool:
        "Whether `output` is a floating-point tensor of this plan's shape and device, not stored units last."
        return isinstance(output, torch.Tensor) and output.is_floating_point() and output.shape == self.shape \
            and output.device == self.device and (output.is_contiguous() or not units_last(output))

    def rebin(self, limits) -> None:
        "Bin over `limits` from now on (an auto range grew)."
        self.options = (self.options[0], tuple(limits), *self.options[2:])

    def __call__(self, values: torch.Tensor, rows, row: int, grow: bool = True) -> bool:
        """Add an output to row `row` of `rows` (a LayerBuffer). True: a growing range on the CPU does not
        hold its finite values, and nothing was added (the layer widens it and calls again)."""
        bins, (low, high), linthresh, near_zero, stats, scratch = self.options
        # a float32 view or copy for everything, out of autograd: histc and sums of fp16/bf16 would count
        # in that dtype
        values = values.detach().float()
        flat = values.reshape(-1)
        counted = flat if self.sample is None else flat.index_select(0, self.sample[0])
        binned = counted if linthresh is None else symlog_(counted, linthresh)
        if grow and self.grow and binned.numel():  # CPU memory: reading it back is no device sync
            smallest, largest = finite_extremes(binned)
            if smallest < low or largest > high:
                return True
        histogram_counts(binned, bins, low, high, rows.counts[row], scratch)
        if not stats:
            return False
        units = None if self.sample is None else (self.sample[1], self.units)
        # on the sample too when there is one: a pass over the whole output is what sampling saves
        self.unit_max = add_moments(values if units is None else counted, near_zero, rows.moments[row], units, scratch)
        return False

    record = __call__  # what `LayerRecorder.add` calls once `fits` took the output


class SharedArrays:
    """numpy scratch that every `FusedPlan` of one recorder writes and reads within its call: the lanes
    the counts go to, bin keys, gathered samples, unit maxima (`cpu_kernel.scratch_sizes`). One set, not
    one per plan, stays in cache from one layer's call to the next (2.5-3 us a layer less, measured in
    a training step). The calls keep the GIL, so two never run at once. `generation` counts the times
    an array grew: a plan takes its views again when it changed."""
    def __init__(self):
        self.arrays, self.generation = {}, 0

    def take(self, name: str, size: int, dtype) -> np.ndarray:
        "The first `size` elements of scratch `name` (zeros when new)."
        array = self.arrays.get(name)
        if array is None or array.size < size:
            array = self.arrays[name] = np.zeros(max(size, 1), dtype)
            self.generation += 1
        return array[:size]


class FusedPlan:
    """One compiled call per output on the CPU (`colordim.engine.cpu_kernel`): histogram and moments in one pass over
    the whole output, over its sampled lines, or over its sampled positions. The call takes numpy views
    of the output and of the layer's rows; numba checks and holds every array it is given."""
    def __init__(self, shape, sample, bins, limits, linthresh, near_zero, stats, shared=None, grow=False,
                 stored_last=False):
        self.shape, self.device = torch.Size(shape), torch.device("cpu")  # the outputs this plan is for
        self.stored_last = stored_last  # whole outputs stored units last (channels_last), read in place
        self.numel, self.units = math.prod(shape), channel_count(shape)
        batch, inner = (shape[0] if len(shape) >= 2 else 1), self._inner(shape)  # a 0-d or 1-d output: one unit
        counted = self.numel if sample is None else sample[0].numel()
        self.sizes = np.array([self.numel, self.units, counted], dtype=np.int64)
        self.split = None  # a big whole output: rows in parts, one per thread (`colordim.engine.cpu_threads`)
        if sample is None:
            self._run, self._index, count, unsampled = cpu_kernel.run_exact, (), 0, 0
            width = self.numel // batch
            self._scratch = cpu_kernel.scratch_sizes(bins, self.units, int(cpu_kernel.rows_at_once(batch, width)) * width,
                                                     int(cpu_kernel.table_size(self.units, width, stored_last)))
            if batch >= 2 and self.numel >= cpu_kernel.PARALLEL_FROM and cpu_threads.threads() >= 2:
                self.split = Split(batch, width, bins, self.units, self._scratch[1])
        elif sample[2] is not None and self.numel < 2 ** 31:
            index, count, unsampled = self._lines(shape, sample)
            self._run, self._index = cpu_kernel.run_lines, (index,)
            self._scratch = cpu_kernel.scratch_sizes(bins, self.units, cpu_kernel.KEYS_CHUNK, cpu_kernel.LINE * count)
        else:
            index, count, unsampled = self._positions(sample)
            self._run, self._index = cpu_kernel.run_sample, (index,)
            self._scratch = cpu_kernel.scratch_sizes(bins, self.units, count, count)
        self.params = cpu_kernel.params(limits, linthresh, near_zero, stats, batch=batch, inner=inner, units=self.units,
                                   count=count, unsampled=unsampled, grow=grow, units_last=stored_last)
        self.shared = shared if shared is not None else SharedArrays()
        self.grow = grow  # an auto range the kernel reports values outside of
        self._generation, self._arguments = None, ()  # what a call takes besides the output and rows
        self.unit_max = self._unit_scratch = None  # each unit's maximum in the last output (shared scratch)

    def fits(self, output) -> bool:
        """Whether `output` is a float32 CPU tensor of this plan's shape (other float dtypes take the long way),
        not stored units last."""
        return isinstance(output, torch.Tensor) and output.dtype is torch.float32 and output.is_cpu \
            and output.shape == self.shape and (units_last(output) if self.stored_last
                                                else output.is_contiguous() or not units_last(output))

    def _inner(self, shape) -> int:
        "Values per unit and item: units follow each other every `inner` values."
        return math.prod(shape[2:]) if len(shape) >= 2 else max(self.numel, 1)

    def _unsampled(self, unit_of):
        "The units no sampled value is in: +inf maxima (never seen, so not dead)."
        return np.setdiff1d(np.arange(self.units), unit_of)

    def _positions(self, sample):
        "(index: positions, unit_of, unsampled units; positions; unsampled): int32 when they fit."
        positions, unit_of = (part.numpy().astype(np.int64) for part in sample[:2])
        unsampled = self._unsampled(unit_of)
        self._check(positions, unit_of, unsampled, self.numel)
        kind = np.int32 if self.numel < 2 ** 31 else np.int64
        return _frozen(np.concatenate([positions, unit_of, unsampled]).astype(kind)), len(positions), len(unsampled)

    def _lines(self, shape, sample):
        "(index: each line's start, its unit, where that unit ends, then the unsampled units; lines; unsampled)."
        inner = self._inner(shape)
        starts = sample[2].numpy().astype(np.int64) * cpu_kernel.LINE
        block = starts // inner
        line_unit, line_boundary = block % self.units, (block + 1) * inner  # boundaries: at most numel
        unsampled = self._unsampled(sample[1].numpy())
        self._check(starts, line_unit, unsampled, self.numel)
        if not ((line_boundary > starts) & (line_boundary <= self.numel)).all():
            raise ValueError("colordim: a sampled line's unit ends outside the output")
        index = np.concatenate([starts, line_unit, line_boundary, unsampled]).astype(np.int32)
        return _frozen(index), len(starts), len(unsampled)

    def _check(self, positions, units, unsampled, numel):
        "What the kernel reads by these indices stays inside the output and the unit maxima (checked once)."
        if not (len(positions) and (np.diff(positions) >= 0).all() and positions[0] >= 0 and positions[-1] < numel
                and ((units >= 0) & (units < self.units)).all() and ((unsampled >= 0) & (unsampled < self.units)).all()):
            raise ValueError("colordim: sample positions outside the output or its units")

    def rebin(self, limits) -> None:
        "Bin over `limits` from now on (an auto range grew)."
        self.params[cpu_kernel.LOW], self.params[cpu_kernel.HIGH] = limits

    def __call__(self, values: torch.Tensor, rows, row: int, grow: bool = True) -> bool:
        """Add an output to row `row` of `rows` (a CPU LayerBuffer); `unit_max`: each unit's maximum over it.
        True: a growing range does not hold its finite values, and nothing was added."""
        if values.shape != self.shape or not values.is_cpu:
            raise TypeError(f"a plan for CPU outputs of shape {tuple(self.shape)} got {tuple(values.shape)} "
                            f"on {values.device}")
        if values.dtype is not torch.float32:  # bf16/fp16 are counted in float32, as on the torch path
            values = values.detach().float()
        return self.record(values, rows, row, grow)

    def record(self, values: torch.Tensor, rows, row: int, grow: bool = True) -> bool:
        "`__call__` of an output `fits` took (float32, on the CPU, this shape): the hot path, no check again."
        if self.stored_last:  # (batch, ..., units): a contiguous view
            values = values.movedim(1, -1)
        elif not values.is_contiguous():  # a copy in logical order (transposed)
            values = values.contiguous()
        flat = values.numpy(force=True).reshape(-1)  # out of autograd: one call, not detach() then numpy()
        if self._generation != self.shared.generation:  # the shared scratch grew since the last call
            self._take_scratch()
        counts, moments = rows.host
        if self.split is not None:
            parts = min(self.split.most, cpu_threads.threads())
            if parts >= 2:
                return self._in_parts(flat, counts, moments, row, parts, grow)
        self.unit_max = self._unit_scratch  # numpy: `LayerBuffer.keep_unit_max` takes it as it is
        if not grow:  # the last try: what is still outside goes to the edge bins
            params, self.params[cpu_kernel.GROW] = self.params[cpu_kernel.GROW], 0.0
            self._run(flat, counts, moments, row, *self._arguments)
            self.params[cpu_kernel.GROW] = params
            return False
        return bool(self._run(flat, counts, moments, row, *self._arguments))

    def _in_parts(self, flat: np.ndarray, counts, moments, row: int, parts: int, grow: bool) -> bool:
        "`__call__` of a big output in `parts` parts at once, then added up into `row`."
        split, params = self.split, self.params
        if not grow:
            params = params.copy()
            params[cpu_kernel.GROW] = 0.0
        tasks = [(cpu_kernel.run_exact_part, (flat[start:stop], split.counts, split.moments, part, params,
                                         split.maxima[part], split.ints[part]))
                 for part, (start, stop) in enumerate(split.bounds(parts))]
        if any(cpu_threads.run(tasks)):  # a growing range some part's values fell outside: nothing added
            return True
        cpu_kernel.merge_parts(counts, moments, row, split.counts, split.moments, split.maxima, parts,
                               params[cpu_kernel.STATS] != 0)
        self.unit_max = split.maxima[0]
        return False

    def _take_scratch(self):
        "The views of the shared scratch this plan's calls write into, as the arrays are now."
        floats, ints = self._scratch
        floats, ints = self.shared.take("floats", floats, np.float32), self.shared.take("ints", ints, np.int64)
        self._unit_scratch = floats[:self.units]
        self._arguments = (self.params, floats, ints, *self._index)
        self._generation = self.shared.generation


class Split:
    """The scratch of a whole output summarised in parts (`FusedPlan`): each part's counts, moments, unit
    maxima and keys, for at most `most` parts (the threads torch had when the plan was made)."""
    def __init__(self, batch: int, width: int, bins: int, units: int, ints: int):
        self.batch, self.width = batch, width
        self.most = min(batch, cpu_threads.threads())
        self.counts = np.zeros((self.most, bins + 2), np.int64)
        self.moments = np.zeros((self.most, len(MOMENTS)))
        self.maxima = np.zeros((self.most, units), np.float32)
        self.ints = [np.zeros(ints, np.int64) for _ in range(self.most)]
        self._bounds = {}

    def bounds(self, parts: int) -> list[tuple[int, int]]:
        "Where each of `parts` parts begins and ends in the flat output: whole rows, as even as they go."
        if parts not in self._bounds:
            rows = np.linspace(0, self.batch, parts + 1).round().astype(int)
            self._bounds[parts] = [(int(a) * self.width, int(b) * self.width) for a, b in zip(rows[:-1], rows[1:])]
        return self._bounds[parts]


class TritonPlan:
    """One op per CUDA output (`colordim.engine.gpu_kernel`): histogram and moments in one read of each value, of the
    whole output (stored in logical order or units last, read in place) or of its sampled positions."""
    def __init__(self, shape, device, sample, bins, limits, linthresh, near_zero, stats, stored_last=False):
        self.shape, self.device = torch.Size(shape), torch.device(device)  # the outputs this plan is for
        self.stored_last, self.units = stored_last, channel_count(shape)
        numel = math.prod(shape)
        inner = math.prod(shape[2:]) if len(shape) >= 2 else max(numel, 1)
        counted = numel if sample is None else sample[0].numel()
        self.sizes = np.array([numel, self.units, counted], dtype=np.int64)
        self.sample = (None, None, None) if sample is None else (
            sample[0].to(self.device), sample[1].to(self.device),
            torch.as_tensor(np.setdiff1d(np.arange(self.units), sample[1].numpy()), device=self.device))
        self.scratch = gpu_kernel.scratch_for(counted, self.units, self.device)
        self.limits, self.options = list(limits), [float(linthresh or 0.0), float(near_zero), float(stats)]
        self.layout = [inner, self.units, int(stored_last)]
        self.grow = False  # an auto range widens at the flush, from the extremes: no sync here
        self.unit_max = self.scratch[2]  # each unit's maximum in the last output (valid until the next call)

    def fits(self, output) -> bool:
        "Whether `output` is a floating-point tensor of this shape and device, stored as this plan reads it."
        return isinstance(output, torch.Tensor) and output.is_floating_point() and output.shape == self.shape \
            and output.device == self.device and (units_last(output) if self.stored_last
                                                  else output.is_contiguous() or not units_last(output))

    def rebin(self, limits) -> None:
        "Bin over `limits` from now on (an auto range grew)."
        self.limits = list(limits)

    def __call__(self, values: torch.Tensor, rows, row: int, grow: bool = True) -> bool:
        "Add an output to row `row` of `rows` (never outside: an auto range widens at the flush)."
        values = values.detach()
        if self.stored_last:  # (batch, ..., units): a contiguous view
            values = values.movedim(1, -1)
        elif not values.is_contiguous():  # other strides: a copy in logical order
            values = values.contiguous()
        gpu_kernel.summarise(values.reshape(-1), rows.counts[row], rows.moments[row], self.scratch, *self.sample,
                             self.limits, self.options, self.layout)
        return False

    record = __call__


def _triton_for(values: torch.Tensor) -> bool:
    "Whether a plan for `values` runs the Triton kernel: CUDA, Triton there, and it passed its check on the device."
    return USE_TRITON and values.is_cuda and gpu_kernel.available() and gpu_kernel.verified(values.device)


def units_last(output: torch.Tensor) -> bool:
    """Whether `output` (N, C, ...) is stored with its units (dim 1) last: channels_last, as inductor's and
    cuDNN's convolutions give. Read in logical order, it would be copied first."""
    return output.dim() >= 3 and not output.is_contiguous() and output.movedim(1, -1).is_contiguous()


def layout(output: torch.Tensor, features: bool) -> bool:
    "What a plan's kind depends on besides shape and device: whether the output is read units last."
    return units_last(features_first(output) if features and output.dim() >= 3 else output)


def as_units_last(output: torch.Tensor) -> torch.Tensor:
    "A units-last output as the (positions, units) matrix it is in memory: a view, no copy."
    return output.movedim(1, -1).reshape(-1, output.shape[1])


def features_first(output: torch.Tensor) -> torch.Tensor:
    """A (batch, ..., features) output as the (batch, features, ...) view whose units are dim 1: stored
    units last, as a channels-last output, which the plans read in place."""
    return output.movedim(-1, 1)


class UnitsLast:
    """The plan for outputs stored units last: another plan's, for their (positions, units) view. The
    histogram, moments and dead units are the same as in logical order; a sample's positions are drawn
    in memory order (a different sample of the same output)."""
    def __init__(self, plan, shape, view=as_units_last):
        self.plan, self.shape, self.device, self.view = plan, torch.Size(shape), plan.device, view
        self.sizes, self.grow = plan.sizes, plan.grow

    def fits(self, output) -> bool:
        return isinstance(output, torch.Tensor) and output.shape == self.shape \
            and (self.view is features_first or units_last(output)) and self.plan.fits(self.view(output))

    def rebin(self, limits) -> None:
        self.plan.rebin(limits)

    def __call__(self, values: torch.Tensor, rows, row: int, grow: bool = True) -> bool:
        return self.plan(self.view(values), rows, row, grow)

    def record(self, values: torch.Tensor, rows, row: int, grow: bool = True) -> bool:
        return self.plan.record(self.view(values), rows, row, grow)

    @property
    def unit_max(self):
        return self.plan.unit_max


def _frozen(array: np.ndarray) -> np.ndarray:
    "`array`, read-only from now on: the kernel reads by its indices, which were checked once."
    array.flags.writeable = False
    return array


@torch.inference_mode(False)  # its tensors are used in and out of inference mode
def make_plan(values: torch.Tensor, sample: int, seed: int, bins: int, limits, linthresh, near_zero: float,
              stats: bool, scratch, shared: SharedArrays = None, grow: bool = False, features: bool = False):
    """The plan for outputs like `values`: `sample` positions drawn from `seed` when it has more values;
    `grow`: the range is an auto one, which the plan reports values outside of (a call returns True); `features`: the
    units are the last dim (`colordim.engine.units`), else dim 1."""
    if features and values.dim() >= 3:  # (batch, ..., features): the plan of its units-first view, stored units last
        return UnitsLast(make_plan(features_first(values), sample, seed, bins, limits, linthresh, near_zero, stats,
                                   scratch, shared, grow), values.shape, features_first)
    if units_last(values):
        if sample is None and USE_FUSED and values.is_cpu and values.dtype is torch.float32 and cpu_kernel.available():
            return FusedPlan(tuple(values.shape), None, bins, limits, linthresh, near_zero, stats, shared, grow,
                             stored_last=True)  # the kernel reads it in place
        if sample is None and _triton_for(values):
            return TritonPlan(tuple(values.shape), values.device, None, bins, limits, linthresh, near_zero, stats,
                              stored_last=True)
        # the torch path, and samples: its (positions, units) view
        return UnitsLast(make_plan(as_units_last(values), sample, seed, bins, limits, linthresh, near_zero, stats,
                                   scratch, shared, grow), values.shape)
    shape = tuple(values.shape)
    positions = draw_sample(shape, sample, seed) if sample is not None and values.numel() > sample else None
    if USE_FUSED and values.device.type == "cpu" and cpu_kernel.available():
        return FusedPlan(shape, positions, bins, limits, linthresh, near_zero, stats, shared, grow)
    if _triton_for(values):
        return TritonPlan(shape, values.device, positions, bins, limits, linthresh, near_zero, stats)
    return TorchPlan(shape, values.device, positions, bins, limits, linthresh, near_zero, stats, scratch, grow)
