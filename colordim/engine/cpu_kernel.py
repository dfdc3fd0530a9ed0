"""One pass over a CPU output: histogram counts and moments together, compiled with numba.

On the CPU there is no device to overlap with, so every eager op is paid in full: the torch path
(`torch_kernels.py`) runs ~25 of them per output, each a pass over memory plus ~5 us of dispatch. These
kernels read each value once or twice while it is in cache, at ~0.7 ns a value, and cost one call.
Same results as the torch path: same float32 bin arithmetic, same NaN rules (`tests/test_cpu_kernel.py`).
Without numba, `available()` is False and the torch path runs.

Three kernels: `summarise` (the whole output), `summarise_lines` (a sample of whole cache lines) and
`summarise_sample` (a sample of independent positions). Plans call them through `run_exact`,
`run_lines` and `run_sample`, which take numpy arrays (views of the output and of the layer's rows)
and check the sizes their loops rely on: no address ever reaches compiled code.
"""
from __future__ import annotations

import math
import time

import numpy as np

from ..data.layout import DEAD, MAX, MOMENTS, NEAR_ZERO, NEG_MIN, SUM, SUM_SQ

__all__ = ["available", "summarise", "summarise_sample", "summarise_lines", "params", "scratch_sizes", "run_exact",
           "run_sample", "run_lines", "run_exact_part", "merge_parts", "PARALLEL_FROM"]

try:
    from numba import njit
except ImportError:  # pragma: no cover - numba is a dependency; a broken install falls back to torch
    njit = None

LINE = 16  # float32 values in a 64-byte cache line: how `summarise_lines` samples
KEYS_CHUNK = 256  # a line sample's bin keys are worked out this many at a time (they stay in L1)
LANES = 8  # counts go into 8 interleaved histograms: neighbours (ReLU zeros) rarely bump the same counter
BYTE_KEYS = 253  # up to this many bins, bin keys (0 .. bins + 2) are uint8; beyond, int32
# Counting is most of a pass (a load, an add and a store per value, in no vector). Measured on 100k values,
# 2026-12-06: uint8 keys and 8 lanes count in 0.29 ns a value, int64 keys and 4 lanes in 0.50, int32 keys
# in 0.47 with either; the keys themselves are written in 0.11 ns a value as uint8, 0.18 as int64.
_SUMS = {"reassoc", "nsz", "contract"}  # lets sums vectorise; NaN still propagates
_EXTREMES = {"nnan", "reassoc", "nsz"}  # lets min/max vectorise; a block with a NaN is redone exactly


_WORKS = None  # whether the kernels compiled and ran here (checked once, on first use)


def available() -> bool:
    "Whether the compiled CPU kernels run here: numba imports, and a first tiny call compiles and works."
    global _WORKS
    if _WORKS is None:
        _WORKS = njit is not None and _telling_if_slow(_smoke_test)
    return _WORKS


def _telling_if_slow(compile_kernels, after: float = 1.0):
    """`compile_kernels()`, saying so on stderr if it takes more than `after` seconds (the first recording
    after installing compiles the kernels, several seconds; later ones load them from the disk cache)."""
    import sys
    import threading
    told, started = [], time.perf_counter()

    def tell():
        told.append(True)
        print("colordim: compiling the CPU kernel (once after installing; cached on disk after that) ...",
              file=sys.stderr, flush=True)
    notice = threading.Timer(after, tell)
    notice.daemon = True
    notice.start()
    try:
        return compile_kernels()
    finally:
        notice.cancel()
        if told:
            print(f"colordim: CPU kernel ready in {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)


def _smoke_test() -> bool:
    "Compile (or load from the cache) and run the kernels once, as plans call them; on failure, warn, use torch."
    try:
        values, counts, moments = np.array([0.5, -1.0], np.float32), np.zeros((1, 4), np.int64), np.zeros((1, len(MOMENTS)))
        floats, ints = np.zeros(1 + LINE, np.float32), np.zeros(LANES * 5 + KEYS_CHUNK, np.int64)
        run_exact(values, counts, moments, 0, params((-1.0, 1.0), 0.0, 0.05, True), floats, ints)
        sample = np.array([1, 0], np.int32)  # position 1, in unit 0; no unsampled unit
        sample.flags.writeable = False
        run_sample(values, counts, moments, 0, params((-1.0, 1.0), 0.0, 0.05, True, count=1), floats, ints, sample)
        lines = np.array([0, 0, 2], np.int32)  # one line from 0, in unit 0 up to position 2
        lines.flags.writeable = False
        run_lines(values, counts, moments, 0, params((-1.0, 1.0), 0.0, 0.05, True, inner=2, count=1), floats, ints,
                  lines)
        parts, part_moments = np.zeros((2, 4), np.int64), np.zeros((2, len(MOMENTS)))
        maxima, part_ints = np.zeros((2, 1), np.float32), np.zeros(LANES * 5 + 1, np.int64)
        split = params((-1.0, 1.0), 0.0, 0.05, True, batch=2)
        for part in range(2):  # a split call: two rows of one value, one per part
            run_exact_part(values[part:part + 1], parts, part_moments, part, split, maxima[part], part_ints)
        merge_parts(counts, moments, 0, parts, part_moments, maxima, 2, True)
        return counts[0].tolist() == [0, 4, 3, 0]  # -1.0 four times (exact, sample, line, parts), 0.5 three
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
    """A call that hooks make: it keeps the GIL, so that two of one recorder's calls never run at once
    (its plans share their scratch, `plans.SharedArrays`); nothing would run meanwhile anyway."""
    return _compiled(function, nogil=False) if njit else function


def _jit_fast(flags):
    return lambda function: _compiled(function, fastmath=flags) if njit else function


SUM_BLOCK = 1024  # values summed in one float64 partial sum before it joins the total (two-level sums)


@_jit_fast(_SUMS)
def _block_sums(block, near):
    "Sum, sum of squares (float64) and near-zero count of at most SUM_BLOCK float32 values (`near`: float32)."
    total, squares, near_zero = np.float64(0), np.float64(0), np.int32(0)
    for i in range(block.shape[0]):
        value = np.float64(block[i])
        total += value
        squares += value * value
        near_zero += np.int32(1) if abs(block[i]) <= near else np.int32(0)  # float32 compare: same answer
    return total, squares, np.int64(near_zero)


@_jit_fast(_SUMS)
def _sums(block, near):
    """float64 sum and sum of squares, and near-zero count of a float32 1-D block (NaN propagates into the
    sums; the NaN count is the histogram's). float64: float32 squares overflow past ~1e19; partial sums
    of SUM_BLOCK values keep the rounding small enough for the std of a layer whose mean is 1e6 times its
    spread."""
    if block.shape[0] <= SUM_BLOCK:  # most rows (one item's values) are this short: no slicing
        return _block_sums(block, near)
    total, squares, near_zero = np.float64(0), np.float64(0), np.int64(0)
    for start in range(0, block.shape[0], SUM_BLOCK):
        part_total, part_squares, part_near = _block_sums(block[start:start + SUM_BLOCK], near)
        total, squares, near_zero = total + part_total, squares + part_squares, near_zero + part_near
    return total, squares, near_zero


NAN_ORDER = 0x7FFFFFFF  # a NaN's place among ordered values: above all of them, and its own bits are a NaN


@_jit
def _ordered(bits):
    """The int32 whose order is that of the float32 with these `bits` (a NaN excepted), and back again (it
    is its own inverse). numba's float min/max never vectorise; integer ones do: 5 times faster."""
    return bits ^ ((bits >> 31) & np.int32(NAN_ORDER))


@_jit
def _as_float(order):
    "The float32 of an ordered int32 (`NAN_ORDER`: NaN)."
    return np.int32(_ordered(order)).view(np.float32)


@_jit
def _order_of(value):
    "The ordered int32 of a float32 value that is not NaN."
    return _ordered(np.float32(value).view(np.int32))


@_jit
def _order_nan(bits):
    "`_ordered`, with every NaN (any sign, any payload) at `NAN_ORDER`, where a maximum keeps it."
    return np.int32(NAN_ORDER) if (bits & np.int32(NAN_ORDER)) > np.int32(0x7F800000) else _ordered(bits)


@_jit
def _extremes(block, unit_high):
    """Minimum of a (units, inner) int32 view of float32 values with no NaN; each unit's maximum merged into
    `unit_high` (ordered, `_ordered`)."""
    units, inner = block.shape
    low = np.int32(NAN_ORDER)
    for unit in range(units):
        unit_low, high = np.int32(NAN_ORDER), unit_high[unit]
        for i in range(inner):
            value = _ordered(block[unit, i])
            unit_low = min(unit_low, value)
            high = max(high, value)
        unit_high[unit] = high
        low = min(low, unit_low)
    return _as_float(low)


@_jit_fast(_EXTREMES)
def _extremes_short(block, unit_max):
    """`_extremes` of a (units, inner) float32 block whose units hold a few values each (2 to 15), where a
    vectorised loop per unit costs more than it saves: float min/max into float `unit_max`, a scalar loop."""
    units, inner = block.shape
    low = np.float32(np.inf)
    for unit in range(units):
        unit_low, largest = np.float32(np.inf), np.float32(-np.inf)
        for i in range(inner):
            unit_low = min(unit_low, block[unit, i])
            largest = max(largest, block[unit, i])
        unit_max[unit] = max(unit_max[unit], largest)
        low = min(low, unit_low)
    return low


@_jit
def _short_extremes_with_nan(block, unit_max):
    "`_extremes_short` of a block holding a NaN: a unit with a NaN gets a NaN maximum (not dead), min is NaN."
    units, inner = block.shape
    for unit in range(units):
        for i in range(inner):
            unit_max[unit] = _nan_max(block[unit, i], unit_max[unit])
    return np.float32(np.nan)


SHORT = 16  # units with fewer values than this take `_extremes_short`


@_jit
def _extremes_last(block, unit_high):
    """`_extremes` of an (inner, units) view, as channels_last stores a row: passes across the units,
    vectorised, four positions at a time (each unit's maximum is loaded and stored a quarter as often:
    3.5 times faster with 8 units)."""
    inner, units = block.shape
    low = np.int32(NAN_ORDER)
    full = inner - inner % 4
    for i in range(0, full, 4):
        for unit in range(units):
            v0, v1 = _ordered(block[i, unit]), _ordered(block[i + 1, unit])
            v2, v3 = _ordered(block[i + 2, unit]), _ordered(block[i + 3, unit])
            low = min(low, min(min(v0, v1), min(v2, v3)))
            unit_high[unit] = max(unit_high[unit], max(max(v0, v1), max(v2, v3)))
    for i in range(full, inner):
        for unit in range(units):
            value = _ordered(block[i, unit])
            low = min(low, value)
            unit_high[unit] = max(unit_high[unit], value)
    return _as_float(low)


@_jit
def _extremes_with_nan(block, unit_high):
    "`_extremes` of a (units, inner) block holding a NaN: a unit with a NaN gets a NaN maximum (not dead), min is NaN."
    units, inner = block.shape
    for unit in range(units):
        high = unit_high[unit]
        for i in range(inner):
            high = max(high, _order_nan(block[unit, i]))
        unit_high[unit] = high
    return np.float32(np.nan)


@_jit
def _to_floats(unit_high):
    "Ordered int32 maxima back to float32 in place (the float32 array they are a view of)."
    for unit in range(unit_high.shape[0]):
        unit_high[unit] = _ordered(unit_high[unit])


@_jit
def _nan_max(a, b):
    "max that returns NaN when either is NaN, like torch.maximum."
    return a if a != a or a > b else b


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
def key_words(keys, bins):
    "The int64 words of scratch that `keys` bin keys take: bytes up to BYTE_KEYS bins, else int32."
    return -(-keys * (1 if bins <= BYTE_KEYS else 4) // 8)


@_jit
def _count_block(block, keys, lanes, low, scale, bins, high, linthresh):
    "Bin keys of `block` into `keys` (scratch bytes: uint8 keys up to BYTE_KEYS bins, else int32), counted into `lanes`."
    if bins <= BYTE_KEYS:
        part = keys[:block.shape[0]]
        _keys(block, low, scale, bins, high, linthresh, part)
        _count(part, lanes)
    else:
        wide = keys.view(np.int32)[:block.shape[0]]
        _keys(block, low, scale, bins, high, linthresh, wide)
        _count(wide, lanes)


@_jit
def _add_counts(lanes, counts):
    "Add the lanes' counts (all but the NaN bin) to `counts` and zero the lanes for the next call."
    for k in range(counts.shape[0]):
        for lane in range(LANES):
            counts[k] += lanes[lane, k]
    lanes[:] = 0


@_jit
def _outside(lanes, grow, values, low, scale, bins, high, linthresh):
    """With `grow` (an auto range), whether finite values of `values` fell outside [low, high]: then the
    lanes are zeroed, the call adds nothing, and the caller widens the range and calls again. Only when
    the edge bins counted something are the values looked at again (infinities never widen it)."""
    if not grow:
        return False
    edges = 0
    for lane in range(LANES):
        edges += lanes[lane, 0] + lanes[lane, bins + 1]
    if not edges:
        return False
    top = np.float32(bins + 1)
    for i in range(values.shape[0]):
        value = values[i]
        if value != value or abs(value) == np.float32(np.inf):
            continue
        if linthresh > 0:
            value = _symlog(value, linthresh)
        index = (value - low) * scale + np.float32(1)
        if index < np.float32(1) or (index >= top and value != high):
            lanes[:] = 0
            return True
    return False


@_jit
def _add_moments(moments, total, squares, near_zero, unit_max, low, high):
    "Add to a MOMENTS row (sum, sum_sq, near_zero, dead, -min, max); dead: units whose max is <= 0."
    dead = 0
    for unit in range(unit_max.shape[0]):
        dead += unit_max[unit] <= 0
    moments[SUM] += total
    moments[SUM_SQ] += squares
    moments[NEAR_ZERO] += near_zero
    moments[DEAD] += dead
    moments[NEG_MIN] = _nan_max(-np.float64(low), moments[NEG_MIN])
    moments[MAX] = _nan_max(np.float64(high), moments[MAX])


@_jit
def _add_sample_moments(moments, total, squares, near_zero, nan, unit_max, unsampled, low, high):
    "`_add_moments` for a sample: NaN wins the extremes; units no sampled value is in are not dead (+inf)."
    if nan:  # as in torch.aminmax
        low = high = np.float32(np.nan)
    for unit in unsampled:
        unit_max[unit] = np.inf
    _add_moments(moments, total, squares, near_zero, unit_max, low, high)


TABLE = 4096  # rows of units first of at most this many values, and
TABLE_INNER = 64  # units of fewer values than this: each position's maximum over the rows first


@_jit
def table_size(units, width, units_last):
    """int32 scratch values for each position's maximum over the rows (`_position_maxima`): rows of `width`
    values, units first, of fewer than TABLE_INNER values each and at most TABLE in all; 0 where the rows
    are read otherwise (longer units: `_extremes` per unit costs less, 0.11 ns a value against 0.15)."""
    return width if not units_last and units < width < TABLE_INNER * units and width <= TABLE else 0


@_jit
def _position_maxima(row, table):
    """table[j] = max(table[j], row[j]) over ordered int32 (`_ordered`), vectorised; returns the row's
    minimum, ordered. A unit's maximum is then taken once per output (`_table_to_units`), not once per row:
    units of 4 values (2x2 maps) cost 0.37 ns a value taken per row and unit."""
    low = np.int32(NAN_ORDER)
    for j in range(row.shape[0]):
        value = _ordered(row[j])
        table[j] = max(table[j], value)
        low = min(low, value)
    return low


@_jit
def _table_to_units(table, units, unit_high):
    "Merge each unit's maximum over its positions' maxima (`table`: units after each other) into `unit_high`."
    inner = table.shape[0] // units
    for unit in range(units):
        high = unit_high[unit]
        for i in range(unit * inner, (unit + 1) * inner):
            high = max(high, table[i])
        unit_high[unit] = high


@_jit
def _nan_count(lanes, bins):
    "The NaN values counted in the lanes' extra bin (bins + 2), which `_add_counts` leaves out."
    nan = 0
    for lane in range(LANES):
        nan += lanes[lane, bins + 2]
    return nan


@_jit
def rows_at_once(batch, width):
    "Rows of `width` values that `summarise` takes at once (sums, keys, counts): about SUM_BLOCK values."
    return min(batch, max(1, SUM_BLOCK // max(width, 1)))


@_jit
def _extremes_with_nans(flat, batch, units, short, units_last, unit_max):
    """Each unit's maximum again over a whole output that holds a NaN (rare: the fast passes assume none),
    NaN winning, into `unit_max` (float32, or ordered int32 when not `short`); the minimum is NaN."""
    width = flat.shape[0] // batch
    if short:
        unit_max[:] = -np.inf
        values = flat.reshape(batch, units, width // units)
        for n in range(batch):
            _short_extremes_with_nan(values[n], unit_max)
        return np.float32(np.nan)
    unit_high, bits = unit_max.view(np.int32), flat.view(np.int32)
    unit_high[:] = _order_of(-np.inf)
    for n in range(batch):
        if units_last:
            _extremes_with_nan(bits.reshape(batch, width // units, units)[n].T, unit_high)
        else:
            _extremes_with_nan(bits.reshape(batch, units, width // units)[n], unit_high)
    return np.float32(np.nan)


@_jit
def summarise(flat, batch, units, low, high, bins, linthresh, near, stats, counts, moments, row, unit_max, keys,
              lanes, table, grow, units_last):
    """Add a float32 output's counts to `counts[row]` (bins + 2) and, with `stats`, its moments to
    `moments[row]` (MOMENTS); `flat` is laid out (batch, units, inner), or (batch, inner, units) with `units_last`
    (channels_last). Each unit's maximum goes to `unit_max`.
    Scratch: `keys` (uint8 or int32, at least `rows_at_once` rows), `lanes` (LANES, bins + 3) int64 zeros,
    `table` (int32, `table_size` values, or fewer where the rows are read otherwise).
    Returns 1, having added nothing, when `grow` and finite values fell outside [low, high]; else 0.
    A few rows at a time (about SUM_BLOCK values, in L1), every pass: sums, extremes, bin keys, counts.
    The passes assume no NaN; the NaN bin says whether there was one, and then the extremes are redone."""
    width = flat.shape[0] // batch
    bits = flat.view(np.int32)  # the same values as int32, for `_extremes`
    units_first, values = bits.reshape(batch, units, width // units), flat.reshape(batch, units, width // units)
    low32, high32, near32 = np.float32(low), np.float32(high), np.float32(near)
    scale, linthresh32 = np.float32(bins / (high - low)), np.float32(linthresh)
    across = units_last or width == units  # rows read across the units: channels_last, a Linear's (units, 1)
    tabled = table_size(units, width, units_last) > 0 and table.shape[0] >= width  # none given: read per unit
    short = not tabled and not units_last and units < width < SHORT * units  # units of a few values: float maxima
    unit_high = unit_max.view(np.int32)  # else each unit's maximum, ordered (`_ordered`) until the end
    if short:
        unit_max[:] = -np.inf
    else:
        unit_high[:] = _order_of(-np.inf)
    if tabled:
        table[:width] = _order_of(-np.inf)
    total, squares, near_zero, minimum = 0.0, 0.0, 0, np.float32(np.inf)
    group = rows_at_once(batch, width)
    for first in range(0, batch, group):
        last = min(first + group, batch)
        block = flat[first * width:last * width]
        if stats:
            part_total, part_squares, part_near = _sums(block, near32)
            total, squares, near_zero = total + part_total, squares + part_squares, near_zero + part_near
            if across:  # the rows' (positions, units) matrices, one after the other: one pass
                minimum = min(minimum, _extremes_last(bits[first * width:last * width].reshape(-1, units),
                                                      unit_high))
            elif tabled:
                for n in range(first, last):
                    minimum = min(minimum, _as_float(_position_maxima(bits[n * width:(n + 1) * width], table)))
            elif short:
                for n in range(first, last):
                    minimum = min(minimum, _extremes_short(values[n], unit_max))
            else:
                for n in range(first, last):
                    minimum = min(minimum, _extremes(units_first[n], unit_high))
        _count_block(block, keys, lanes, low32, scale, bins, high32, linthresh32)
    if stats and tabled:
        _table_to_units(table[:width], units, unit_high)
    nan = _nan_count(lanes, bins)
    if stats and nan:
        minimum = _extremes_with_nans(flat, batch, units, short, units_last, unit_max)
    if not short:
        _to_floats(unit_high)
    if _outside(lanes, grow, flat, low32, scale, bins, high32, linthresh32):
        return 1
    _add_counts(lanes, counts[row])
    if stats:
        maximum = np.float32(-np.inf)
        for unit in range(units):
            maximum = _nan_max(unit_max[unit], maximum)
        _add_moments(moments[row], total, squares, near_zero, unit_max, minimum, maximum)
    return 0


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
                     row, unit_max, values, keys, lanes, grow=False):
    """`summarise` of the values of `flat` at `positions` (each in unit `unit_of`); the units in
    `unsampled` get +inf in `unit_max` (never seen, so not dead). The sample is gathered first into
    `values` (float32 scratch, at least as long as `positions`; `keys` uint8 or int32 alike): the gather is
    what costs when the output is out of cache, and the passes after it run over contiguous memory."""
    sampled = positions.shape[0]
    values = values[:sampled]
    _gather(flat, positions, values)
    low32, high32, near32 = np.float32(low), np.float32(high), np.float32(near)
    scale, linthresh32 = np.float32(bins / (high - low)), np.float32(linthresh)
    _count_block(values, keys, lanes, low32, scale, bins, high32, linthresh32)
    if _outside(lanes, grow, values, low32, scale, bins, high32, linthresh32):
        return 1
    nan = _nan_count(lanes, bins)
    _add_counts(lanes, counts[row])
    if stats:
        total, squares, near_zero = _sums(values, near32)
        unit_max[:] = -np.inf
        minimum, maximum = _unit_maxima(values, unit_of, unit_max), np.float32(-np.inf)
        for unit in range(unit_max.shape[0]):
            maximum = max(maximum, unit_max[unit])
        _add_sample_moments(moments[row], total, squares, near_zero, nan, unit_max, unsampled, minimum, maximum)
    return 0


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
                    near, stats, counts, moments, row, unit_max, values, keys, lanes, grow=False):
    """`summarise` of the values of `flat` in the lines of LINE values that begin at `starts` (the last
    may be cut short by the end). Line `s` begins in unit `line_unit[s]`, which ends at position
    `line_boundary[s]`; units follow each other every `inner` values. The lines are copied into
    `values` (float32 scratch, LINE per line) and the passes run over that; `keys` (uint8 or int32) is a chunk."""
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
    for begin in range(0, sampled, KEYS_CHUNK):  # keys a chunk at a time: they stay in L1
        _count_block(values[begin:begin + KEYS_CHUNK], keys, lanes, low32, scale, bins, high32, linthresh32)
    if _outside(lanes, grow, values, low32, scale, bins, high32, linthresh32):
        return 1
    nan = _nan_count(lanes, bins)
    _add_counts(lanes, counts[row])
    if not stats:
        return 0
    total, squares, near_zero = _sums(values, near32)
    unit_max[:] = -np.inf
    minimum, maximum = _line_unit_maxima(values, starts, line_unit, line_boundary, numel, inner, units, unit_max,
                                         nan > 0)
    _add_sample_moments(moments[row], total, squares, near_zero, nan, unit_max, unsampled, minimum, maximum)
    return 0

# --- what plans call: arrays and a row index, as numba is meant to be called -------------------------
# numba checks and unboxes every argument of every call (~170 ns an array, warm), so a call takes few:
# the output, the layer's counts and moments, the row, then
# - `params`, float64: the plan's fixed numbers (indices below);
# - `floats`, float32 scratch: each unit's maximum (`units`), then the gathered sample or the positions'
#   maxima (`table_size`), if any;
# - `ints`, int64 scratch: the count lanes (LANES, bins + 3), then the bin keys (`key_words`);
# - `index` (sampled plans only): the plan's own positions, read-only, checked when the plan was made:
#   sample: positions (sorted), unit_of, unsampled units; lines: starts (sorted), line_unit,
#   line_boundary, unsampled units.
# Each call checks every size its loops rely on before it reads a value: the kernels run without
# bounds checks.
LOW, HIGH, LINTHRESH, NEAR, STATS, BATCH, INNER, UNITS, COUNT, UNSAMPLED, GROW, LAST = range(12)


def params(limits, linthresh, near, stats, batch=1, inner=1, units=1, count=0, unsampled=0, grow=False,
           units_last=False) -> np.ndarray:
    """A plan's fixed numbers: `count` sampled positions or lines, `unsampled` units never sampled; `grow`
    (an auto range): a call with finite values outside [low, high] adds nothing and returns 1; `units_last`:
    a whole output laid out (batch, inner, units), as channels_last stores one."""
    return np.array([*limits, linthresh or 0.0, near, float(stats), batch, inner, units, count, unsampled,
                     float(grow), float(units_last)], np.float64)


def scratch_sizes(bins: int, units: int, keys: int, gathered: int = 0) -> tuple[int, int]:
    "The (floats, ints) scratch a call needs: `keys` bin keys at once, `gathered` sampled values."
    return units + gathered, LANES * (bins + 3) + int(key_words(keys, bins))


@_jit
def _unpack(flat, counts, moments, row, params, floats, ints, keys_needed, gathered):
    "Check the common sizes; the views every call uses: unit_max, lanes, keys, gathered."
    bins, units = counts.shape[1] - 2, np.int64(params[UNITS])
    lanes_size, words = LANES * (bins + 3), key_words(keys_needed, bins)
    if moments.shape[1] != len(MOMENTS) or moments.shape[0] != counts.shape[0] or not 0 <= row < counts.shape[0] \
            or units < 1 or floats.shape[0] < units + gathered or ints.shape[0] < lanes_size + words \
            or params.shape[0] != LAST + 1:
        raise ValueError("colordim kernel: counts, moments, row, params or scratch of the wrong size")
    lanes = ints[:lanes_size].reshape(LANES, bins + 3)
    keys = ints[lanes_size:lanes_size + words].view(np.uint8)  # `_count_block` reads them as its keys need
    return bins, units, floats[:units], lanes, keys, floats[units:units + gathered]


@_jit_call
def run_exact(flat, counts, moments, row, params, floats, ints):
    "`summarise` of a contiguous float32 output `flat` into `row`; 1: outside a growing range, nothing added."
    batch, units = np.int64(params[BATCH]), np.int64(params[UNITS])
    width = flat.shape[0] // batch if batch >= 1 else 0
    if batch < 1 or flat.shape[0] % batch or (units >= 1 and width % units):
        raise ValueError("colordim kernel: an output of the wrong size")
    bins, units, unit_max, lanes, keys, scratch = _unpack(flat, counts, moments, row, params, floats, ints,
                                                          rows_at_once(batch, width) * width,
                                                          table_size(units, width, params[LAST] != 0))
    return summarise(flat, batch, units, params[LOW], params[HIGH], bins, params[LINTHRESH], params[NEAR],
                     params[STATS] != 0, counts, moments, row, unit_max, keys, lanes, scratch.view(np.int32),
                     params[GROW] != 0, params[LAST] != 0)


@_jit_call
def run_sample(flat, counts, moments, row, params, floats, ints, index):
    "`summarise_sample` of `flat` at the plan's sorted positions into `row`."
    sampled, unsampled = np.int64(params[COUNT]), np.int64(params[UNSAMPLED])
    bins, units, unit_max, lanes, keys, gathered = _unpack(flat, counts, moments, row, params, floats, ints,
                                                           sampled, sampled)
    if sampled < 1 or index.shape[0] != 2 * sampled + unsampled or not 0 <= index[0] <= index[sampled - 1] \
            or index[sampled - 1] >= flat.shape[0]:
        raise ValueError("colordim kernel: sample positions of the wrong size")
    return summarise_sample(flat, index[:sampled], index[sampled:2 * sampled], index[2 * sampled:], params[LOW],
                            params[HIGH], bins, params[LINTHRESH], params[NEAR], params[STATS] != 0, counts, moments,
                            row, unit_max, gathered, keys, lanes, params[GROW] != 0)


@_jit_call
def run_lines(flat, counts, moments, row, params, floats, ints, index):
    "`summarise_lines` of `flat` into `row`: the plan's lines, each in 16 values from its (sorted) start."
    count, unsampled = np.int64(params[COUNT]), np.int64(params[UNSAMPLED])
    bins, units, unit_max, lanes, keys, gathered = _unpack(flat, counts, moments, row, params, floats, ints,
                                                           KEYS_CHUNK, LINE * count)
    if count < 1 or index.shape[0] != 3 * count + unsampled or not 0 <= index[0] <= index[count - 1] < flat.shape[0]:
        raise ValueError("colordim kernel: sampled lines of the wrong size")
    return summarise_lines(flat, index[:count], index[count:2 * count], index[2 * count:3 * count],
                           index[3 * count:], np.int64(params[INNER]), units, params[LOW], params[HIGH], bins,
                           params[LINTHRESH], params[NEAR], params[STATS] != 0, counts, moments, row, unit_max,
                           gathered, keys, lanes, params[GROW] != 0)


# --- a big output in parts, one per thread (`colordim.engine.cpu_threads`) ----------------------------------
PARALLEL_FROM = 2 ** 18  # values from which an output is split: below, handing a part over costs what it saves


@_jit
def run_exact_part(flat, counts, moments, part, params, floats, ints):
    """`run_exact` of whole rows of an output (`flat`: a slice of them) into `counts[part]` and `moments[part]`,
    which it resets first; `floats[:units]`: the part's unit maxima. Releases the GIL: each part has its own
    scratch, and `merge_parts` adds them up. 1: outside a growing range (its counts stay zero)."""
    inner, units = np.int64(params[INNER]), np.int64(params[UNITS])
    width = inner * units
    if width < 1 or flat.shape[0] < width or flat.shape[0] % width:
        raise ValueError("colordim kernel: a part of an output of the wrong size")
    rows = flat.shape[0] // width
    bins, units, unit_max, lanes, keys, none = _unpack(flat, counts, moments, part, params, floats, ints,
                                                       rows_at_once(rows, width) * width, 0)
    counts[part, :] = 0
    moments[part, SUM:DEAD + 1] = 0.0
    moments[part, NEG_MIN:MAX + 1] = -np.inf
    return summarise(flat, rows, units, params[LOW], params[HIGH], bins, params[LINTHRESH],
                     params[NEAR], params[STATS] != 0, counts, moments, part, unit_max, keys, lanes,
                     none.view(np.int32), params[GROW] != 0, params[LAST] != 0)  # no table: rows read as they come


@_jit_call
def merge_parts(counts, moments, row, part_counts, part_moments, part_maxima, parts, stats):
    """Add `parts` parts (`run_exact_part`) into `counts[row]` and `moments[row]`: counts, sums and near-zero
    add, extremes take the larger, dead units come from each unit's maximum over all parts, which ends in
    `part_maxima[0]`."""
    if not 1 <= parts <= part_counts.shape[0] or part_counts.shape[1] != counts.shape[1] \
            or part_moments.shape[0] < parts or part_maxima.shape[0] < parts or moments.shape[1] != len(MOMENTS) \
            or part_moments.shape[1] != len(MOMENTS) or not 0 <= row < counts.shape[0] or moments.shape[0] != counts.shape[0]:
        raise ValueError("colordim kernel: parts of the wrong size")
    maxima = part_maxima[0]
    for part in range(parts):
        for k in range(counts.shape[1]):
            counts[row, k] += part_counts[part, k]
        if part:
            for unit in range(maxima.shape[0]):
                maxima[unit] = _nan_max(part_maxima[part, unit], maxima[unit])
    if not stats:
        return
    total, squares, near_zero, neg_min, high = 0.0, 0.0, 0.0, -np.inf, -np.inf
    for part in range(parts):
        total, squares = total + part_moments[part, SUM], squares + part_moments[part, SUM_SQ]
        near_zero += part_moments[part, NEAR_ZERO]
        neg_min = _nan_max(part_moments[part, NEG_MIN], neg_min)
        high = _nan_max(part_moments[part, MAX], high)
    _add_moments(moments[row], total, squares, near_zero, maxima, -neg_min, high)  # dead: from the merged maxima
