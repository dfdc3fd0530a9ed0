"""One pass over a CUDA output: histogram counts and moments together, in a Triton kernel registered as a torch op.

The torch path (`torch_kernels.py`) makes about 30 operator calls per output, each a pass over memory.
Here one op, `colordim::summarise`, launches two kernels: `_summarise` reads each value once (in its own
dtype: fp16 and bf16 are not copied to float32 first) and adds, per block of values, its histogram into the
layer's row with integer atomics, its float64 sums, near-zero and NaN counts and extremes into a partials
buffer, and each unit's maximum with float atomic max (order-free); `_finish` (one program) adds the
partials in a fixed order into the moments row and counts the dead units. Every result is independent of
the order blocks run in, so `torch.use_deterministic_algorithms(True)` needs nothing else. No value is read
back to the host. The op has a fake implementation, so it runs under fake tensors (the no-sync tests) and
inside compiled graphs. Same float32 bin arithmetic as the CPU kernel (`cpu_kernel.py`) and the torch path.

Without Triton (or off CUDA), `available()` is False and the torch path runs. Tested on the CPU in
Triton's interpreter (`TRITON_INTERPRET=1`, CPU tensors, `tests/test_gpu_kernel.py`); its speed only on a GPU.
"""
from __future__ import annotations

import math
from typing import List, Optional

import torch

__all__ = ["available", "verified", "summarise", "scratch_for", "BLOCK"]

BLOCK = 1024  # values per program of `_summarise`
PARTIALS = 6  # per block: sum, sum of squares, near-zero count, NaN count, min, max

try:
    import triton
    import triton.language as tl
except ImportError:  # an optional extra: the torch path runs without it
    triton = None


def available() -> bool:
    "Whether the Triton kernel can run: Triton imports (a CUDA output's plan uses it then)."
    return triton is not None


if triton is not None:
    @triton.jit
    def _summarise(x_ptr, index_ptr, unit_ptr, counts_ptr, partials_ptr, unit_max_ptr, n, inner, units,
                   low, high, scale, linthresh, near,
                   BINS: tl.constexpr, KEYS: tl.constexpr, BLOCK: tl.constexpr, SAMPLED: tl.constexpr,
                   SYMLOG: tl.constexpr, STATS: tl.constexpr, UNITS_LAST: tl.constexpr):
        "One block of values: its counts into `counts` (atomics), its partial moments into `partials[block]`."
        block = tl.program_id(0)
        offsets = block * BLOCK + tl.arange(0, BLOCK)
        inside = offsets < n
        if SAMPLED:  # the sample's positions and their units, drawn once per plan
            positions = tl.load(index_ptr + offsets, mask=inside, other=0)
            unit = tl.load(unit_ptr + offsets, mask=inside, other=0)
        else:
            positions = offsets
            if UNITS_LAST:
                unit = offsets % units
            else:
                unit = (offsets // inner) % units
        x = tl.load(x_ptr + positions, mask=inside, other=0.0).to(tl.float32)  # fp16/bf16 read as they are
        value = x
        if SYMLOG:  # sign(x) log1p(|x| / linthresh); log1p from log, exact near 0 (Goldberg's trick)
            ratio = tl.abs(x) / linthresh
            shifted = ratio + 1.0
            log1p = tl.where(shifted == 1.0, ratio, tl.log(shifted) * (ratio / (shifted - 1.0)))
            value = tl.where(x < 0, -log1p, log1p)
        index = (value - low) * scale + 1.0  # the float32 arithmetic of the CPU kernel and the torch path
        index = tl.minimum(tl.maximum(index, 0.0), BINS + 1.0)
        key = index.to(tl.int32) - (value == high).to(tl.int32)  # `high` itself is in the last bin, as in histc
        key = tl.where((value != value) | (offsets >= n), BINS + 2, key)  # NaN and padding: a bin dropped below
        bins = tl.arange(0, KEYS)
        tl.atomic_add(counts_ptr + bins, tl.histogram(key, KEYS).to(tl.int64), mask=bins < BINS + 2)
        if STATS:
            wide = tl.where(inside, x, 0.0).to(tl.float64)
            finite = inside & (x == x)
            out = partials_ptr + block * 6
            tl.store(out, tl.sum(wide))
            tl.store(out + 1, tl.sum(wide * wide))
            tl.store(out + 2, tl.sum((inside & (tl.abs(x) <= near)).to(tl.float64)))
            tl.store(out + 3, tl.sum((inside & (x != x)).to(tl.float64)))
            tl.store(out + 4, tl.min(tl.where(finite, x, float("inf"))).to(tl.float64))
            tl.store(out + 5, tl.max(tl.where(finite, x, float("-inf"))).to(tl.float64))
            # a unit with a NaN is not dead: +inf; order-free, as every max
            tl.atomic_max(unit_max_ptr + unit, tl.where(x == x, x, float("inf")), mask=inside)

    @triton.jit
    def _finish(partials_ptr, blocks, unit_max_ptr, per_unit_ptr, units, unsampled_ptr, unsampled, moments_ptr,
                CHUNK: tl.constexpr):
        "The blocks' partials added in order into the moments row; the dead units counted; unit maxima reset."
        total, squares = tl.zeros((), tl.float64), tl.zeros((), tl.float64)
        near, nan = tl.zeros((), tl.float64), tl.zeros((), tl.float64)
        low, high = tl.full((), float("inf"), tl.float64), tl.full((), float("-inf"), tl.float64)
        for first in range(0, blocks, CHUNK):
            rows = first + tl.arange(0, CHUNK)
            used = rows < blocks
            total += tl.sum(tl.load(partials_ptr + rows * 6, mask=used, other=0.0))
            squares += tl.sum(tl.load(partials_ptr + rows * 6 + 1, mask=used, other=0.0))
            near += tl.sum(tl.load(partials_ptr + rows * 6 + 2, mask=used, other=0.0))
            nan += tl.sum(tl.load(partials_ptr + rows * 6 + 3, mask=used, other=0.0))
            low = tl.minimum(low, tl.min(tl.load(partials_ptr + rows * 6 + 4, mask=used, other=float("inf"))))
            high = tl.maximum(high, tl.max(tl.load(partials_ptr + rows * 6 + 5, mask=used, other=float("-inf"))))
        for first in range(0, unsampled, CHUNK):  # units no sampled value is in: never seen, so not dead
            rows = first + tl.arange(0, CHUNK)
            unit = tl.load(unsampled_ptr + rows, mask=rows < unsampled, other=0)
            tl.store(unit_max_ptr + unit, tl.full((CHUNK,), float("inf"), tl.float32), mask=rows < unsampled)
        dead = tl.zeros((), tl.float64)
        for first in range(0, units, CHUNK):
            rows = first + tl.arange(0, CHUNK)
            used = rows < units
            maxima = tl.load(unit_max_ptr + rows, mask=used, other=1.0)
            dead += tl.sum((used & (maxima <= 0)).to(tl.float64))
            tl.store(per_unit_ptr + rows, maxima, mask=used)
            tl.store(unit_max_ptr + rows, tl.full((CHUNK,), float("-inf"), tl.float32), mask=used)
        low = tl.where(nan > 0, float("nan"), low)  # a NaN wins the extremes, as in torch.aminmax
        high = tl.where(nan > 0, float("nan"), high)
        tl.store(moments_ptr, tl.load(moments_ptr) + total)
        tl.store(moments_ptr + 1, tl.load(moments_ptr + 1) + squares)
        tl.store(moments_ptr + 2, tl.load(moments_ptr + 2) + near)
        tl.store(moments_ptr + 3, tl.load(moments_ptr + 3) + dead)
        old_low, old_high = tl.load(moments_ptr + 4), tl.load(moments_ptr + 5)
        tl.store(moments_ptr + 4, tl.where((-low != -low) | (-low > old_low), -low, old_low))  # NaN-propagating
        tl.store(moments_ptr + 5, tl.where((high != high) | (high > old_high), high, old_high))


@torch.library.custom_op("colordim::summarise", mutates_args=("counts", "moments", "scratch"))
def summarise(values: torch.Tensor, counts: torch.Tensor, moments: torch.Tensor, scratch: List[torch.Tensor],
              index: Optional[torch.Tensor], unit_of: Optional[torch.Tensor], unsampled: Optional[torch.Tensor],
              limits: List[float], options: List[float], layout: List[int]) -> None:
    """Add one output's counts to `counts` (bins + 2) and, with stats, its moments to `moments` (6), on its device.
    `values`: the output, contiguous in the order `layout` = (inner, units, units_last) describes, or the whole
    output a sample's `index` (positions) and `unit_of` read from; `scratch`: [partials, unit maxima (-inf),
    per-unit maxima out]; `limits`: (low, high) where the bins are; `options`: (linthresh or 0, near_zero, stats)."""
    partials, unit_max, per_unit = scratch
    bins, (low, high), (linthresh, near, stats), (inner, units, units_last) = counts.numel() - 2, limits, options, layout
    count = index.numel() if index is not None else values.numel()
    if not count:  # an empty output adds nothing (the recorder skips them; a direct call may not)
        return
    blocks = -(-count // BLOCK)
    dummy = counts  # a pointer the kernel never reads when the sample is off
    _summarise[(blocks,)](values, index if index is not None else dummy, unit_of if unit_of is not None else dummy,
                          counts, partials, unit_max, count, inner, units, low, high, bins / (high - low),
                          linthresh, near, BINS=bins, KEYS=triton.next_power_of_2(bins + 3), BLOCK=BLOCK,
                          SAMPLED=index is not None, SYMLOG=linthresh > 0, STATS=bool(stats),
                          UNITS_LAST=bool(units_last))
    if stats:
        _finish[(1,)](partials, blocks, unit_max, per_unit, units, unsampled if unsampled is not None else dummy,
                      0 if unsampled is None else unsampled.numel(), moments, CHUNK=256)


@summarise.register_fake
def _(values, counts, moments, scratch, index, unit_of, unsampled, limits, options, layout) -> None:
    return None


def scratch_for(count: int, units: int, device) -> list:
    "The scratch one plan's calls reuse: partials per block, unit maxima (-inf) and the per-unit maxima out."
    blocks = max(1, math.ceil(count / BLOCK))
    return [torch.zeros(blocks * PARTIALS, dtype=torch.float64, device=device),
            torch.full((units,), -math.inf, dtype=torch.float32, device=device),
            torch.empty(units, dtype=torch.float32, device=device)]


_VERIFIED = {}  # device -> whether the kernel agreed with the torch path there


def verified(device) -> bool:
    """Whether the kernel gives the torch path's counts and moments on `device`: checked once per device on a
    small output (one host read, once), with a warning and the torch path if not. Fake CUDA tensors (no GPU
    here: the no-sync tests) have nothing to run; their plans use the op, whose fake implementation runs."""
    if not torch.cuda.is_available():
        return True
    key = str(torch.device(device))
    if key not in _VERIFIED:
        _VERIFIED[key] = _check(torch.device(device))
    return _VERIFIED[key]


def _check(device) -> bool:
    from torch._subclasses.fake_tensor import unset_fake_temporarily
    from .buffer import LayerBuffer
    from .plans import TorchPlan, TritonPlan
    try:
        with unset_fake_temporarily(), torch.no_grad():
            values = torch.randn(4, 6, 5, 7, generator=torch.Generator().manual_seed(0)).to(device) * 3
            values[0, 0, 0, :4] = torch.tensor([float("nan"), float("inf"), -float("inf"), 4.0])
            values[:, 2] = -1.0
            rows = []
            for kind in (TritonPlan, TorchPlan):
                buffer = LayerBuffer(1, 16, device)
                kind(values.shape, device, None, 16, (-4.0, 4.0), None, 0.05, True)(values, buffer, 0)
                rows.append((buffer.counts[0].cpu(), buffer.moments[0].cpu()))
            (counts, moments), (expected_counts, expected_moments) = rows
            if torch.equal(counts, expected_counts) and torch.allclose(moments, expected_moments, rtol=1e-6,
                                                                         equal_nan=True):
                return True
            raise ValueError(f"counts {counts.tolist()} against the torch path's {expected_counts.tolist()}")
    except Exception as error:  # noqa: BLE001 - whatever Triton raises on this device, the torch path runs
        import warnings
        warnings.warn(f"colordim: the Triton kernel does not run on {device} ({type(error).__name__}: {error}); "
                      "using torch ops there instead", RuntimeWarning, stacklevel=3)
        return False
