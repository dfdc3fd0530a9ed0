"""A verdict from a Recording alone: a table of per-layer health figures and findings in plain words.

Every figure comes from what was recorded (counts, moments, columns), so a saved run gets the same
verdict as a live one. Thresholds are arguments of `diagnose`, with the defaults in `THRESHOLDS`.
"""
from __future__ import annotations

import html
import math
import re
from dataclasses import dataclass, field

import numpy as np

from ..data.recording import Recording
from .scale_checks import SIGMAS, blowup, growth, massive_ratio, share_beyond, stacks

__all__ = ["diagnose", "Report", "Finding", "THRESHOLDS"]

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
}


@dataclass
class Finding:
    "One problem seen in one layer: what was measured, against which threshold, and what to try."
    layer: str
    check: str          # "origin", "silent", "nan", "inf", "dead", "near_zero", "below", "above", "jitter",
                        # "massive", "outliers" or "growth"
    value: float        # the figure measured
    threshold: float    # healthy is at or below this (for nan/inf: 0 batches)
    message: str        # what was seen, in plain words
    advice: str         # what to try

    def __str__(self) -> str:
        return f"`{self.layer}`: {self.message}; {self.advice}"

    def html(self) -> str:
        "The finding as HTML, `quoted` words as code."
        return re.sub(r"`([^`]*)`", r"<code>\1</code>", html.escape(str(self), quote=False))


# what a check says of its layers in the verdict line: (one layer, several)
VERDICTS = {"silent": ("recorded nothing", "recorded nothing"), "nan": ("outputs NaN", "output NaN"),
            "inf": ("outputs Inf", "output Inf"), "blowup": ("blew up first", "blew up first"),
            "dead": ("has dead units", "have dead units"), "near_zero": ("outputs mostly zeros", "output mostly zeros"),
            "below": ("clips", "clip"), "above": ("clips", "clip"), "jitter": ("jumps in scale", "jump in scale"),
            "massive": ("has massive activations", "have massive activations"),
            "outliers": ("has heavy tails", "have heavy tails"), "growth": ("grows with depth", "grow with depth")}
# the table's cell each check is about (a layer's row shows which figure is over its threshold)
CELLS = {"dead": "dead", "near_zero": "near_zero", "below": "below", "above": "above", "nan": "nan_batches",
         "inf": "inf_batches", "jitter": "jitter"}


def _listed(names: list) -> str:
    "`a`, `a and b`, `a, b and c`."
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


@dataclass
class Report:
    "Per-layer health figures (`rows`, one dict per layer) and `findings`; prints as a table, shows as HTML."
    rows: list
    findings: list
    thresholds: dict = field(default_factory=lambda: dict(THRESHOLDS))
    columns: int = 0    # columns (batches) the recording held

    COLUMNS = (("layer", "layer"), ("type", "type"), ("shape", "shape"), ("dead", "dead units"), ("near_zero", "near zero"),
               ("below", "below range"), ("above", "above range"), ("nan_batches", "NaN batches"),
               ("inf_batches", "Inf batches"), ("jitter", "jitter"))

    def findings_for(self, layer: str) -> list:
        "The findings about one layer."
        return [finding for finding in self.findings if finding.layer == layer]

    @property
    def healthy(self) -> bool:
        "True when nothing was found."
        return not self.findings

    @property
    def verdict(self) -> str:
        """The answer first, in one line: "All 5 layers healthy", or "3 of 5 layers unhealthy: 1, 2 and 3 have
        dead units; 4 clips" (layers grouped by what is wrong, most serious first: see VERDICTS)."""
        layers = len(self.rows)
        if not self.columns:
            return f"Nothing recorded yet ({layers} layer{'s' if layers != 1 else ''} hooked)"
        unhealthy = list(dict.fromkeys(finding.layer for finding in self.findings if finding.check != "origin"))
        if not unhealthy:
            return f"All {layers} layers healthy" if layers != 1 else "The layer is healthy"
        said = {}  # phrase -> layers, in the order findings come
        for finding in self.findings:
            layers_said = said.setdefault(VERDICTS.get(finding.check), [])
            if finding.layer not in layers_said:
                layers_said.append(finding.layer)
        said.pop(None, None)  # "origin": the layer's own NaN or Inf finding says it
        order = list(VERDICTS.values())  # most serious first
        parts = [f"{_listed(names)} {phrase[len(names) > 1]}"
                 for phrase, names in sorted(said.items(), key=lambda item: order.index(item[0]))]
        return f"{len(unhealthy)} of {layers} layer{'s' if layers != 1 else ''} unhealthy: " + "; ".join(parts)

    def over(self, row: dict) -> set:
        "The keys of `row`'s cells whose figure is over its threshold (a finding about them)."
        return {CELLS[finding.check] for finding in self.findings_for(row["layer"]) if finding.check in CELLS}

    def _cells(self, row) -> list[str]:
        "A row's cells as text; a layer that outputs negative values has no dead units to show (none is dead)."
        return [_format(key, row[key] if key != "dead" or row["relu_like"] else None) for key, _ in self.COLUMNS]

    def __str__(self) -> str:
        header = [title for _, title in self.COLUMNS]
        lines = [header] + [self._cells(row) for row in self.rows]
        widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
        table = ["  ".join(cell.ljust(width) if i < 3 else cell.rjust(width)
                           for i, (cell, width) in enumerate(zip(line, widths))) for line in lines]
        table.insert(1, "  ".join("-" * width for width in widths))
        table.insert(0, self.verdict + "\n")
        tail = self.thresholds["tail"]
        notes = [f"dead units and near zero: the last {tail:.0%} of training batches; jitter: the last epoch",
                 "Findings:" if self.findings else "Findings: none, every figure is within its threshold."
                 if self.columns else "Findings: none, nothing was recorded yet."]
        return "\n".join(table + [""] + notes + [f"  - {finding}" for finding in self.findings])

    __repr__ = __str__

    def _repr_html_(self) -> str:
        "In a notebook: the verdict, the table with the rows and cells of findings marked, the findings."
        table = self.table_html('class="colordim-report"', shade=True, inline=True)
        return f"{self.verdict_html()}{table}<p>Findings:</p>{self.findings_html('none')}"

    def verdict_html(self) -> str:
        "The verdict as a paragraph, green when healthy and orange when not."
        color = "#1b5e20" if self.healthy else "#bf360c"
        return (f'<p class="colordim-verdict" style="font-size:1.2em;font-weight:bold;color:{color}">'
                f"{html.escape(self.verdict)}</p>")

    def table_html(self, attributes: str = "", shade: bool = False, inline: bool = False, links: bool = False) -> str:
        """The table as HTML (`attributes` of its tag). `shade`: the rows of layers with findings get class
        'finding', and each cell over its threshold class 'over' (`inline`: styled in place, for a notebook
        with no page style); `links`: each layer name links to its section (`#layer-NAME`)."""
        head = "".join(f"<th>{html.escape(title)}</th>" for _, title in self.COLUMNS)
        rows = []
        for row in self.rows:
            found, over = bool(self.findings_for(row["layer"])), self.over(row)
            css = ' class="finding"' if shade and found else ""
            css += ' style="background:#fff3e0"' if shade and found and inline else ""
            cells = []
            for (key, _), cell in zip(self.COLUMNS, self._cells(row)):
                text = html.escape(cell)
                if links and key == "layer":
                    text = f'<a href="#{layer_anchor(row["layer"])}">{text}</a>'
                mark = ""
                if shade and key in over:  # the figure a finding is about
                    mark = ' class="over"' + (' style="background:#ffab91;font-weight:bold"' if inline else "")
                cells.append(f"<td{mark}>{text}</td>")
            rows.append(f"<tr{css}>" + "".join(cells) + "</tr>")
        return f'<table {attributes}><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'

    def findings_html(self, none: str, links: bool = False) -> str:
        "The findings as an HTML list (`none`: the one item when there is none; `links`: to each layer's section)."
        items = []
        for finding in self.findings:
            text = finding.html()
            if links:  # the layer's name, first in the finding, links to its section
                name = f"<code>{html.escape(finding.layer, quote=False)}</code>"
                text = text.replace(name, f'<a href="#{layer_anchor(finding.layer)}">{name}</a>', 1)
            items.append(f"<li>{text}</li>")
        return "<ul>" + ("".join(items) or f"<li>{html.escape(none)}</li>") + "</ul>"


def layer_anchor(name: str) -> str:
    "The HTML id of a layer's section: `layer-` and its name with anything but letters, digits, - and _ as _."
    return "layer-" + re.sub(r"[^A-Za-z0-9_-]", "_", name)


def _format(key, value) -> str:
    if key in ("layer", "type"):
        return str(value) or "-"
    if key == "shape":
        return "x".join(str(size) for size in value) if value else "-"
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if key in ("nan_batches", "inf_batches"):
        return str(value)
    if key == "jitter":
        return f"{value:.2f}"
    if value == 0 or value >= 0.001:
        return f"{100 * value:.1f}%"
    return f"{100 * value:.2f}%" if value >= 0.0001 else "<0.01%"


def diagnose(recording: Recording, tail: float = THRESHOLDS["tail"], dead: float = THRESHOLDS["dead"],
             near_zero: float = THRESHOLDS["near_zero"], outside: float = THRESHOLDS["outside"],
             jitter: float = THRESHOLDS["jitter"], massive: float = THRESHOLDS["massive"],
             massive_ratio: float = THRESHOLDS["massive_ratio"], outliers: float = THRESHOLDS["outliers"],
             growth: float = THRESHOLDS["growth"], blowup: float = THRESHOLDS["blowup"]) -> Report:
    """Health figures and findings for each layer of `recording` (its activations). Thresholds:
    `tail` last share of training batches read for dead units, near zero, outliers and growth (0.1);
    `dead` share of dead units of a ReLU-like layer (0.05); `near_zero` share of values near zero (0.9);
    `outside` share of values beyond an end of the range (0.01); `jitter` std of the batch-to-batch
    change in log(std) over the last epoch (0.25); `massive` and `massive_ratio`: a largest |value| at
    least this big (100) and this many times the median |value| (1000) in a training batch; `outliers`
    share of values beyond 6 standard deviations (0.001); `growth` RMS of a block over its stack's first
    block (10; a stack: `blocks.0`, `blocks.1`, ... of one shape); `blowup` RMS of a layer in a training
    batch over its median in the 10 training batches before (100: where a run diverged). A finding means a figure
    above its threshold (`colordim.health.scale_checks` says how the last five are read)."""
    if not isinstance(recording, Recording):
        raise TypeError(f"recording: expected a colordim Recording, got {type(recording).__name__}")
    thresholds = dict(tail=tail, dead=dead, near_zero=near_zero, outside=outside, jitter=jitter, massive=massive,
                      massive_ratio=massive_ratio, outliers=outliers, growth=growth, blowup=blowup)
    for name, value in thresholds.items():
        if not (isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0 and (name != "tail" or 0 < value <= 1)):
            valid = "a share in (0, 1]" if name == "tail" else "a number >= 0"
            raise ValueError(f"{name}: {value!r} is not a threshold; use {valid}")
    columns = _Window(recording, tail)
    rows, findings = [], []
    for name in recording.layer_names:
        row = _figures(recording, name, columns)
        rows.append(row)
        findings += _findings(recording, name, row, thresholds) + _scale_findings(recording, name, row, columns,
                                                                                  thresholds)
    findings += _growth(recording, columns, thresholds)
    return Report(rows, _origin(recording) + _blowup(recording, columns, blowup) + findings, thresholds,
                  columns=len(recording))


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
    elif row["near_zero"] > limits["near_zero"]:
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


def _outside_advice(row: dict) -> str:
    "What to do about values outside the range: a fixed one can be widened; an auto one widened itself."
    if not row["auto"]:
        return 'widen `range` or use `range="auto"`'
    return ("the auto range widened after these batches (on a GPU it widens when batches move to the host), "
            "or the values are infinite or beyond 2**100: look for a blow-up")


def _percent(share: float) -> str:
    return f"{100 * share:.0f}%" if share >= 0.1 else f"{100 * share:.1f}%"
