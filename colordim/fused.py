"""One pass over a CPU output: histogram counts and moments together, compiled with numba.

On the CPU there is no device to overlap with, so every eager op is paid in full: the torch path
(`summaries.py`) runs ~25 of them per output, each a pass over memory plus ~5 us of dispatch. These
kernels read each value once or twice while it is in cache, at ~1.2 ns a value, and cost one call.
Same results as the torch path: same float32 bin arithmetic, same NaN rules (`tests/test_fused.py`).
Without numba, `available()` is False and the torch path runs.
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["available", "summarise", "summarise_sample"]

try:
    from numba import njit
except ImportError:  # pragma: no cover - numba is a dependency; a broken install falls back to torch
    njit = None

LANES = 8  # counts go into 8 interleaved histograms: neighbours (ReLU zeros) rarely bump the same counter
_SUMS = {"reassoc", "nsz", "contract"}  # lets sums vectorise; NaN still propagates
_EXTREMES = {"nnan", "reassoc", "nsz"}  # lets min/max vectorise; a block with a NaN is redone exactly


_WORKS = None  # whether the kernels compiled and ran here (checked once, on first use)


def available() -> bool:
    "Whether the compiled CPU kernels run here: numba imports, and a first tiny call compiles and works."
    global _WORKS
    if _WORKS is None:
        _WORKS = njit is not None and _smoke_test()
    return _WORKS


def _smoke_test() -> bool:
    "Compile (or load from the cache) and run both kernels once; on any failure, warn and use torch."
    try:
        values, counts, moments = np.array([0.5, -1.0], np.float32), np.zeros((1, 4), np.int64), np.zeros((1, 6))
        scratch = np.empty(2, np.int32), np.zeros((LANES, 5), np.int64)
        summarise(values, 1, 1, -1.0, 1.0, 2, 0.0, 0.05, True, counts, moments, 0, np.empty(1, np.float32), *scratch)
        positions = np.array([1], np.int32)
        summarise_sample(values, positions, positions * 0, positions[:0], -1.0, 1.0, 2, 0.0, 0.05, True, counts,
                         moments, 0, np.empty(1, np.float32), np.empty(1, np.float32), *scratch)
        return counts[0].tolist() == [0, 2, 1, 0]  # -1.0 twice (the second call's sample) and 0.5
    except Exception as error:  # noqa: BLE001 - whatever numba raises, recording goes on with torch
        import warnings
        warnings.warn(f"colordim: the compiled CPU kernel is unavailable ({type(error).__name__}: {error}); "
                      "using torch ops on the CPU instead (slower)", RuntimeWarning, stacklevel=3)
        return False


def _compiled(function, **options):
    "`function` compiled by numba, cached on disk when there is somewhere to cache it."
    try:
        return njit(nogil=True, cache=True, boundscheck=False, **options)(function)
    except RuntimeError:  # no writable cache location (read-only install, no home): compile per process
        return njit(nogil=True, boundscheck=False, **options)(function)


def _jit(function):
    return _compiled(function) if njit else function


def _jit_fast(flags):
    return lambda function: _compiled(function, fastmath=flags) if njit else function


@_jit_fast(_SUMS)
def _sums(block, near):
    "float32 sum, sum of squares, near-zero count and NaN count of a 1-D block."
    total, squares = np.float32(0), np.float32(0)
    near_zero, nan = np.int64(0), np.int64(0)
    for i in range(block.shape[0]):
        value = block[i]
        total += value
        squares += value * value
        near_zero += np.int64(1) if abs(value) <= near else np.int64(0)
        nan += np.int64(1) if value != value else np.int64(0)
    return total, squares, near_zero, nan


@_jit_fast(_EXTREMES)
def _extremes(block, unit_max):
    "Minimum of a (units, inner) block with no NaN; each unit's maximum merged into `unit_max`."
    units, inner = block.shape
    low = np.float32(np.inf)
    for unit in range(units):
        unit_low, unit_high = np.float32(np.inf), np.float32(-np.inf)
        for i in range(inner):
            unit_low = min(unit_low, block[unit, i])
            unit_high = max(unit_high, block[unit, i])
        unit_max[unit] = max(unit_max[unit], unit_high)
        low = min(low, unit_low)
    return low


@_jit
def _nan_max(a, b):
    "max that returns NaN when either is NaN, like torch.maximum."
    return a if a != a or a > b else b


@_jit
def _nan_min(a, b):
    "min that returns NaN when either is NaN, like torch.minimum."
    return a if a != a or a < b else b


@_jit
def _extremes_with_nan(block, unit_max):
    "`_extremes` for a block holding a NaN: a unit with a NaN gets a NaN maximum (not dead), min is NaN."
    units, inner = block.shape
    for unit in range(units):
        for i in range(inner):
            unit_max[unit] = _nan_max(block[unit, i], unit_max[unit])
    return np.float32(np.nan)


@_jit
def _symlog(value, linthresh):
    "sign(x) log1p(|x| / linthresh) in float32: the bins of scale=\"symlog\"."
    return np.float32(math.copysign(math.log1p(abs(value) / linthresh), value))


@_jit
def _keys(block, low, scale, bins, high, linthresh, keys):
    "Each value's bin: 0 under, 1..bins, bins + 1 over, bins + 2 NaN; the torch path's float32 arithmetic."
    top = np.float32(bins + 1)
    for i in range(block.shape[0]):
        value = block[i]
        if linthresh > 0:  # symlog: bins uniform in sign(x) log1p(|x| / linthresh)
            value = _symlog(value, linthresh)
        index = (value - low) * scale + np.float32(1)
        index = np.float32(0) if index < np.float32(0) else index
        index = top if index > top else index
        keys[i] = np.int32(index) - np.int32(value == high)  # `high` itself is in the last bin, as in histc
        if value != value:
            keys[i] = bins + 2


@_jit
def _count(keys, lanes):
    for i in range(keys.shape[0]):
        lanes[i & (LANES - 1), keys[i]] += 1


@_jit
def _add_counts(lanes, counts):
    "Add the lanes' counts (all but the NaN bin) to `counts` and zero the lanes for the next call."
    for k in range(counts.shape[0]):
        for lane in range(LANES):
            counts[k] += lanes[lane, k]
    lanes[:] = 0


@_jit
def _add_moments(moments, total, squares, near_zero, unit_max, low, high):
    "Add to a MOMENTS row (sum, sum_sq, near_zero, dead, -min, max); dead: units whose max is <= 0."
    dead = 0
    for unit in range(unit_max.shape[0]):
        dead += unit_max[unit] <= 0
    moments[0] += total
    moments[1] += squares
    moments[2] += near_zero
    moments[3] += dead
    moments[4] = _nan_max(-np.float64(low), moments[4])
    moments[5] = _nan_max(np.float64(high), moments[5])


@_jit
def summarise(flat, batch, units, low, high, bins, linthresh, near, stats, counts, moments, row, unit_max, keys,
              lanes):
    """Add a float32 output's counts to `counts[row]` (bins + 2) and, with `stats`, its moments to
    `moments[row]` (6); `flat` is laid out (batch, units, inner). Each unit's maximum goes to `unit_max`.
    Scratch: `keys` (at least units * inner int32), `lanes` (LANES, bins + 3) int64 zeros."""
    width = flat.shape[0] // batch
    values = flat.reshape(batch, units, width // units)
    low32, high32, near32 = np.float32(low), np.float32(high), np.float32(near)
    scale, linthresh32 = np.float32(bins / (high - low)), np.float32(linthresh)
    rows, keys = flat.reshape(batch, width), keys[:width]
    unit_max[:] = -np.inf
    total, squares, near_zero, minimum = 0.0, 0.0, 0, np.float32(np.inf)
    for n in range(batch):  # one sample at a time, while it is in cache
        if stats:
            row_total, row_squares, row_near, row_nan = _sums(rows[n], near32)
            total, squares, near_zero = total + row_total, squares + row_squares, near_zero + row_near
            row_low = _extremes(values[n], unit_max) if row_nan == 0 else _extremes_with_nan(values[n], unit_max)
            minimum = _nan_min(row_low, minimum)
        _keys(rows[n], low32, scale, bins, high32, linthresh32, keys)
        _count(keys, lanes)
    _add_counts(lanes, counts[row])
    if stats:
        maximum = np.float32(-np.inf)
        for unit in range(units):
            maximum = _nan_max(unit_max[unit], maximum)
        _add_moments(moments[row], total, squares, near_zero, unit_max, minimum, maximum)


@_jit
def _gather(flat, positions, out):
    "out[j] = flat[positions[j]]: a loop of loads only, so many cache misses are in flight at once."
    for j in range(positions.shape[0]):
        out[j] = flat[positions[j]]


@_jit_fast(_EXTREMES)
def _min_max(block):
    "Minimum and maximum of a 1-D block with no NaN."
    low, high = np.float32(np.inf), np.float32(-np.inf)
    for i in range(block.shape[0]):
        low = min(low, block[i])
        high = max(high, block[i])
    return low, high


@_jit
def _unit_maxima(values, unit_of, unit_max):
    "unit_max[unit_of[j]] = max over j of values[j], NaN winning; stored only when it changes (rarely)."
    for j in range(values.shape[0]):
        value, unit = values[j], unit_of[j]
        if value > unit_max[unit] or value != value:
            unit_max[unit] = value


@_jit
def summarise_sample(flat, positions, unit_of, unsampled, low, high, bins, linthresh, near, stats, counts, moments,
                     row, unit_max, values, keys, lanes):
    """`summarise` of the values of `flat` at `positions` (each in unit `unit_of`); the units in
    `unsampled` get +inf in `unit_max` (never seen, so not dead). The sample is gathered first into
    `values` (float32 scratch, at least as long as `positions`; `keys` int32 alike): the gather is
    what costs when the output is out of cache, and the passes after it run over contiguous memory."""
    sampled = positions.shape[0]
    values, keys = values[:sampled], keys[:sampled]
    _gather(flat, positions, values)
    low32, high32, near32 = np.float32(low), np.float32(high), np.float32(near)
    scale, linthresh32 = np.float32(bins / (high - low)), np.float32(linthresh)
    _keys(values, low32, scale, bins, high32, linthresh32, keys)
    _count(keys, lanes)
    _add_counts(lanes, counts[row])
    if stats:
        total, squares, near_zero, nan = _sums(values, near32)
        unit_max[:] = -np.inf
        _unit_maxima(values, unit_of, unit_max)
        minimum, maximum = _min_max(values) if nan == 0 else (np.float32(np.nan), np.float32(np.nan))  # NaN wins
        for unit in unsampled:
            unit_max[unit] = np.inf
        _add_moments(moments[row], total, squares, near_zero, unit_max, minimum, maximum)
