"""A health report and its renderings: the `Report` (a table of per-layer figures and the findings),
each `Finding`, the verdict line, as text for a terminal and as HTML for a notebook or the page. The
one text table (`text_table`) and the one verdict renderer (`Report.verdict_html`) of the package.
"""
from __future__ import annotations

import html
import math
import re
from dataclasses import dataclass, field

from ..data.options import THRESHOLDS

__all__ = ["Report", "Finding", "layer_anchor", "text_table"]


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
            "outliers": ("has heavy tails", "have heavy tails"), "growth": ("grows with depth", "grow with depth"),
            "saturated": ("saturates", "saturate"),
            # parameters' (`colordim.health.step_checks`)
            "update_large": ("updates too fast", "update too fast"), "update_small": ("updates too slowly", "update too slowly"),
            "grad_dead": ("has units with no gradient", "have units with no gradient")}
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
    parameters: list = field(default_factory=list)  # the parameters whose steps were recorded (their findings' names)

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
        about = lambda parameters: [finding for finding in self.findings if finding.check != "origin" and
                                    (finding.layer in self.parameters) == parameters]
        unhealthy = list(dict.fromkeys(finding.layer for finding in about(False)))
        if not unhealthy:
            verdict = f"All {layers} layers healthy" if layers != 1 else "The layer is healthy"
        else:
            verdict = f"{len(unhealthy)} of {layers} layer{'s' if layers != 1 else ''} unhealthy: " + \
                self._phrases(about(False))
        weights = list(dict.fromkeys(finding.layer for finding in about(True)))
        if weights:  # the parameters' findings, after the layers'
            count = len(self.parameters)
            verdict += f"; {len(weights)} of {count} parameter{'s' if count != 1 else ''}: " + self._phrases(about(True))
        return verdict

    def _phrases(self, findings: list) -> str:
        "`a and b have dead units; c clips`: the layers of `findings` grouped by what is wrong, most serious first."
        said = {}  # phrase -> layers, in the order findings come
        for finding in findings:
            layers_said = said.setdefault(VERDICTS.get(finding.check), [])
            if finding.layer not in layers_said:
                layers_said.append(finding.layer)
        said.pop(None, None)  # "origin": the layer's own NaN or Inf finding says it
        order = list(VERDICTS.values())  # most serious first
        parts = [f"{_listed(names)} {phrase[len(names) > 1]}"
                 for phrase, names in sorted(said.items(), key=lambda item: order.index(item[0]))]
        return "; ".join(parts)

    def over(self, row: dict) -> set:
        "The keys of `row`'s cells whose figure is over its threshold (a finding about them)."
        return {CELLS[finding.check] for finding in self.findings_for(row["layer"]) if finding.check in CELLS}

    def _cells(self, row) -> list[str]:
        "A row's cells as text; a layer that outputs negative values has no dead units to show (none is dead)."
        return [_format(key, row[key] if key != "dead" or row["relu_like"] else None) for key, _ in self.COLUMNS]

    def __str__(self) -> str:
        header = [title for _, title in self.COLUMNS]
        table = text_table(header, [self._cells(row) for row in self.rows], right=range(3, len(header)))
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

    def verdict_html(self, inline: bool = True) -> str:
        """The verdict as a paragraph, green when healthy and orange when not: styled in place for a notebook
        (`inline`), or of class `verdict healthy` / `verdict unhealthy` for the page's style sheet."""
        if not inline:
            return f'<p class="verdict {"healthy" if self.healthy else "unhealthy"}" id="verdict">{html.escape(self.verdict)}</p>'
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


def text_table(header, rows: list, right=()) -> list[str]:
    "Rows of cells as aligned text lines under `header` and a rule of dashes; columns in `right` right-aligned."
    lines = [list(header)] + [list(row) for row in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    table = ["  ".join(cell.rjust(width) if i in right else cell.ljust(width)
                       for i, (cell, width) in enumerate(zip(line, widths))).rstrip() for line in lines]
    table.insert(1, "  ".join("-" * width for width in widths))
    return table
