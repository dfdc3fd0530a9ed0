"""`range="auto"`: a layer's range that fits the whole run, widened by powers of two, its counts merged exactly.

An auto range lies on a grid anchored at 0: `bins` bins of width 2**exponent / W (W: `bins` rounded up
to even), `below` of them under zero: none (one-sided, [0, 2**exponent], while the layer has output no
negative value: a ReLU's picture has no empty half) or bins // 2 (symmetric). Every edge of a coarser
grid is an edge of each finer one, so when values fall outside, the width doubles (as often as needed)
and what was counted merges exactly: old bin k (counted from zero) lies inside new bin k >> doublings.
Nothing here reads a device: the host decides, from values the kernel has already seen.

The whole policy is here; layers and the recorder only apply it (`LayerRecorder.rebin`):
- the first output: the narrowest range that holds it (`first`);
- a CPU output outside it: the narrowest that holds it and every bin so far (`holding`), at once;
- elsewhere (a GPU: no sync per batch) at each move to the host, from the extremes the moved rows
  brought back: room for twice them (`at_move`), and moves come early while activations grow fastest
  (`move_early`);
- distributed: every rank takes the widest of the ranks' ranges (`widest`).
"""
from __future__ import annotations

import math

import numpy as np

from ..data.layout import Binning, symlog

__all__ = ["grid_binning", "fitting", "first", "holding", "at_move", "move_early", "widest", "remap", "regrid",
           "LOWEST", "HIGHEST", "EARLY"]

LOWEST, HIGHEST = -100, 100  # the grid's exponents: ranges from 2**-100 to 2**100 (1.3e30); beyond, the edge bins
EARLY = frozenset(round(2 ** (k / 2)) for k in range(21))  # columns after which a move checks GPU auto ranges


def _denominator(bins: int) -> int:
    return bins + bins % 2


def grid_binning(bins: int, exponent: int, below: int, linthresh=None) -> Binning:
    "The auto binning of `bins` bins of width 2**exponent / W, `below` of them under zero."
    width = 2.0 ** exponent / _denominator(bins)
    low, high = -below * width, (bins - below) * width  # where the kernels bin (symlog'd, for symlog)
    if linthresh is not None:
        low, high = (float(np.sign(u) * np.expm1(abs(u)) * linthresh) for u in (low, high))
    return Binning(bins, low, high, linthresh, grid=(exponent, below))


def fitting(bins: int, low: float, high: float, linthresh=None, current: Binning = None) -> Binning:
    """The narrowest auto binning that holds the finite values [low, high] (activation units) and every
    bin of `current`: symmetric once any value was negative, one-sided before."""
    if linthresh is not None:
        low, high = float(symlog(low, linthresh)), float(symlog(high, linthresh))
    if current is not None:
        low, high = min(low, current.limits[0]), max(high, current.limits[1])
    below = bins // 2 if low < 0 or (current is not None and current.grid[1]) else 0
    exponent = LOWEST if current is None else current.grid[0]
    need = max(high * _denominator(bins) / (bins - below), -low * _denominator(bins) / below if below else 0.0)
    if need > 0:
        exponent = max(exponent, min(HIGHEST, math.ceil(math.log2(need))))
    elif current is None:
        exponent = 0  # an all-zero first output: [0, 1]
    binning = grid_binning(bins, exponent, below, linthresh)
    while exponent < HIGHEST and (binning.limits[0] > low or binning.limits[1] < high):  # log2's rounding
        exponent += 1
        binning = grid_binning(bins, exponent, below, linthresh)
    return binning  # one-sided to symmetric: the loop made it hold current's top, so at least twice as wide


def first(bins: int, low: float, high: float, linthresh=None) -> Binning:
    "The range of an auto layer's first output, whose finite values span [low, high]."
    return fitting(bins, low, high, linthresh)


def holding(bins: int, low: float, high: float, current: Binning) -> Binning:
    "A CPU output's finite values [low, high] fell outside `current`: the narrowest range that holds both."
    return fitting(bins, low, high, current.linthresh, current)


def at_move(current: Binning, counts: np.ndarray, neg_min: np.ndarray, maximum: np.ndarray, stats: bool) -> Binning:
    """At a move to the host, the moved rows' `counts` (rows, bins + 2) and extremes (-min, max per row;
    NaN or inf where unknown): `current` while nothing fell in the edge bins, else room for twice the
    extremes (activations are still growing, most likely), or one doubling without statistics (symmetric
    once anything fell under)."""
    under = counts[:, 0].sum()
    if not under + counts[:, -1].sum():
        return current
    low, high = -neg_min, maximum
    low, high = low[np.isfinite(low)], high[np.isfinite(high)]
    if stats and (low.size or high.size):
        return fitting(current.bins, 2 * min(low.min(initial=0.0), 0.0), 2 * max(high.max(initial=0.0), 0.0),
                       current.linthresh, current)
    return grid_binning(current.bins, current.grid[0] + 1, current.grid[1] or current.bins // 2 * bool(under),
                        current.linthresh)


def move_early(ended: int) -> bool:
    """Whether to move rows to the host after `ended` columns so that a GPU's auto ranges widen early: after
    1, 2, 3, 4, 6, 8, 11, 16 ... 1024 columns (powers of sqrt 2: 20 moves in a whole run)."""
    return ended in EARLY


def widest(bins: int, grid, linthresh=None) -> Binning:
    "Distributed: the range every rank takes, the widest of theirs (`grid`: (exponent, below), agreed)."
    return grid_binning(bins, *grid, linthresh)


def remap(old: Binning, new: Binning) -> np.ndarray:
    "For each of `old`'s bins + 2 counts (under, bins, over), its index in `new`'s: where `regrid` adds it."
    (old_exponent, old_below), (new_exponent, new_below) = old.grid, new.grid
    doublings = new_exponent - old_exponent
    if doublings < 0 or (new_below != old_below and doublings < 1):
        raise ValueError(f"regrid: {new} does not hold every bin of {old}")
    k = np.arange(old.bins) - old_below  # each old bin, counted from zero
    index = np.concatenate([[0], (k >> doublings) + new_below + 1, [new.bins + 1]])
    if not (1 <= index[1:-1]).all() or not (index[1:-1] <= new.bins).all():
        raise ValueError(f"regrid: {new} does not hold every bin of {old}")
    return index


def regrid(counts: np.ndarray, old: Binning, new: Binning) -> np.ndarray:
    "`counts` (..., bins + 2) recorded with `old`, as `new` counts them: exact, by `remap`."
    if old == new:
        return counts
    merged = np.zeros(counts.shape[:-1] + (new.bins + 2,), dtype=counts.dtype)
    np.add.at(merged, (..., remap(old, new)), counts)
    return merged
