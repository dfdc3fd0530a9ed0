"""Every option a user gives colordim, checked before the first batch, with an error that names the option
and says what would be valid. The recorder, the callback, the plain loop and the figures all check here.
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["THRESHOLDS", "check_thresholds", "PHASES", "CHANNELS", "FEATURES", "RULES", "check_bins", "check_range", "check_near_zero", "check_scale",
           "check_sample", "check_count", "check_bytes", "check_max_columns", "check_phase", "check_units",
           "check_rule", "check_show", "STREAMS", "check_streams", "param_streams"]

PHASES = ("train", "valid")
CHANNELS, FEATURES = "channels", "features"  # where a layer's units are: dim 1 / the last dim (`engine/units.py`)
RULES = (CHANNELS, FEATURES)
STREAMS = ("param", "param_grad", "update")  # what an optimizer step records per parameter (`engine/steps.py`)
# `colordim.diagnose`'s thresholds, and their defaults
THRESHOLDS = {
    "tail": 0.1,        # dead units and near-zero share are read over this last share of training batches
    "dead": 0.05,       # ReLU-like layers: a share of dead units above this is a finding
    "near_zero": 0.9,   # a share of values with |x| <= the recording's near-zero threshold above this
    "outside": 0.01,    # a share of values below or above the range (training batches) above this
    "jitter": 0.25,     # std of the batch-to-batch change of log(std) over the last epoch above this
    "massive": 100.0,   # massive activations: a largest |value| at least this ...
    "massive_ratio": 1000.0,  # ... and at least this many times the median |value|, in a training batch
    "outliers": 0.001,  # heavy tails: a share of values beyond 6 standard deviations above this (the tail)
    "growth": 10.0,     # a block's RMS over its stack's first block's above this (the tail)
    "blowup": 100.0,    # a layer's RMS in a training batch over its median in the 10 before above this
    "saturated": 0.1,   # a tanh's or sigmoid's share of values in its flat ends above this (the tail)
    "update_high": 1e-2,  # a parameter's median RMS(update) / RMS(weights) over the last steps above this
    "update_low": 1e-5,   # ... or below this (a frozen parameter, 0, is not a finding)
    "grad_dead": 0.05,  # a weight's share of output units with an exactly zero gradient in a step above this
}


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


def check_phase(phase: str) -> str:
    "`phase` as given, or a ValueError that names the phases."
    if phase not in PHASES:
        raise ValueError(f"phase: {phase!r} is not a phase; use one of {PHASES}")
    return phase


def check_units(units):
    "`units` as given, if it is a valid option (whether its names match layers is checked with the model)."
    if units is None or isinstance(units, str) and units == "auto":
        return units
    if isinstance(units, str):
        return check_rule("units", units)
    if not isinstance(units, dict):
        raise ValueError(f"units: expected 'auto', 'channels', 'features' or a dict {{layer name or pattern: "
                         f"'channels' | 'features'}}, got {units!r}")
    for spec, rule in units.items():
        check_rule(f"units[{spec!r}]", rule)
    return units


def check_rule(argument: str, rule) -> str:
    "`rule` as given, if it is CHANNELS or FEATURES; else a ValueError that says what they mean."
    if rule not in RULES:
        raise ValueError(f"{argument}: expected 'channels' (units in dim 1, as a convolution's) or 'features' "
                         f"(units in the last dim, as a Linear's), got {rule!r}")
    return rule


def check_show(show):
    "`show` as given: False, True (each epoch) or a number of batches >= 1."
    if not (isinstance(show, bool) or isinstance(show, int) and show >= 1):
        raise ValueError(f"show: {show!r} is not valid; use True (after each epoch), False, or a number of "
                         "batches >= 1 (also every that many batches)")
    return show


def check_thresholds(thresholds: dict) -> dict:
    "`diagnose`'s thresholds as given: each a number >= 0, `tail` a share in (0, 1]; else a ValueError naming it."
    for name, value in thresholds.items():
        if not (isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0 and (name != "tail" or 0 < value <= 1)):
            valid = "a share in (0, 1]" if name == "tail" else "a number >= 0"
            raise ValueError(f"{name}: {value!r} is not a threshold; use {valid}")
    return thresholds


def check_streams(streams, params) -> tuple:
    "`streams` as a tuple of STREAMS in their order, if valid; they need `params` to record."
    streams = (streams,) if isinstance(streams, str) else tuple(streams or ())
    unknown = [stream for stream in streams if stream not in STREAMS]
    if unknown:
        raise ValueError(f"streams: {unknown!r} {'is' if len(unknown) == 1 else 'are'} not a stream; use some of {STREAMS}")
    if streams and not params:
        raise ValueError(f"streams: {streams!r} need parameters to record; pass params={{name: (parameter, type)}}")
    return tuple(stream for stream in STREAMS if stream in streams)


def param_streams(params, param_grads, updates) -> tuple:
    """The STREAMS that `params=`, `param_grads=` and `updates=` ask for. `params`: False, True or a spec of
    layers or parameter names (checked with the model); `updates` records the weights too, the update-to-weight
    ratio's denominator."""
    for name, value in (("param_grads", param_grads), ("updates", updates)):
        if not isinstance(value, bool):
            raise ValueError(f"{name}: {value!r} is not valid; use True or False")
    if params is None or isinstance(params, (list, tuple)) and not params:
        raise ValueError(f"params: {params!r} is not valid; use True (the recorded layers' parameters), False, "
                         "layers as in `layers=`, or names from model.named_parameters()")
    wanted = {"param": params is not False or updates, "param_grad": param_grads, "update": updates}
    return tuple(stream for stream in STREAMS if wanted[stream])
