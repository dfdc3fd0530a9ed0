"""The checks that read the optimizer's steps and bounded activations: updates too large or too small for
their weights, saturated tanh and sigmoid layers, and units whose weights get no gradient.

- Updates: per parameter, the median of RMS(update) / RMS(weights) over the last `tail` of its training
  steps. About 1e-3 is healthy (CS231n, makemore); above `update_high` the learning rate is too high for
  it, below `update_low` too low. A parameter that did not move at all (frozen) is not a finding.
- Saturation: the share of a bounded activation's values in its flat ends, from its histogram: |x| > 0.97
  for tanh and hardtanh (makemore's measure), below 0.015 or above 0.985 for sigmoids (the same points:
  tanh(x) = 2 sigmoid(2x) - 1). Where a bin straddles the cut, its counts are shared in proportion to its
  width: exact to a bin's width (with the default range of (-10, 10) and 100 bins, a saturated tanh's
  values pile up at the end of a 0.2-wide bin and the share reads low: `range="auto"` bins a tanh 0.02 wide).
- Dead units by gradient (monitorch): the share of a weight's rows (its output units) whose gradient is
  exactly zero for a whole step, over the tail of steps; not embeddings, whose rows of unused tokens get
  none by design, nor 1-d parameters.
"""
from __future__ import annotations

import math

import numpy as np

from ..data.recording import Recording
from .report import Finding

__all__ = ["median_update_ratios", "update_findings", "saturation", "saturation_findings", "grad_dead_findings", "BOUNDED"]

# the class names of bounded activations, and their flat ends: values below `low` or above `high`
BOUNDED = {"Tanh": (-0.97, 0.97), "Hardtanh": (-0.97, 0.97), "Sigmoid": (0.015, 0.985), "Hardsigmoid": (0.015, 0.985),
           "tanh": (-0.97, 0.97), "sigmoid": (0.015, 0.985)}  # lower case: functional calls (`F.tanh`)
_EMBEDDINGS = ("Embedding", "EmbeddingBag")


def _tail_steps(part: Recording, tail: float) -> np.ndarray:
    "The last `tail` share (at least one) of the training columns that hold a step."
    steps = np.flatnonzero(part.step_columns & (part.phase == "train"))
    return steps[len(steps) - max(1, math.ceil(tail * len(steps))):] if len(steps) else steps


def median_update_ratios(recording: Recording, tail: float) -> dict:
    """{parameter: its median RMS(update) / RMS(weights) over the last `tail` of its training steps}: NaN with no
    step, 0 for a parameter that did not move (frozen); {} without updates=True. What the verdict reads."""
    if recording.updates is None or recording.params is None:
        return {}
    columns, ratios, medians = _tail_steps(recording.updates, tail), recording.update_ratio, {}
    for name in recording.updates.layer_names:
        values = ratios[name][columns]
        values = values[np.isfinite(values)]
        medians[name] = float(np.median(values)) if len(values) else math.nan
    return medians


def update_findings(recording: Recording, tail: float, high: float, low: float) -> list:
    "Parameters whose updates are too large or too small for their weights (needs updates=True)."
    found = []
    for name, ratio in median_update_ratios(recording, tail).items():
        if math.isnan(ratio) or ratio == 0:  # no step, or a frozen parameter
            continue
        if ratio > high or ratio < low:
            large = ratio > high
            found.append(Finding(
                name, "update_large" if large else "update_small", ratio, high if large else low,
                f"each step changes these weights by {ratio:.1e} of their size (median RMS(update) / RMS(weights) "
                f"over the last {tail:.0%} of steps; healthy: about 1e-3, between {low:g} and {high:g})",
                "the learning rate is too high for it: lower it (or this group's), warm it up, or clip gradients"
                if large else "the learning rate is too low for it (raise it, or this group's), or its gradient is "
                "almost zero: a bias just before a normalisation layer learns nothing (make it bias=False), a "
                "path that the loss does not reach"))
    return found


def saturation(recording: Recording, name: str) -> np.ndarray:
    "Per column, the share of `name`'s values in its flat ends (NaN for a layer that is not a bounded activation)."
    ends = BOUNDED.get(recording.types.get(name, ""))
    if ends is None:
        return np.full(len(recording), np.nan)
    edges, counts = recording.edges[name], recording.counts[name].astype(float)
    low, high = ends
    below = counts[:, 0] + counts[:, 1:-1] @ _share_of_bins(edges, -np.inf, low)
    above = counts[:, -1] + counts[:, 1:-1] @ _share_of_bins(edges, high, np.inf)
    with np.errstate(divide="ignore", invalid="ignore"):
        return (below + above) / recording.numel[name]


def _share_of_bins(edges: np.ndarray, start: float, stop: float) -> np.ndarray:
    "Per bin, the share of its width inside [start, stop] (values spread evenly over a bin)."
    widths = np.diff(edges)
    inside = np.clip(np.minimum(edges[1:], stop) - np.maximum(edges[:-1], start), 0, None)
    return np.where(widths > 0, inside / np.where(widths > 0, widths, 1), 0.0)


def saturation_findings(recording: Recording, columns: np.ndarray, weights: np.ndarray, limit: float) -> list:
    "Bounded activations with more than `limit` of their values in the flat ends over `columns` (the tail)."
    found = []
    for name in recording.layer_names:
        shares = saturation(recording, name)[columns]
        ok = np.isfinite(shares)
        if not ok.any():
            continue
        share = float(np.average(shares[ok], weights=weights[ok]))
        width = float(np.diff(recording.edges[name]).max())
        coarse = f" (read from bins {width:.2g} wide: record it with range='auto' for a sharper figure)" \
            if width > 0.05 else ""
        if share > limit:
            found.append(Finding(name, "saturated", share, limit,
                                 f"{share:.0%} of values in the flat ends ({_ends(recording.types[name])}) over the "
                                 f"last training batches{coarse} (healthy: below {limit:.0%}); there the gradient is "
                                 "almost zero and the units stop learning",
                                 "scale the weights before it down (gain 5/3 for tanh: "
                                 "nn.init.kaiming_normal_(w, nonlinearity='tanh')) or add normalisation before it"))
    return found


def _ends(kind: str) -> str:
    low, high = BOUNDED[kind]
    return f"|x| > {high:g}" if low == -high else f"below {low:g} or above {high:g}"


def grad_dead_findings(recording: Recording, tail: float, limit: float) -> list:
    "Weights more than `limit` of whose rows get an exactly zero gradient over the last steps (param_grads=True)."
    grads = recording.param_grads
    if grads is None:
        return []
    columns, found = _tail_steps(grads, tail), []
    for name in grads.layer_names:
        if len(grads.shapes.get(name, ())) < 2 or grads.types.get(name) in _EMBEDDINGS:
            continue
        rates = grads.dead_rate[name][columns]
        rates = rates[np.isfinite(rates)]
        share = float(rates.mean()) if len(rates) else math.nan
        if share > limit:
            found.append(Finding(name, "grad_dead", share, limit,
                                 f"{share:.0%} of its output units get an exactly zero gradient in a step, over the "
                                 f"last {tail:.0%} of steps (healthy: below {limit:.0%}): they no longer learn",
                                 "dead units: lower the learning rate, use a leaky activation, or re-initialise"))
    return found
