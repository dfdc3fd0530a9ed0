"""Checking the recorder's arguments up front, with errors that say what would be valid."""
from __future__ import annotations

import math

import numpy as np

from .recording import readable_bound

__all__ = ["check_bins", "check_range", "check_near_zero", "check_scale", "check_sample", "check_max_columns",
           "auto_range"]


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


def auto_range(finite_abs_max: float) -> tuple[float, float]:
    "A symmetric range padded 10% past `finite_abs_max` and rounded to 1, 2, 2.5 or 5 times a power of 10."
    bound = readable_bound(1.1 * finite_abs_max) if finite_abs_max > 0 else 1.0
    return -bound, bound


def check_sample(value):
    "`sample` as None or an int >= 1, or a ValueError that says so."
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"sample: expected None (exact) or an int >= 1 such as 4096, got {value!r}")
    return int(value)


def check_max_columns(value) -> int:
    "`max_columns` as an int >= 2, or a ValueError that says so."
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 2:
        raise ValueError(f"max_columns: expected an int >= 2 such as 10000, got {value!r}")
    return int(value)
