"""The recorded buffer's layout by name, a layer's binning, and the recorder's options checked up front.

Every layer's buffer holds, per column (batch): `bins + 2` counts (underflow, the bins, overflow; NaN
is in none, so `numel - counts.sum()` is the NaN count) and the MOMENTS row below. The host counts,
per column and layer, the SIZES. Nothing here imports torch: the host side reads the same names.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["MOMENTS", "SUMS", "EXTREMES", "SUM", "SUM_SQ", "NEAR_ZERO", "DEAD", "NEG_MIN", "MAX", "SIZES", "NUMEL",
           "CHANNELS", "SAMPLED", "Binning", "bin_edges", "symlog", "symlog_inverse", "readable_bound",
           "check_bins", "check_range", "check_near_zero", "check_scale", "check_sample", "check_max_columns",
           "check_count", "check_bytes"]

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


def readable_bound(value: float) -> float:
    "The smallest of 1, 2, 2.5, 5 times a power of ten that is >= `value` (> 0)."
    exponent = np.floor(np.log10(value))
    for mantissa in (1, 2, 2.5, 5, 10):
        if mantissa * 10 ** exponent >= value * (1 - 1e-12):
            return float(mantissa * 10 ** exponent)


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


# --- options, checked before the first batch, with errors that say what would be valid -------------
def check_bins(bins) -> int:
    "`bins` as an int >= 1, or a ValueError that says so."
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 1:
        raise ValueError(f"bins: expected an int >= 1 (rows of the picture, e.g. 100), got {bins!r}")
    return int(bins)


def check_range(value, auto=True):
    "`range` as finite floats (low, high) with low < high (or 'auto'), or a ValueError that says so."
    if auto and isinstance(value, str) and value == "auto":
        return "auto"
    try:
        low, high = (float(end) for end in value)
    except (TypeError, ValueError):
        raise ValueError(f"range: expected two numbers (low, high) such as (-10, 10), or 'auto', "
                         f"got {value!r}") from None
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ValueError(f"range: expected finite low < high, such as (-10, 10), got {value!r}")
    return low, high


def check_near_zero(value) -> float:
    "`near_zero` as a finite float >= 0, or a ValueError that says so."
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)) \
            or not math.isfinite(value) or value < 0:
        raise ValueError(f"near_zero: expected a finite number >= 0 such as 0.05, got {value!r}")
    return float(value)


def check_scale(scale, linthresh) -> float:
    "The symlog threshold for scale='symlog', None for 'linear', or a ValueError that says so."
    if scale not in ("linear", "symlog"):
        raise ValueError(f"scale: expected 'linear' or 'symlog', got {scale!r}")
    if isinstance(linthresh, bool) or not isinstance(linthresh, (int, float, np.integer, np.floating)) \
            or not math.isfinite(linthresh) or linthresh <= 0:
        raise ValueError(f"linthresh: expected a finite number > 0 such as 1.0, got {linthresh!r}")
    return float(linthresh) if scale == "symlog" else None


def check_sample(value):
    "`sample` as None or an int >= 1, or a ValueError that says so."
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"sample: expected None (exact) or an int >= 1 such as 4096, got {value!r}")
    return int(value)


def check_count(name: str, value, example: int) -> int:
    "`value` as an int >= 1, or a ValueError that names the option."
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name}: expected an int >= 1 such as {example}, got {value!r}")
    return int(value)


def check_bytes(name: str, value) -> int:
    "A memory budget as an int of bytes >= 1 MiB, or a ValueError that names the option."
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 2 ** 20:
        raise ValueError(f"{name}: expected a number of bytes >= 2**20 (1 MiB) such as 64 * 2**20, got {value!r}")
    return int(value)


def check_max_columns(value) -> int:
    "`max_columns` as an int >= 2, or a ValueError that says so."
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 2:
        raise ValueError(f"max_columns: expected an int >= 2 such as 10000, got {value!r}")
    return int(value)
