"""The recorded buffer's layout by name and a layer's binning (the options are checked in `options.py`).

Every layer's buffer holds, per column (batch): `bins + 2` counts (underflow, the bins, overflow; NaN
is in none, so `numel - counts.sum()` is the NaN count) and the MOMENTS row below. The host counts,
per column and layer, the SIZES. Nothing here imports torch: the host side reads the same names.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["MOMENTS", "SUMS", "EXTREMES", "SUM", "SUM_SQ", "NEAR_ZERO", "DEAD", "NEG_MIN", "MAX", "SIZES", "NUMEL",
           "CHANNELS", "SAMPLED", "Binning", "bin_edges", "symlog", "symlog_inverse"]

# One moments row: four sums that add up (across calls, chunks, ranks and merged columns), then the
# extremes, which merge with a maximum (the minimum is kept negated for that).
MOMENTS = ("sum", "sum_sq", "near_zero", "dead", "neg_min", "max")
SUM, SUM_SQ, NEAR_ZERO, DEAD, NEG_MIN, MAX = range(len(MOMENTS))
SUMS, EXTREMES = slice(SUM, DEAD + 1), slice(NEG_MIN, MAX + 1)

# What the host counts per column and layer, without reading the device: values the layer output,
# units its dead-unit rate is over, values histogrammed (fewer than numel when sampled).
SIZES = ("numel", "channels", "sampled")
NUMEL, CHANNELS, SAMPLED = range(len(SIZES))


def symlog(x, linthresh: float):
    "sign(x) * log1p(|x| / linthresh): near-linear around 0, logarithmic far out."
    return np.sign(x) * np.log1p(np.abs(x) / linthresh)


def symlog_inverse(u, linthresh: float):
    "The activation value whose `symlog` is `u`."
    return np.sign(u) * np.expm1(np.abs(u)) * linthresh


def bin_edges(low: float, high: float, bins: int, linthresh=None) -> np.ndarray:
    "The bins + 1 edges over [low, high]: uniform, or uniform in `symlog` when `linthresh` is given."
    if linthresh is None:
        return np.linspace(low, high, bins + 1)
    edges = symlog_inverse(np.linspace(symlog(low, linthresh), symlog(high, linthresh), bins + 1), linthresh)
    edges[0], edges[-1] = low, high  # exact ends, whatever the round trip does
    return edges


@dataclass(frozen=True)
class Binning:
    "How one layer's values are binned: `bins` bins over [low, high], uniform or uniform in symlog."
    bins: int
    low: float                 # in activation units
    high: float
    linthresh: float = None    # symlog's threshold, or None: linear bins
    grid: tuple = None         # range="auto": (exponent, bins below zero) on the grid of `colordim.engine.ranges`

    @property
    def limits(self) -> tuple[float, float]:
        "(low, high) where the kernels bin: symlog'd when the scale is symlog (exact on an auto grid)."
        if self.grid is not None:
            exponent, below = self.grid
            width = 2.0 ** exponent / (self.bins + self.bins % 2)
            return -below * width, (self.bins - below) * width
        if self.linthresh is None:
            return self.low, self.high
        return float(symlog(self.low, self.linthresh)), float(symlog(self.high, self.linthresh))

    def edges(self) -> np.ndarray:
        "The bins + 1 edges in activation units (an auto grid's: exact multiples of its width, 0 among them)."
        if self.grid is None:
            return bin_edges(self.low, self.high, self.bins, self.linthresh)
        low, high = self.limits
        edges = np.arange(self.bins + 1) * ((high - low) / self.bins) + low
        edges[-1] = high
        return edges if self.linthresh is None else symlog_inverse(edges, self.linthresh)
