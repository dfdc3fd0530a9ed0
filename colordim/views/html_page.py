"""One self-contained HTML page of a run: metadata, the health report, and every figure as an embedded PNG.

The page needs no server and no network: styles are inline, images are `data:` URLs, nothing
points outside the file. It is what `colordim report RUN.npz -o report.html` and
`Recording.to_html(path)` write.
"""
from __future__ import annotations

import base64
import datetime
import html
import math
from pathlib import Path

from ..health.checks import diagnose
from ..health.report import layer_anchor
from ..health.step_checks import median_update_ratios
from ..data.options import STREAMS
from ..data.recording import KIND_NAMES, Recording
from ..data.saved import write_atomically

__all__ = ["report_html", "write_html"]

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; padding: 0 1em; max-width: 1100px; color: #222; }
.verdict { font-size: 1.3em; font-weight: bold; padding: 0.5em 0.8em; border-radius: 4px; }
.verdict.healthy { background: #e8f5e9; color: #1b5e20; }
.verdict.unhealthy { background: #fbe9e7; color: #bf360c; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; white-space: nowrap; }
th { white-space: normal; vertical-align: bottom; }
th:first-child, td:first-child, td:nth-child(2) { text-align: left; }
tr.finding td { background: #fff3e0; }
td.over { background: #ffab91 !important; font-weight: bold; }
img { width: 100%; height: auto; display: block; margin: 0.5em 0 1.5em; }
code { background: #f4f4f4; padding: 0 0.2em; }
dl { display: grid; grid-template-columns: max-content auto; gap: 0.2em 1em; }
dt { font-weight: bold; }
"""


def _png(figure, alt: str) -> str:
    "A matplotlib figure as an <img> with its PNG inside, and the figure closed."
    from .plot import png_bytes
    data = base64.b64encode(png_bytes(figure)).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _metadata(recording: Recording) -> str:
    from .. import __version__
    fits = sorted(set(recording.fit.tolist()))
    epochs = sorted(set(zip(recording.fit.tolist(), recording.epoch.tolist())))
    names = recording.layer_names
    ranges = sorted({tuple(float(end) for end in recording.range(name)) for name in names})
    bins = sorted({counts.shape[1] - 2 for counts in recording.counts.values()})
    items = {
        "layers": ", ".join(names) or "none",
        "bins": ", ".join(map(str, bins)),
        "range": ", ".join(f"{low:g} to {high:g}" for low, high in ranges),
        "columns": f"{len(recording)} ({int((recording.phase == 'train').sum())} training, "
                   f"{int((recording.phase == 'valid').sum())} validation batches"
                   + (f", up to {int(recording.batches.max())} batches per column)" if len(recording)
                      and recording.batches.max() > 1 else ")"),
        "fits, epochs": f"{len(fits)} fit{'s' if len(fits) != 1 else ''}, {len(epochs)} epoch{'s' if len(epochs) != 1 else ''}",
        "gradients": "recorded" if recording.grads is not None else "not recorded",
        "per optimizer step": ", ".join(KIND_NAMES[kind] for kind in recording.kinds if kind in STREAMS) or "not recorded",
        "colordim": __version__,
        "written": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
    }
    rows = "".join(f"<dt>{html.escape(key)}</dt><dd>{html.escape(value)}</dd>" for key, value in items.items())
    return f"<dl>{rows}</dl>"


def _findings_table(report) -> str:
    """The health table, one row per layer linking to its section, a layer with findings shaded and each
    figure over its threshold marked, then the findings."""
    tail, table = report.thresholds["tail"], report.table_html('id="findings"', shade=True, links=True)
    return (f'<h2>Health</h2><div class="scroll">{table}</div>'
            f"<p>Dead units and near zero: the last {tail:.0%} of training batches; below and above "
            f"range: all training batches; jitter: the std of the batch-to-batch change of log(std) over the "
            f"last epoch.</p><h3>Findings</h3>"
            f"{report.findings_html('none: every figure is within its threshold', links=True)}")


def _steps_section(recording: Recording, tail: float) -> list:
    """The parameters' streams, per optimizer step: a table (each row the target of its findings' links), the
    update-to-weight ratio chart, and the colour-dim images of each kind recorded."""
    from . import plot
    kinds = [kind for kind in recording.kinds if kind in STREAMS]
    if not kinds or not recording.kind(kinds[0]).step_columns.any():
        return []
    first = recording.kind(kinds[0])
    ratios = median_update_ratios(recording, tail)  # as the verdict reads them ({}: no updates)
    rows = []
    for name in first.layer_names:
        ratio = ratios.get(name, math.nan)
        cells = [f"<code>{html.escape(name)}</code>", html.escape(first.types.get(name, "")),
                 "x".join(map(str, first.shapes.get(name, ()))) or "-", "-" if math.isnan(ratio) else f"{ratio:.1e}"]
        rows.append(f'<tr id="{layer_anchor(name)}">' + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>")
    head = "".join(f"<th>{title}</th>" for title in ("parameter", "type", "shape",
                                                             f"update / weights (median, last {tail:.0%} of steps)"))
    parts = ["<h2>Parameters, per optimizer step</h2>",
             f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>']
    if "update" in kinds:
        figure, _ = plot.update_ratio_chart(recording)
        parts.append(_png(figure, "update-to-weight ratio per parameter and step"))
    for kind in kinds:
        figure, _ = plot.color_dims(recording, kind=kind)
        parts += [f"<h3>{html.escape(KIND_NAMES[kind].capitalize())}</h3>",
                  _png(figure, f"colour-dim images of every parameter's {KIND_NAMES[kind]}, per step")]
    return parts


def report_html(recording: Recording, title: str = "colordim report", **thresholds) -> str:
    "The page as a string: metadata, health table and findings, layer grid, dead chart, each layer's figures."
    from . import plot
    if not isinstance(recording, Recording):
        raise TypeError(f"recording: expected a colordim Recording, got {type(recording).__name__}")
    report = diagnose(recording, **thresholds)
    parts = [f"<h1>{html.escape(title)}</h1>", report.verdict_html(inline=False), _metadata(recording), _findings_table(report)]
    phase = "train" if (recording.phase == "train").any() else "valid"
    if len(recording) and recording.layer_names:
        figure, _ = plot.color_dims(recording, phase=phase)
        parts += ["<h2>All layers</h2>", _png(figure, "colour-dim images of every layer")]
        if phase == "train" and (recording.phase == "valid").any():
            figure, _ = plot.color_dims(recording, phase="valid")
            parts += ["<h2>All layers, validation batches</h2>",
                      _png(figure, "colour-dim images of every layer, validation batches")]
        figure, _ = plot.dead_chart(recording, phase=phase)
        parts += ["<h2>Share at zero and dead units</h2>", _png(figure, "share at zero and dead-unit rate per batch")]
        if recording.grads is not None and len(recording.grads) and recording.grads.layer_names:
            grads_phase = "train" if (recording.grads.phase == "train").any() else "valid"
            figure, _ = plot.color_dims(recording, phase=grads_phase, kind="grad")
            parts += ["<h2>Gradients</h2>", _png(figure, "colour-dim images of every layer's output gradient")]
        parts += _steps_section(recording, report.thresholds["tail"])
        for name in recording.layer_names:
            parts.append(f'<h2 id="{layer_anchor(name)}">Layer <code>{html.escape(name)}</code></h2>')
            axes = plot.color_dim(recording, name, phase=phase, overlay="mean")
            parts.append(_png(axes.figure, f"colour-dim image of layer {name}, with its mean"))
            figure, _ = plot.color_dim_epochs(recording, name, phase=phase)
            parts.append(_png(figure, f"layer {name}, one panel per epoch"))
    else:
        parts.append("<p>Nothing was recorded: no figures.</p>")
    body = "\n".join(parts)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<style>{STYLE}</style></head><body>\n{body}\n</body></html>\n")


def write_html(recording: Recording, path, title: str = "colordim report", **thresholds) -> Path:
    "Write the page to `path` (atomically: an interrupted write leaves any old file); returns the path."
    page = report_html(recording, title=title, **thresholds).encode("utf-8")
    return write_atomically(path, lambda file: file.write(page))
