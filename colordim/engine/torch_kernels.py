"""The torch path (GPUs, and the CPU without numba): what one output adds to its column, on its own
device, without a host sync."""
from __future__ import annotations

import math

import torch

from ..data.layout import EXTREMES, SUMS

__all__ = ["CHUNK", "Scratch", "histogram_counts", "add_moments", "channel_count", "symlog_", "finite_extremes"]

# histc counts in float32: a bin is exact up to 2**24, so bigger outputs are counted in chunks.
CHUNK = 2 ** 24


SMALL = 1 << 15  # below this many values, histc's 5 ops cost less than the bincount path's 16
LANES = 4  # the bincount path's interleaved histograms: neighbours (ReLU zeros) rarely land on one counter


class Scratch:
    "CPU buffers reused from call to call: a fresh multi-megabyte tensor per op costs page faults (~2x)."
    def __init__(self):
        self.floats = self.keys = self.flags = self.lanes = None
        self.width = None  # the lane offsets are (i % LANES) * width

    @torch.inference_mode(False)  # normal tensors, to be written in place in and out of inference mode
    def take(self, size: int, width: int = None):
        "Views of `size` elements: float32, int32 and bool scratch, and (given `width`) the lane offsets."
        if self.floats is None or self.floats.numel() < size:
            self.floats, self.keys = torch.empty(size), torch.empty(size, dtype=torch.int32)
            self.flags, self.lanes, self.width = torch.empty(size, dtype=torch.bool), None, None
        if width is not None and width != self.width:
            self.lanes, self.width = (torch.arange(self.floats.numel()) % LANES * width).to(torch.int32), width
        lanes = None if width is None else self.lanes[:size]
        return self.floats[:size], self.keys[:size], self.flags[:size], lanes


def histogram_counts(x: torch.Tensor, bins: int, low: float, high: float, out: torch.Tensor,
                     scratch: Scratch = None) -> None:
    "Add the counts of float32 `x` to `out` (bins + 2,): underflow, `bins` bins over [low, high], overflow."
    x = x.reshape(-1)
    for chunk in (x,) if x.numel() <= CHUNK else x.split(CHUNK):
        if chunk.device.type == "cpu" and chunk.numel() >= SMALL:  # bincount: ~3x faster than histc per value
            out.add_(_counts_by_bincount(chunk, bins, low, high, scratch or Scratch()))
        elif chunk.is_cuda and torch.are_deterministic_algorithms_enabled():  # CUDA histc would raise
            out.add_(_counts_by_index(chunk, bins, low, high))
        else:
            _add_counts_by_histc(chunk, bins, low, high, out)


def _add_counts_by_histc(x: torch.Tensor, bins: int, low: float, high: float, out: torch.Tensor) -> None:
    "Add histc's counts and the under- and overflow to `out` (bins + 2,): the GPU path, no sync."
    # Always pass low and high: with min == max, CUDA histc reads the range back to the host.
    out[1:-1].add_(torch.histc(x, bins, low, high).long())
    # histc ignores values outside the range; count them ourselves. NaN lands in neither.
    outside = torch.stack([(x < low).sum(dtype=torch.int32), (x > high).sum(dtype=torch.int32)])
    out[0::bins + 1].add_(outside)


def _counts_by_bincount(x: torch.Tensor, bins: int, low: float, high: float, scratch: Scratch) -> torch.Tensor:
    "(bins + 2,) counts from one bin index per value and bincount: the CPU path."
    index, keys, flags, lanes = scratch.take(x.numel(), bins + 3)
    torch.sub(x, low, out=index).mul_(bins / (high - low)).add_(1)  # under: < 1, bins: 1 .. bins, over: >= bins + 1
    index.clamp_(0, bins + 1).nan_to_num_(bins + 2)  # clamp keeps NaN; it gets a bin of its own
    keys.copy_(index).add_(lanes)  # truncates to whole bins, then spreads them over the lanes
    counts = torch.bincount(keys, minlength=LANES * (bins + 3)).view(LANES, bins + 3).sum(0)[:bins + 2]
    # A value equal to `high` (a saturated sigmoid, tanh or ReLU6) lands in the overflow bin, where histc
    # and numpy put it in the last bin: the true overflow is what lies above `high`, the rest moves down.
    moved = counts[-1] - torch.gt(x, high, out=flags).sum(dtype=torch.int32)
    counts[-2:].add_(torch.stack([moved, -moved]))
    return counts


def _counts_by_index(x: torch.Tensor, bins: int, low: float, high: float) -> torch.Tensor:
    "Histogram by bin index and a deterministic accumulate: (bins + 2,) counts, like histc plus edges."
    index = ((x - low) * (bins / (high - low))).floor_().clamp_(-1, bins).add_(1)  # under: 0, over: bins + 1
    index = torch.where(x == high, bins, index)  # the top edge belongs to the last bin, as in histc
    index = index.nan_to_num_(bins + 2).long()  # NaN goes to an extra bin that is dropped
    counts = torch.zeros(bins + 3, dtype=torch.int64, device=x.device)
    counts.index_put_((index,), torch.ones((), dtype=torch.int64, device=x.device), accumulate=True)
    return counts[:-1]


def finite_extremes(x: torch.Tensor) -> tuple[float, float]:
    """The smallest and largest finite value of `x`, or 0 (every auto range holds 0 anyway): a host read,
    for an auto range's first output and its widenings (on the CPU, where it is no device sync)."""
    low, high = torch.aminmax(torch.nan_to_num(x.detach().float(), nan=0.0, posinf=0.0, neginf=0.0))
    return low.item(), high.item()


def symlog_(x: torch.Tensor, linthresh: float) -> torch.Tensor:
    "sign(x) * log1p(|x| / linthresh), in a new tensor (x may be the layer's output itself)."
    return torch.sign(x) * torch.log1p(x.abs() / linthresh)


def _near_zero_count(x: torch.Tensor, near_zero: float, scratch) -> torch.Tensor:
    if scratch is None or x.device.type != "cpu":
        return (x.abs() <= near_zero).sum(dtype=torch.int32)  # int32 sums of bools are fast
    magnitude, _, flags, _ = scratch.take(x.numel())
    return torch.le(torch.abs(x, out=magnitude), near_zero, out=flags).sum(dtype=torch.int32)


def channel_count(shape) -> int:
    "How many units the dead-unit rate is over: dim 1 (channels, or features of a (batch, features) output)."
    return shape[1] if len(shape) >= 2 else 1


def add_moments(x: torch.Tensor, near_zero: float, out: torch.Tensor, units=None, scratch: Scratch = None):
    "Add `x`'s sum, sum of squares, near-zero and dead-unit counts to `out` (MOMENTS), merge the extremes; per-unit max."
    # `x` is a float32 output, or (with `units`: each value's unit index and the number of units) a 1-D
    # sample of one. The sums are taken in `out`'s float64: float32 ones overflow past ~1e19 a value and
    # lose the spread of a layer whose mean is large against it.
    flat = x.reshape(-1)
    low, high = torch.aminmax(flat)
    if units is not None:  # a unit is dead if all its sampled values are <= 0; unsampled units are not
        unit_of, count = units
        per_unit = torch.full((count,), math.inf, device=x.device).scatter_reduce_(
            0, unit_of, flat, "amax", include_self=False)
    elif x.dim() >= 2:
        per_unit = x.amax(0)  # (units, ...): two steps are faster than one
        per_unit = per_unit.flatten(1).amax(1) if per_unit.dim() > 1 else per_unit
    else:
        per_unit = high.reshape(1)
    near = _near_zero_count(flat, near_zero, scratch)
    dead = (per_unit <= 0).sum(dtype=torch.int32)
    # a copy (`flat` may be the layer's own output), then a pairwise sum: accurate where a norm or dot is not
    squares = flat.to(out.dtype, copy=True).square_().sum()
    row = torch.stack([flat.sum(dtype=out.dtype), squares, near.to(out.dtype), dead.to(out.dtype),
                       -low.to(out.dtype), high.to(out.dtype)])
    out[SUMS].add_(row[SUMS])
    torch.maximum(out[EXTREMES], row[EXTREMES], out=out[EXTREMES])
    return per_unit
