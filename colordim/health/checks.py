"""The checks: per-layer health figures and findings in plain words, from a Recording alone (`diagnose`).

Every figure comes from what was recorded (counts, moments, columns), so a saved run gets the same
verdict as a live one. Thresholds are arguments of `diagnose`, with the defaults in `THRESHOLDS`.
"""
from __future__ import annotations

import math

import numpy as np

from ..data.options import STREAMS, THRESHOLDS, check_thresholds
from ..data.recording import Recording
from .report import Finding, Report
from .scale_checks import SIGMAS, blowup, growth, massive_ratio, share_beyond, stacks
from .step_checks import grad_dead_findings, saturation_findings, update_findings

__all__ = ["diagnose", "THRESHOLDS"]


def diagnose(recording: Recording, tail: float = THRESHOLDS["tail"], dead: float = THRESHOLDS["dead"],
             near_zero: float = THRESHOLDS["near_zero"], outside: float = THRESHOLDS["outside"],
             jitter: float = THRESHOLDS["jitter"], massive: float = THRESHOLDS["massive"],
             massive_ratio: float = THRESHOLDS["massive_ratio"], outliers: float = THRESHOLDS["outliers"],
             growth: float = THRESHOLDS["growth"], blowup: float = THRESHOLDS["blowup"],
             saturated: float = THRESHOLDS["saturated"], update_high: float = THRESHOLDS["update_high"],
             update_low: float = THRESHOLDS["update_low"], grad_dead: float = THRESHOLDS["grad_dead"]) -> Report:
    """Health figures and findings for each layer of `recording` (its activations). Thresholds:
    `tail` last share of training batches read for dead units, near zero, outliers and growth (0.1);
    `dead` share of dead units of a ReLU-like layer (0.05); `near_zero` share of values near zero (0.9);
    `outside` share of values beyond an end of the range (0.01); `jitter` std of the batch-to-batch
    change in log(std) over the last epoch (0.25); `massive` and `massive_ratio`: a largest |value| at
    least this big (100) and this many times the median |value| (1000) in a training batch; `outliers`
    share of values beyond 6 standard deviations (0.001); `growth` RMS of a block over its stack's first
    block (10; a stack: `blocks.0`, `blocks.1`, ... of one shape); `blowup` RMS of a layer in a training
    batch over its median in the 10 training batches before (100: where a run diverged); `saturated` share of a
    tanh's or sigmoid's values in its flat ends (0.1, the tail). With the parameters' streams recorded:
    `update_high` and `update_low`, a parameter's median RMS(update) / RMS(weights) over the tail of its steps
    above 1e-2 or below 1e-5; `grad_dead` share of a weight's output units whose gradient is exactly zero in a
    step (0.05, the tail). A finding means a figure above its threshold (below, for `update_low`;
    `colordim.health.scale_checks` and `colordim.health.step_checks` say how the others are read)."""
    if not isinstance(recording, Recording):
        raise TypeError(f"recording: expected a colordim Recording, got {type(recording).__name__}")
    thresholds = dict(tail=tail, dead=dead, near_zero=near_zero, outside=outside, jitter=jitter, massive=massive,
                      massive_ratio=massive_ratio, outliers=outliers, growth=growth, blowup=blowup,
                      saturated=saturated, update_high=update_high, update_low=update_low, grad_dead=grad_dead)
    check_thresholds(thresholds)
    columns = _Window(recording, tail)
    rows, findings = [], []
    for name in recording.layer_names:
        row = _figures(recording, name, columns)
        rows.append(row)
        findings += _findings(recording, name, row, thresholds) + _scale_findings(recording, name, row, columns,
                                                                                  thresholds)
    findings += _growth(recording, columns, thresholds)
    findings += saturation_findings(recording, columns.tail, columns.tail_weights, saturated)
    parameters = update_findings(recording, tail, update_high, update_low) + grad_dead_findings(recording, tail, grad_dead)
    return Report(rows, _origin(recording) + _blowup(recording, columns, blowup) + findings + parameters, thresholds,
                  columns=len(recording), parameters=_parameters(recording))


def _parameters(recording: Recording) -> list:
    "The names of the parameters whose steps were recorded (in any of the parameter kinds)."
    kinds = [kind for kind in recording.kinds if kind in STREAMS]
    return list(dict.fromkeys(name for kind in kinds for name in recording.kind(kind).layer_names))


def _blowup(recording: Recording, columns: "_Window", limit: float) -> list:
    """Where the run's scale blew up: the first training batch where a layer's RMS passed `limit` times its
    median over the batches just before, and in it the first such layer in the model's order."""
    ratios = {name: blowup(recording, name, columns.train) for name in recording.layer_names}
    with np.errstate(invalid="ignore"):
        above = {name: ratio > limit for name, ratio in ratios.items()}
    if not any(mask.any() for mask in above.values()):
        return []
    column = min(int(np.argmax(mask)) for mask in above.values() if mask.any())
    name = next(name for name in recording.layer_names if above[name][column])
    others = sum(bool(mask.any()) for mask in above.values()) - 1
    return [Finding(name, "blowup", float(np.nanmax(ratios[name])), limit,
                    f"the run blew up here: at {_first(recording, above[name])} this layer's RMS passed {limit:g} "
                    f"times its median over the 10 training batches before (up to {np.nanmax(ratios[name]):.3g} "
                    f"times), the first layer in the model's order to do so ({others} other layer"
                    f"{'s' if others != 1 else ''} did later or then)",
                    "lower the learning rate at and before that batch (a spike in the schedule?), warm it up, "
                    "or clip gradients")]


def _scale_findings(recording: Recording, name: str, row: dict, columns: "_Window", limits: dict) -> list:
    """Massive activations (any training batch) and heavy tails (the tail of training) in one layer; not
    heavy tails where the values are one-sided (ReLU-like): a mostly-zero output's std is no scale for them."""
    found = []
    train = columns.train
    largest, ratio = massive_ratio(recording, name)
    hits = np.zeros(len(recording), bool)
    with np.errstate(invalid="ignore"):
        hits[train] = (largest[train] >= limits["massive"]) & (ratio[train] >= limits["massive_ratio"])
    if hits.any():
        worst = int(np.flatnonzero(hits)[np.nanargmax(ratio[hits])])
        found.append(Finding(name, "massive", float(ratio[worst]), limits["massive_ratio"],
                             f"massive activations: values up to {largest[worst]:.3g}, {ratio[worst]:.0f} times the "
                             f"median |value| (healthy: below {limits['massive']:g} or {limits['massive_ratio']:g} "
                             f"times), first at {_first(recording, hits)}",
                             "a few units carry huge values (they break fp16 and quantisation): look at this layer's "
                             "input and weights there; lower the learning rate or clip gradients"))
    shares = share_beyond(recording, name)
    share = _tail_mean(shares, columns)
    if share > limits["outliers"] and not row["relu_like"]:
        above = np.zeros(len(recording), bool)
        above[train] = shares[train] > limits["outliers"]
        found.append(Finding(name, "outliers", share, limits["outliers"],
                             f"heavy tails: {_percent(share)} of values lie beyond {SIGMAS} standard deviations over "
                             f"the last {limits['tail']:.0%} of training batches (normal: 2e-9; healthy: below "
                             f"{limits['outliers']:.1%}), first above at {_first(recording, above)}",
                             "outlier features: check the norms before this layer; lower the learning rate"))
    return found


def _growth(recording: Recording, columns: "_Window", limits: dict) -> list:
    "Blocks of a stack whose RMS grew past `growth` times the first block's, over the tail of training."
    found = []
    for stack in stacks(recording):
        ratios = growth(recording, stack)
        for index, name in enumerate(stack[1:], start=1):
            ratio = _tail_mean(ratios[:, index], columns)
            if ratio > limits["growth"]:
                above = np.zeros(len(recording), bool)
                above[columns.train] = ratios[columns.train, index] > limits["growth"]
                found.append(Finding(name, "growth", ratio, limits["growth"],
                                     f"the scale grows with depth: RMS {ratio:.1f} times `{stack[0]}`'s over the last "
                                     f"{limits['tail']:.0%} of training batches (healthy: below {limits['growth']:g}), "
                                     f"first above at {_first(recording, above)}",
                                     "the residual stream blows up: lower the learning rate, scale the residual "
                                     "branches down at init, or normalise the blocks' outputs"))
                break  # the first block past it says where; later ones follow from it
    return found


def _origin(recording: Recording) -> list:
    """Where the first NaN or Inf of the run came out, when several layers had one: the first batch with
    any, and in it the first layer in the model's order (the layers before it were finite there)."""
    broken = {name: (recording.nan[name] > 0) | (recording.max[name] == np.inf) | (recording.min[name] == -np.inf)
              for name in recording.layer_names}
    if sum(bool(mask.any()) for mask in broken.values()) < 2:
        return []  # one layer's own finding says where
    column = min(int(np.argmax(mask)) for mask in broken.values() if mask.any())
    name = next(name for name in recording.layer_names if broken[name][column])
    later = sum(bool(mask[column]) for mask in broken.values()) - 1
    return [Finding(name, "origin", 1, 0,
                    f"the run's first NaN or Inf came out of this layer, at {_first(recording, broken[name])}, "
                    f"the first layer in the model's order to output one then ({later} later layer"
                    f"{'s' if later != 1 else ''} did too)",
                    "look at this layer's input and weights in that batch; lower the learning rate or clip gradients")]


class _Window:
    "The columns each figure reads (a window of the run): training ones (all, when none is), their tail, the last epoch's."
    def __init__(self, recording: Recording, tail: float):
        train = np.flatnonzero(recording.phase == "train")
        self.train = train if len(train) else np.arange(len(recording))
        weights = recording.batches[self.train]  # a merged column (max_columns) stands for several batches
        wanted = max(1, math.ceil(tail * weights.sum()))  # batches in the tail, at least one
        count = int(np.searchsorted(np.cumsum(weights[::-1]), wanted)) + 1 if len(weights) else 0
        self.tail = self.train[len(self.train) - count:]
        self.tail_weights = recording.batches[self.tail].astype(float)
        if len(self.train):
            last = (recording.fit[self.train] == recording.fit[self.train[-1]]) & \
                   (recording.epoch[self.train] == recording.epoch[self.train[-1]])
            self.last_epoch = self.train[last]
        else:
            self.last_epoch = self.train


def _tail_mean(values: np.ndarray, columns: _Window) -> float:
    picked, weights = values[columns.tail], columns.tail_weights
    ok = ~np.isnan(picked)
    return float(np.average(picked[ok], weights=weights[ok])) if ok.any() else math.nan


def _share(counts: np.ndarray, numel: np.ndarray) -> float:
    total = numel.sum()
    return float(counts.sum() / total) if total else math.nan


def _figures(recording: Recording, name: str, columns: _Window) -> dict:
    "One layer's row of the table."
    train = columns.train
    std = recording.std[name][columns.last_epoch]
    with np.errstate(divide="ignore", invalid="ignore"):
        change = np.diff(np.log(std))
    change = change[np.isfinite(change)]
    minimum = recording.min[name][train]
    nan = recording.nan[name] > 0
    inf = (recording.max[name] == np.inf) | (recording.min[name] == -np.inf)
    return dict(
        layer=name, type=recording.types.get(name, ""), shape=tuple(recording.shapes.get(name, ())),
        dead=_tail_mean(recording.dead_rate[name], columns),
        near_zero=_tail_mean(recording.near_zero[name], columns),
        below=_share(recording.underflow[name][train], recording.numel[name][train]),
        above=_share(recording.overflow[name][train], recording.numel[name][train]),
        nan_batches=int(nan.sum()), inf_batches=int(inf.sum()),
        jitter=float(np.std(change)) if len(change) >= 2 else math.nan,
        relu_like=bool(len(minimum) and np.nanmin(minimum, initial=np.inf) >= 0),
        first_nan=_first(recording, nan), first_inf=_first(recording, inf),
        range=recording.range(name), auto=recording.auto.get(name, False),
        units=recording.units.get(name, "channels"),  # what a dead unit is one of: channels or features
    )


def _first(recording: Recording, mask: np.ndarray):
    "Where `mask` is first true: 'epoch E, batch B' (and fit, phase when they say more), or None."
    hits = np.flatnonzero(mask)
    if not len(hits):
        return None
    column = hits[0]
    where = f"epoch {recording.epoch[column]}, {recording.phase[column]} batch {recording.iteration[column]}"
    return where if recording.fit.max(initial=0) == 0 else f"fit {recording.fit[column]}, {where}"


def _findings(recording: Recording, name: str, row: dict, limits: dict) -> list:
    "The findings about one layer, most serious first."
    found, tail = [], f"the last {limits['tail']:.0%} of training batches"
    if len(recording) and not recording.numel[name].sum():
        reason = recording.skipped.get(name)
        return [Finding(name, "silent", 0, 0, f"nothing recorded: {reason}" if reason else
                        "nothing recorded: the layer never ran in a recorded batch",
                        "check that the model's forward uses it, or choose another layer")]
    for check, label in (("nan", "NaN"), ("inf", "Inf")):
        batches = row[f"{check}_batches"]
        if batches:
            found.append(Finding(name, check, batches, 0,
                                 f"{label} in {batches} batch{'es' if batches > 1 else ''}, first at {row[f'first_{check}']}",
                                 "lower the learning rate, clip gradients, or look for it in the inputs and the loss"))
    if row["relu_like"] and row["dead"] > limits["dead"]:
        found.append(Finding(name, "dead", row["dead"], limits["dead"],
                             f"{row['dead']:.0%} of {row['units']} output "
                             f"nothing over {tail} (healthy: below "
                             f"{limits['dead']:.0%})", "lower the learning rate or add normalisation"))
    elif row["near_zero"] > limits["near_zero"] and row["type"] not in PROBABILITIES:
        threshold = recording.near_zero_threshold
        found.append(Finding(name, "near_zero", row["near_zero"], limits["near_zero"],
                             f"{row['near_zero']:.0%} of values within +-{threshold:g} of zero over {tail} "
                             f"(healthy: below {limits['near_zero']:.0%})",
                             "check the initialisation and the learning rate; add normalisation"))
    low, high = row["range"]
    for check, end, word in (("below", low, "bottom"), ("above", high, "top")):
        if row[check] > limits["outside"]:
            found.append(Finding(name, check, row[check], limits["outside"],
                                 f"{_percent(row[check])} of values {check} {end:g}, the {word} of `range` "
                                 f"(healthy: below {limits['outside']:.0%})", _outside_advice(row)))
    silent = any(finding.check in ("dead", "near_zero") for finding in found)  # no scale to speak of
    if row["jitter"] > limits["jitter"] and not silent:
        found.append(Finding(name, "jitter", row["jitter"], limits["jitter"],
                             f"the output's scale jumps from batch to batch: log(std) changes by "
                             f"{row['jitter']:.2f} (std of the change) over the last epoch (healthy: below "
                             f"{limits['jitter']:g})", "lower the learning rate, warm it up (fit_one_cycle), "
                             "or add normalisation"))
    return found


# outputs that are probabilities (attention's): most of them near zero is what they are, not a fault
PROBABILITIES = ("Softmax", "softmax", "Softmin", "Sigmoid", "sigmoid")


def _outside_advice(row: dict) -> str:
    "What to do about values outside the range: a fixed one can be widened; an auto one widened itself."
    if not row["auto"]:
        return 'widen `range` or use `range="auto"`'
    return ("the auto range widened after these batches (on a GPU it widens when batches move to the host), "
            "or the values are infinite or beyond 2**100: look for a blow-up")


def _percent(share: float) -> str:
    return f"{100 * share:.0f}%" if share >= 0.1 else f"{100 * share:.1f}%"
