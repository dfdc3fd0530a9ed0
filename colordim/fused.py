"""One pass over a CPU output: histogram counts and moments together, compiled with numba.

On the CPU there is no device to overlap with, so every eager op is paid in full: the torch path
(`summaries.py`) runs ~25 of them per output, each a pass over memory plus ~5 us of dispatch. These
kernels read each value once or twice while it is in cache, at ~1.2 ns a value, and cost one call.
Same results as the torch path: same float32 bin arithmetic, same NaN rules (`tests/test_fused.py`).
Without numba, `available()` is False and the torch path runs.

Three kernels: `summarise` (the whole output), `summarise_lines` (a sample of whole cache lines) and
`summarise_sample` (a sample of independent positions). Plans call them through `run_exact`,
`run_lines` and `run_sample`, whose arguments `pack` made once per plan: a call takes three ints,
because numba checks and unboxes each argument on every call.
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["available", "summarise", "summarise_sample", "summarise_lines", "pack", "run_exact", "run_sample",
           "run_lines"]

try:
    from numba import carray, njit, types
    from numba.extending import intrinsic
except ImportError:  # pragma: no cover - numba is a dependency; a broken install falls back to torch
    njit = None

LINE = 16  # float32 values in a 64-byte cache line: how `summarise_lines` samples
LANES = 4  # counts go into 4 interleaved histograms: neighbours (ReLU zeros) rarely bump the same counter
           # (measured: 4 count as fast as 8, and adding them up afterwards takes half as long)
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
    "Compile (or load from the cache) and run the kernels once, as plans call them; on failure, warn, use torch."
    try:
        values, counts, moments = np.array([0.5, -1.0], np.float32), np.zeros((1, 4), np.int64), np.zeros((1, 6))
        unit_max, lanes = np.empty(1, np.float32), np.zeros((LANES, 5), np.int64)
        common = dict(counts=counts, moments=moments, unit_max=unit_max, lanes=lanes, limits=(-1.0, 1.0), bins=2,
                      linthresh=0.0, near=0.05, stats=True, numel=2)
        exact = pack(keys=np.empty(2, np.int32), batch=1, **common)  # held: the calls read them by address
        run_exact(exact.ctypes.data, values.ctypes.data, 0)
        positions = np.array([1], np.int32)
        sample = positions, positions * 0, positions[:0]
        sampled = pack(keys=np.empty(1, np.int32), sample=sample, gathered=np.empty(1, np.float32), **common)
        run_sample(sampled.ctypes.data, values.ctypes.data, 0)
        zero = np.zeros(1, np.int32)
        lines = zero, zero, zero + 2, zero[:0]  # one line from 0, in unit 0 up to position 2
        in_lines = pack(keys=np.empty(LINE, np.int32), lines=lines, inner=2, gathered=np.empty(LINE, np.float32),
                        **common)
        run_lines(in_lines.ctypes.data, values.ctypes.data, 0)
        return counts[0].tolist() == [0, 3, 2, 0]  # -1.0 three times (exact, sample, line), 0.5 twice
    except Exception as error:  # noqa: BLE001 - whatever numba raises, recording goes on with torch
        import warnings
        warnings.warn(f"colordim: the compiled CPU kernel is unavailable ({type(error).__name__}: {error}); "
                      "using torch ops on the CPU instead (slower)", RuntimeWarning, stacklevel=3)
        return False


def _compiled(function, **options):
    "`function` compiled by numba, cached on disk when there is somewhere to cache it."
    options = {"nogil": True, "boundscheck": False, **options}
    try:
        return njit(cache=True, **options)(function)
    except RuntimeError:  # no writable cache location (read-only install, no home): compile per process
        return njit(**options)(function)


def _jit(function):
    return _compiled(function) if njit else function


def _jit_call(function):
    """A packed call, which hooks make: it keeps the GIL, so that two of one recorder's calls never run
    at once (its plans share their scratch, `plans.SharedArrays`); nothing would run meanwhile anyway."""
    return _compiled(function, nogil=False) if njit else function


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
def _add_sample_moments(moments, total, squares, near_zero, nan, unit_max, unsampled, low, high):
    "`_add_moments` for a sample: NaN wins the extremes; units no sampled value is in are not dead (+inf)."
    if nan:  # as in torch.aminmax
        low = high = np.float32(np.nan)
    for unit in unsampled:
        unit_max[unit] = np.inf
    _add_moments(moments, total, squares, near_zero, unit_max, low, high)


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


@_jit
def _unit_maxima(values, unit_of, unit_max):
    """unit_max[unit_of[j]] = max over j of values[j], NaN winning, stored only when it changes (rarely);
    returns the minimum (a scalar loop anyway: min costs nothing here, and numba does not vectorise it)."""
    low = np.float32(np.inf)
    for j in range(values.shape[0]):
        value, unit = values[j], unit_of[j]
        low = value if value < low else low
        if value > unit_max[unit] or value != value:
            unit_max[unit] = value
    return low


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
        minimum, maximum = _unit_maxima(values, unit_of, unit_max), np.float32(-np.inf)
        for unit in range(unit_max.shape[0]):
            maximum = max(maximum, unit_max[unit])
        _add_sample_moments(moments[row], total, squares, near_zero, nan, unit_max, unsampled, minimum, maximum)


@_jit_fast(_EXTREMES)
def _line_extremes(values, at):
    """Minimum and maximum of the LINE values from `values[at]`, none of them NaN. numba does not
    vectorise min and max, so four of each run side by side: a chain of 4, not 16, dependent steps."""
    block = values[at:at + LINE]
    low0, low1, low2, low3 = block[0], block[1], block[2], block[3]
    high0, high1, high2, high3 = low0, low1, low2, low3
    for k in range(4, LINE, 4):
        low0, high0 = min(low0, block[k]), max(high0, block[k])
        low1, high1 = min(low1, block[k + 1]), max(high1, block[k + 1])
        low2, high2 = min(low2, block[k + 2]), max(high2, block[k + 2])
        low3, high3 = min(low3, block[k + 3]), max(high3, block[k + 3])
    return min(min(low0, low1), min(low2, low3)), max(max(high0, high1), max(high2, high3))


@_jit_fast(_EXTREMES)
def _value_unit_maxima(values, at, unit, units, unit_max):
    "Merge the LINE values from `values[at]` into `unit_max` from `unit` on: units of one value (a Linear's)."
    if unit + LINE <= units:  # no wrap: one vector max
        for k in range(LINE):
            unit_max[unit + k] = max(unit_max[unit + k], values[at + k])
        return
    for k in range(LINE):
        unit_max[unit] = max(unit_max[unit], values[at + k])
        unit = unit + 1 if unit + 1 < units else 0


@_jit
def _line_unit_maxima(values, starts, line_unit, line_boundary, numel, inner, units, unit_max, nan):
    """Each unit's maximum over its part of each line (copied into `values`, line after line) into
    `unit_max`; returns the minimum and maximum. Without NaN, branch-free selects; with, NaN wins."""
    minimum, maximum, taken = np.float32(np.inf), np.float32(-np.inf), 0
    for s in range(starts.shape[0]):  # each unit's part of each line: one part, or more where units are short
        position, end = starts[s], min(starts[s] + LINE, numel)
        unit, boundary = line_unit[s], line_boundary[s]
        if not nan and end - position == LINE and (boundary >= end or inner == 1):  # a whole line, no NaN
            line_min, line_max = _line_extremes(values, taken)
            minimum, maximum = min(minimum, line_min), max(maximum, line_max)
            if boundary >= end:  # in one unit
                unit_max[unit] = max(unit_max[unit], line_max)
            else:  # units of one value each (a Linear's)
                _value_unit_maxima(values, taken, unit, units, unit_max)
            taken += LINE
            continue
        while position < end:
            stop = min(end, boundary)
            part_max, part_min = unit_max[unit], minimum
            if nan:
                for i in range(taken, taken + stop - position):
                    part_max = _nan_max(values[i], part_max)
            else:
                for i in range(taken, taken + stop - position):
                    value = values[i]
                    part_max = max(part_max, value)
                    part_min = min(part_min, value)
            unit_max[unit], minimum = part_max, part_min
            maximum = max(maximum, part_max)
            taken += stop - position
            position, boundary, unit = stop, boundary + inner, unit + 1 if unit + 1 < units else 0
    return minimum, maximum


@_jit
def summarise_lines(flat, starts, line_unit, line_boundary, unsampled, inner, units, low, high, bins, linthresh,
                    near, stats, counts, moments, row, unit_max, values, keys, lanes):
    """`summarise` of the values of `flat` in the lines of LINE values that begin at `starts` (the last
    may be cut short by the end). Line `s` begins in unit `line_unit[s]`, which ends at position
    `line_boundary[s]`; units follow each other every `inner` values. The lines are copied into
    `values` (float32 scratch, LINE per line) and the passes run over that; `keys` (int32) is a chunk."""
    numel, sampled = flat.shape[0], 0
    for s in range(starts.shape[0]):  # whole lines: 16 times fewer cache lines than independent values
        start = starts[s]
        if start + LINE <= numel:
            for k in range(LINE):  # a fixed count: two vector loads and stores
                values[sampled + k] = flat[start + k]
            sampled += LINE
        else:  # the output's last line, cut short
            for position in range(start, numel):
                values[sampled] = flat[position]
                sampled += 1
    values = values[:sampled]
    low32, high32, near32 = np.float32(low), np.float32(high), np.float32(near)
    scale, linthresh32 = np.float32(bins / (high - low)), np.float32(linthresh)
    chunk = keys.shape[0]
    for begin in range(0, sampled, chunk):  # keys a chunk at a time: they stay in L1
        part, part_keys = values[begin:begin + chunk], keys[:min(chunk, sampled - begin)]
        _keys(part, low32, scale, bins, high32, linthresh32, part_keys)
        _count(part_keys, lanes)
    _add_counts(lanes, counts[row])
    if not stats:
        return
    total, squares, near_zero, nan = _sums(values, near32)
    unit_max[:] = -np.inf
    minimum, maximum = _line_unit_maxima(values, starts, line_unit, line_boundary, numel, inner, units, unit_max,
                                         nan > 0)
    _add_sample_moments(moments[row], total, squares, near_zero, nan, unit_max, unsampled, minimum, maximum)

# --- calls with few arguments ---------------------------------------------------------------------
# numba checks and unboxes every argument of every call: for the kernels' 15 to 17, about 1 us with
# warm caches and about 8 us in a hook, where the model's layers have just evicted them; an array
# costs more than an int. So a plan packs its fixed arguments once (`pack`) into one int64 array: its
# bounds (float64 bits) and the sizes and addresses of its arrays; a call passes three ints: that
# array's address, the output's and the row. The caller keeps the packed array and every array it
# points to alive as long as it calls with them, and the output alive during the call.
# Packed: 0-3 floats: low, high, linthresh, near; then, from `FLOATS` on, ints: 0 rows, 1 bins,
# 2 units, 3 stats, 4 numel, 5-9 addresses of counts, moments, unit_max, keys, lanes,
# 10 length of keys; exact: 11 batch; sampled: 11 sampled, 12 unsampled, 13 positions are
# int64, 14-17 addresses of positions, unit_of, unsampled, gathered; lines: 11 lines, 12 unsampled,
# 13 inner, 14-18 addresses of starts, line_unit, line_boundary, unsampled (int32), gathered.
FLOATS = 4


def _address(array, dtype, name) -> int:
    "The address of a C-contiguous `array` of `dtype` (what the compiled side will read it as)."
    if not isinstance(array, np.ndarray) or array.dtype != dtype or not array.flags.c_contiguous:
        raise TypeError(f"{name}: needs a C-contiguous numpy array of {np.dtype(dtype)}, "
                        f"got {getattr(array, 'dtype', type(array).__name__)}")
    return array.ctypes.data


def pack(counts, moments, unit_max, keys, lanes, limits, bins, linthresh, near, stats, numel, batch=1,
         sample=None, gathered=None, lines=None, inner=1):
    """The (ints, floats) a `run_exact` call takes; given `sample` (positions, unit_of, unsampled) and
    `gathered`, a `run_sample` call; given `lines` (starts, line_unit, line_boundary, unsampled),
    `inner` and `gathered`, a `run_lines` call."""
    if lanes.shape != (LANES, bins + 3) or counts.ndim != 2 or counts.shape[1] != bins + 2 or moments.shape[1:] != (6,):
        raise ValueError(f"pack: counts (rows, {bins + 2}), moments (rows, 6) and lanes ({LANES}, {bins + 3}) "
                         f"expected, got {counts.shape}, {moments.shape}, {lanes.shape}")
    ints = [len(counts), bins, len(unit_max), int(stats), numel, _address(counts, np.int64, "counts"),
            _address(moments, np.float64, "moments"), _address(unit_max, np.float32, "unit_max"),
            _address(keys, np.int32, "keys"), _address(lanes, np.int64, "lanes"), len(keys)]
    if lines is not None:
        starts, line_unit, line_boundary, unsampled = lines
        ints += [len(starts), len(unsampled), inner, _address(starts, np.int32, "starts"),
                 _address(line_unit, np.int32, "line_unit"), _address(line_boundary, np.int32, "line_boundary"),
                 _address(unsampled, np.int32, "unsampled"), _address(gathered, np.float32, "gathered")]
        if len(line_unit) != len(starts) or len(line_boundary) != len(starts) or not len(keys) \
                or len(gathered) < LINE * len(starts):
            raise ValueError("pack: line_unit and line_boundary as long as starts, keys, and gathered of "
                             f"{LINE} values per line")
    elif sample is None:
        ints.append(batch)
    else:
        positions, unit_of, unsampled = sample
        index = np.int64 if positions.dtype == np.int64 else np.int32
        ints += [len(positions), len(unsampled), index is np.int64, _address(positions, index, "positions"),
                 _address(unit_of, index, "unit_of"), _address(unsampled, index, "unsampled"),
                 _address(gathered, np.float32, "gathered")]
        if len(unit_of) != len(positions) or len(keys) < len(positions) or len(gathered) < len(positions):
            raise ValueError("pack: unit_of, keys and gathered must be as long as positions")
    floats = np.array([*limits, linthresh, near], np.float64).view(np.int64)
    return np.concatenate([floats, np.array(ints, np.int64)])


if njit is not None:
    @intrinsic
    def _pointer(typingctx, address, kind):
        "The int64 `address` as a pointer to `kind` (np.float32, ...), for `numba.carray`."
        dtype = kind.dtype

        def codegen(context, builder, signature, args):
            return builder.inttoptr(args[0], context.get_value_type(types.CPointer(dtype)))
        return types.CPointer(dtype)(address, kind), codegen
else:  # pragma: no cover
    _pointer = None


@_jit
def _unpacked(packed, count, address):
    """What every packed call reads, from the array `pack` made (at address `packed`, `count` ints) and
    the output at `address`: floats, ints, the output, counts, moments, unit_max, keys, lanes."""
    floats = carray(_pointer(packed, np.float64), FLOATS)
    ints = carray(_pointer(packed + 8 * FLOATS, np.int64), count)
    rows, bins = ints[0], ints[1]
    return (floats, ints, carray(_pointer(address, np.float32), ints[4]),
            carray(_pointer(ints[5], np.int64), (rows, bins + 2)), carray(_pointer(ints[6], np.float64), (rows, 6)),
            carray(_pointer(ints[7], np.float32), ints[2]), carray(_pointer(ints[8], np.int32), ints[10]),
            carray(_pointer(ints[9], np.int64), (LANES, bins + 3)))


@_jit_call
def run_exact(packed, address, row):
    "`summarise` of the float32 output at `address` (contiguous, `numel` values) into `row`, as packed."
    floats, ints, flat, counts, moments, unit_max, keys, lanes = _unpacked(packed, 12, address)
    summarise(flat, ints[11], ints[2], floats[0], floats[1], ints[1], floats[2], floats[3], ints[3] != 0,
              counts, moments, row, unit_max, keys, lanes)


@_jit
def _run_sample_at(kind, packed, address, row):
    "`run_sample` with positions, units and unsampled units of integer type `kind`."
    floats, ints, flat, counts, moments, unit_max, keys, lanes = _unpacked(packed, 18, address)
    sampled, unsampled, gathered = ints[11], ints[12], carray(_pointer(ints[17], np.float32), ints[11])
    summarise_sample(flat, carray(_pointer(ints[14], kind), sampled), carray(_pointer(ints[15], kind), sampled),
                     carray(_pointer(ints[16], kind), unsampled), floats[0], floats[1], ints[1], floats[2],
                     floats[3], ints[3] != 0, counts, moments, row, unit_max, gathered, keys, lanes)


@_jit_call
def run_sample(packed, address, row):
    "`summarise_sample` of the float32 output at `address` (contiguous, `numel` values) into `row`, as packed."
    if carray(_pointer(packed + 8 * (FLOATS + 13), np.int64), 1)[0]:  # 2**31 values or more: int64 positions
        _run_sample_at(np.int64, packed, address, row)
    else:
        _run_sample_at(np.int32, packed, address, row)


@_jit_call
def run_lines(packed, address, row):
    "`summarise_lines` of the float32 output at `address` (contiguous, `numel` values) into `row`, as packed."
    floats, ints, flat, counts, moments, unit_max, keys, lanes = _unpacked(packed, 19, address)
    lines, unsampled = ints[11], ints[12]
    summarise_lines(flat, carray(_pointer(ints[14], np.int32), lines), carray(_pointer(ints[15], np.int32), lines),
                    carray(_pointer(ints[16], np.int32), lines), carray(_pointer(ints[17], np.int32), unsampled),
                    ints[13], ints[2], floats[0], floats[1], ints[1], floats[2], floats[3], ints[3] != 0, counts,
                    moments, row, unit_max, carray(_pointer(ints[18], np.float32), lines * LINE), keys, lanes)
