"""Every matplotlib figure of colordim, drawn from a `Recording` alone."""
from __future__ import annotations

import math

import numpy as np
import matplotlib.pyplot as plt
from matplotlib.colors import LogNorm, Normalize, SymLogNorm
from matplotlib.font_manager import FontProperties
from matplotlib.ticker import FuncFormatter, Locator

from ..data.options import STREAMS, check_phase
from ..data.recording import KIND_NAMES, Recording, symlog, symlog_inverse

__all__ = ["color_dim", "color_dims", "color_dim_epochs", "dead_chart", "plot_layer_stats", "compare", "png_bytes",
           "grid_image", "update_ratio_chart"]

OVERLAYS = (None, "mean", "mean_std")
BAND = 0.03  # height of the under- and overflow bands, as a share of the range


def color_dim(recording: Recording, layer=0,
    epoch=None,       # an epoch number: draw only that epoch (of every fit)
    phase="train",    # 'train' or 'valid' columns
    log=True,         # colour by log count, so rare values still show
    overlay=None,     # 'mean' or 'mean_std': draw the per-batch mean (and +-1 std) over the image
    ax=None, figsize=None, cmap="viridis",
    fname=None,       # also save the figure as a PNG here
    kind="activation",  # or "grad" (output gradients, grads=True), "param", "param_grad", "update" (per step)
):
    "Draw the colorful-dimension image of one layer: x = batch, y = activation, colour = count."
    name, shown = _columns(_kind(recording, kind), layer, epoch, phase)
    if ax is None:
        _, ax = plt.subplots(figsize=figsize or (10, 4))
    image = _panel(ax, shown, name, _norm(log, _peak(shown, name)), cmap, overlay, kind=kind)
    _colorbar(ax.figure, image, ax, log)
    ax.set_xlabel(_x_label(shown, phase))
    ax.set_ylabel(_y_label(kind))
    _save(ax.figure, fname)
    return ax


def color_dims(recording: Recording, layers=None, cols=3, epoch=None, phase="train", log=True, overlay=None,
               figsize=None, cmap="viridis", fname=None, kind="activation"):
    "A grid of colour-dim images, one panel per layer, on one colour scale; returns (figure, axes)."
    recording = _kind(recording, kind)
    names = _names(recording, layers)
    cols = _positive(cols, "cols")
    shown = {name: _columns(recording, name, epoch, phase)[1] for name in names}
    rows = math.ceil(len(names) / cols)
    cols = min(cols, len(names))
    figure, axes = plt.subplots(rows, cols, figsize=figsize or (4.2 * cols, 2.6 * rows), squeeze=False,
                                constrained_layout=True)
    norm = _norm(log, max(_peak(columns, name) for name, columns in shown.items()))
    for ax, name in zip(axes.flat, names):
        image = _panel(ax, shown[name], name, norm, cmap, overlay, label_epochs=False, kind=kind)
    for ax in axes.flat[len(names):]:
        ax.set_axis_off()
    for ax in axes[-1]:
        ax.set_xlabel(_x_label(shown[names[0]], phase))
    _colorbar(figure, image, axes, log)
    _save(figure, fname)
    return figure, axes


def color_dim_epochs(recording: Recording, layer=0, phase="train", log=True, cols=None, figsize=None,
                     cmap="viridis", fname=None, kind="activation"):
    "One colour-dim panel per epoch of one layer, on one colour scale; returns (figure, axes)."
    name, shown = _columns(_kind(recording, kind), layer, None, phase)
    epochs = [(fit, epoch) for _, fit, epoch in shown.boundaries()]
    cols = min(_positive(cols or len(epochs), "cols"), len(epochs))
    rows = math.ceil(len(epochs) / cols)
    figure, axes = plt.subplots(rows, cols, figsize=figsize or (3.2 * cols, 3 * rows), squeeze=False,
                                constrained_layout=True, sharey=True)
    norm = _norm(log, _peak(shown, name))
    several_fits = len({fit for fit, _ in epochs}) > 1
    for ax, (fit, epoch) in zip(axes.flat, epochs):
        image = _panel(ax, shown.select(fit=fit, epoch=epoch), name, norm, cmap, None, label_epochs=False)
        ax.set_title(f"fit {fit} epoch {epoch}" if several_fits else f"epoch {epoch}")
        ax.set_xlabel(_x_label(shown, phase))
    for ax in axes.flat[len(epochs):]:
        ax.set_axis_off()
    axes[0, 0].set_ylabel(_y_label(kind))
    figure.suptitle(_title(shown, name, kind))
    _colorbar(figure, image, axes, log)
    _save(figure, fname)
    return figure, axes


def dead_chart(recording: Recording, layers=None, phase="train", axes=None, figsize=None, fname=None,
               kind="activation"):
    """Per batch, the share of values in the bin(s) at zero and the dead-unit rate, a line per layer; the rate
    only for layers that never output a negative value (a logit below zero is not dead, as in the report)."""
    recording = _kind(recording, kind)
    names = _names(recording, layers)
    _columns(recording, names[0], None, phase)  # the checks: a recording with `phase` columns
    shown = recording.select(layers=names, phase=phase)
    figure, (zero_ax, dead_ax) = _axes(axes, 2, lambda: plt.subplots(
        2, 1, sharex=True, figsize=figsize or (10, 5), constrained_layout=True))
    zero_share = shown.zero_bin_share()
    signed = []
    for name in names:
        line, = zero_ax.plot(zero_share[name], label=shown.label(name), linewidth=1)
        if np.nanmin(shown.min[name], initial=np.inf) < 0 and kind not in STREAMS:
            signed.append(shown.label(name))
        else:  # the same colour in both panels
            dead_ax.plot(shown.dead_rate[name], label=shown.label(name), linewidth=1, color=line.get_color())
    zero_ax.set_ylabel("share of values\nat 0")
    dead_ax.set_ylabel("share of units\nthat never fire" if kind not in STREAMS else  # channels or features
                       "share of rows\nexactly zero")  # a parameter's: rows (a weight gradient's: units not learning)
    if signed:
        dead_ax.text(0.99, 0.97, "not drawn (they output negative values, so none is dead): " + ", ".join(signed),
                     transform=dead_ax.transAxes, ha="right", va="top", fontsize=7, wrap=True)
    dead_ax.set_xlabel(_x_label(shown, phase))
    for ax in (zero_ax, dead_ax):
        ax.set_ylim(-0.02, 1.02)
        _mark_epochs(ax, shown, color="grey", label=ax is zero_ax)
    zero_ax.legend(title="layer" if kind == "activation" else f"layer, {KIND_NAMES[kind]}", fontsize=8,
                   loc="upper left", bbox_to_anchor=(1.01, 1))
    if kind != "activation":
        zero_ax.set_title("output gradients" if kind == "grad" else f"{KIND_NAMES[kind]}, per optimizer step", fontsize=10)
    _save(figure, fname)
    return figure, (zero_ax, dead_ax)


def update_ratio_chart(recording: Recording, params=None, ax=None, figsize=None, fname=None, guide: float = 1e-3):
    """Per parameter (all, or `params`: names or positions), log10 of RMS(update) / RMS(weights) at each
    optimizer step, with a guide line at `guide` (1e-3: makemore's and CS231n's rule of thumb; far above,
    the learning rate is too high for it, far below, too low). Returns (figure, ax)."""
    ratios = recording.update_ratio  # a ValueError that says to record updates=True, if they were not
    steps = recording.updates.steps()
    names = _names(steps, params)
    if not len(steps):
        raise ValueError("recording: no optimizer step was recorded yet; fit first")
    keep = recording.updates.step_columns
    figure, ax = _axes(ax, 1, lambda: plt.subplots(figsize=figsize or (10, 4), constrained_layout=True))
    with np.errstate(divide="ignore", invalid="ignore"):
        for name in names:
            ax.plot(np.log10(ratios[name][keep]), label=steps.label(name), linewidth=1)
    ax.axhline(np.log10(guide), color="black", linestyle="--", linewidth=1, label=f"{guide:g}")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("log10 RMS(update) / RMS(weights)")
    ax.set_title("update-to-weight ratio per step", fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    _mark_epochs(ax, steps, color="grey", label=False)
    _save(figure, fname)
    return figure, ax


def plot_layer_stats(recording: Recording, layer=0, phase="train", axes=None, figsize=None, fname=None,
                     kind="activation"):
    "Mean (with +-1 std), std, share near zero and dead-unit rate of one layer per batch; (figure, axes)."
    name, shown = _columns(_kind(recording, kind), layer, None, phase)
    figure, axes = _axes(axes, 4, lambda: plt.subplots(2, 2, sharex=True, figsize=figsize or (11, 5),
                                                       constrained_layout=True))
    axes = np.asarray(axes).reshape(2, 2)
    mean, std = shown.mean[name], shown.std[name]
    batches = np.arange(len(shown))
    axes[0, 0].plot(batches, mean, linewidth=1)
    axes[0, 0].fill_between(batches, mean - std, mean + std, alpha=0.25, linewidth=0)
    panels = {"mean (band: +-1 std)": None, "std": std,
              f"share with |x| <= {shown.near_zero_threshold:g}": shown.near_zero[name],
              "dead-unit rate": shown.dead_rate[name]}
    for ax, (title, values) in zip(axes.flat, panels.items()):
        if values is not None:
            ax.plot(batches, values, linewidth=1)
        ax.set_title(title, fontsize=10)
        _mark_epochs(ax, shown, color="grey", label=False)
    for ax in axes[1]:
        ax.set_xlabel(_x_label(shown, phase))
    axes[1, 0].set_ylim(-0.02, 1.02)
    axes[1, 1].set_ylim(-0.02, 1.02)
    figure.suptitle(_title(shown, name, kind))
    _save(figure, fname)
    return figure, axes


def compare(recordings, layer=0, labels=None, epoch=None, phase="train", log=True, figsize=None,
            cmap="viridis", fname=None, kind="activation"):
    "The same layer from several runs, one panel each, on one colour scale; returns (figure, axes)."
    recordings = [_kind(recording, kind) for recording in recordings]
    if not recordings:
        raise ValueError("recordings: got none; pass two or more Recordings (or one) to compare")
    labels = list(labels) if labels is not None else [f"run {index}" for index in range(len(recordings))]
    if len(labels) != len(recordings):
        raise ValueError(f"labels: got {len(labels)} for {len(recordings)} recordings")
    shown = [_columns(recording, layer, epoch, phase) for recording in recordings]
    figure, axes = plt.subplots(len(shown), 1, figsize=figsize or (10, 2.8 * len(shown)), squeeze=False,
                                constrained_layout=True)
    norm = _norm(log, max(_peak(columns, name) for name, columns in shown))
    for ax, (name, columns), label in zip(axes[:, 0], shown, labels):
        image = _panel(ax, columns, name, norm, cmap, None, kind=kind)
        ax.set_title(f"{label}: {_title(columns, name, kind)}", fontsize=10)
        ax.set_ylabel(_y_label(kind))
    axes[-1, 0].set_xlabel(_x_label(shown[-1][1], phase))
    _colorbar(figure, image, axes, log)
    _save(figure, fname)
    return figure, axes


# --- pieces --------------------------------------------------------------------------------------
def _columns(recording: Recording, layer, epoch, phase) -> tuple[str, Recording]:
    "The layer's name and its columns of `phase` (and `epoch`), or a ValueError naming what exists."
    if not len(recording):
        raise ValueError(f"recording: it has no columns; nothing was recorded yet ({recording!r})")
    name = recording.layer_name(layer)
    check_phase(phase)
    recorded = sorted(set(recording.phase.tolist()))
    if phase not in recorded:
        raise ValueError(f"phase: no {phase!r} batches were recorded; recorded phases: {recorded}")
    shown = recording.select(layers=[name], phase=phase)
    if epoch is not None and epoch not in shown.epoch:
        raise ValueError(f"epoch: {epoch!r} has no {phase!r} batches; recorded epochs: "
                         f"{sorted(set(shown.epoch.tolist()))}")
    return name, shown if epoch is None else shown.select(epoch=epoch)


def _names(recording: Recording, layers) -> list[str]:
    names = recording.layer_names_of(layers)
    if not names:
        raise ValueError(f"layers: got an empty list; recorded layers: {recording.layer_names}")
    return names


def _axes(axes, count, make):
    "(figure, axes) of the `count` axes given, or of a new figure from `make()`."
    if axes is None:
        return make()
    axes = list(np.asarray(axes, dtype=object).flat)
    if len(axes) != count:
        raise ValueError(f"axes: expected {count} matplotlib Axes, got {len(axes)}")
    return axes[0].figure, axes


def _positive(value, argument) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{argument}: expected an int >= 1, got {value!r}")
    return int(value)


def _peak(shown: Recording, name) -> int:
    return max(int(shown.hist[name].max(initial=0)), 1)


def _norm(log: bool, peak: int):
    return SymLogNorm(linthresh=1, vmin=0, vmax=peak, base=10) if log else Normalize(0, peak)


def _x_label(shown: Recording, phase: str) -> str:
    widest = int(shown.batches.max(initial=1))
    return f"{phase} batch" if widest == 1 else f"{phase} batches, up to {widest} per column"


def _kind(recording: Recording, kind: str) -> Recording:
    "The recording of `kind`; a parameter kind's only in the columns of optimizer steps (others have none)."
    part = recording.kind(kind)
    return part.steps() if kind in STREAMS else part


def _y_label(kind: str) -> str:
    return KIND_NAMES[kind]


def _title(shown: Recording, name: str, kind: str = "activation") -> str:
    "`1.2 ReLU  (64, 32, 4, 4)`, and `, gradient` (`, update` ...) for another kind's figure."
    shape = shown.shapes.get(name) or ()
    title = f"{shown.label(name)}  {tuple(shape)}" if shape else shown.label(name)
    return title if kind == "activation" else f"{title}, {KIND_NAMES[kind]}"


def _panel(ax, shown: Recording, name, norm, cmap, overlay, label_epochs=True, kind="activation"):
    "One colour-dim image with its edge bands, NaN marks, overlay and epoch marks; returns the image."
    if overlay not in OVERLAYS:
        raise ValueError(f"overlay: {overlay!r} is not an overlay; use one of {OVERLAYS}")
    to_y = _y_transform(shown, name)  # activation units -> the y axis (symlog'd when the bins are)
    low, high = (to_y(end) for end in shown.range(name))
    extent = (-0.5, len(shown) - 0.5)
    image = ax.imshow(shown.hist[name].T, origin="lower", aspect="auto", interpolation="nearest",
                      cmap=cmap, norm=norm, extent=(*extent, low, high))
    _edge_bands(ax, shown, name, extent, low, high)
    if overlay:
        mean, std = shown.mean[name], shown.std[name]
        ax.plot(to_y(mean), color="white", linewidth=1, label="mean")
        if overlay == "mean_std":
            for sign in (-1, 1):
                ax.plot(to_y(mean + sign * std), color="white", linewidth=0.8, linestyle=":")
    _mark_epochs(ax, shown, label=label_epochs)
    ax.set_xlim(*extent)
    ax.set_ylim(low, high)
    if shown.linthresh[name] is not None:
        _symlog_ticks(ax, *shown.range(name), shown.linthresh[name])
    ax.set_title(_title(shown, name, kind), fontsize=10)
    if not shown.numel[name].any():  # say why the panel is empty
        reason = shown.skipped.get(name, "the layer did not run in these batches")
        ax.text(0.5, 0.5, f"nothing recorded:\n{reason}", transform=ax.transAxes, ha="center", va="center",
                color="white", fontsize=9)
    return image


def _y_transform(shown: Recording, name):
    linthresh = shown.linthresh[name]
    return (lambda values: values) if linthresh is None else (lambda values: symlog(values, linthresh))


def _symlog_ticks(ax, low, high, linthresh):
    "Ticks at 0 and the powers of ten inside the range, labelled in activation units, never on top of each other."
    ticks = SymlogTicks(linthresh)
    ax.yaxis.set_major_locator(ticks)
    ax.yaxis.set_major_formatter(FuncFormatter(ticks.label))


class SymlogTicks(Locator):
    """Ticks of an axis in symlog'd units: 0 and the powers of ten inside the view, kept outward from 0 only
    where a tick is a label's height from the last one kept (the axes' height is read at each draw, so a
    small panel gets fewer ticks: on the GPT demo's grid "-1", "0" and "1" printed on top of each other)."""
    def __init__(self, linthresh: float):
        self.linthresh = linthresh

    def __call__(self):
        low, high = sorted(self.axis.get_view_interval())
        inside = [value for power in range(-6, 13) for value in (10.0 ** power, -10.0 ** power)
                  if 10.0 ** power >= self.linthresh / 10]
        values = sorted({0.0, *inside}, key=lambda value: (abs(value), value))  # 0 first, then outward
        positions = [float(symlog(value, self.linthresh)) for value in values]
        positions = [position for position in positions if low <= position <= high]
        axes = self.axis.axes
        size = FontProperties(size=plt.rcParams["ytick.labelsize"]).get_size_in_points() * axes.figure.dpi / 72
        gap = 1.5 * size * (high - low) / max(axes.bbox.height, 1)  # a label's height and a little, in axis units
        kept = []
        for position in positions:
            if all(abs(position - other) >= gap for other in kept):
                kept.append(position)
        return sorted(kept)

    def label(self, position, _=None) -> str:
        "The activation value at `position`, as 0 or a power of ten."
        value = symlog_inverse(position, self.linthresh)
        return "0" if abs(value) < self.linthresh / 100 else f"{np.sign(value) * 10.0 ** round(math.log10(abs(value))):g}"


def _edge_bands(ax, shown: Recording, name, extent, low, high):
    "Thin red bands at the top and bottom edges where values fell above or below the range; NaN marks."
    band = BAND * (high - low)
    for counts, y0, label, inside in ((shown.overflow[name], high - band, "above range", "top"),
                                      (shown.underflow[name], low, "below range", "bottom")):
        if counts.any():
            ax.imshow(np.ma.masked_equal(counts, 0)[None, :], origin="lower", aspect="auto",
                      interpolation="nearest", cmap="Reds", norm=LogNorm(0.5, max(counts.max(), 1)),
                      extent=(*extent, y0, y0 + band))
            edge = (y0 - low) / (high - low) if inside == "top" else (y0 + band - low) / (high - low)
            ax.annotate(label, (1, edge), xycoords="axes fraction", xytext=(-2, -2 if inside == "top" else 2),
                        textcoords="offset points", ha="right", va=inside, color="tab:red", fontsize=7,
                        bbox=dict(boxstyle="square,pad=0.1", facecolor="white", alpha=0.7, linewidth=0))
    nan_columns = np.flatnonzero(shown.nan[name])
    if len(nan_columns):
        ax.plot(nan_columns, np.full(len(nan_columns), high - band / 2), "x", color="magenta",
                markersize=4, label="NaN")


def _mark_epochs(ax, shown: Recording, color="white", label=True):
    "A dashed line where each epoch starts (solid where a fit starts), with a label."
    bounds = shown.boundaries()
    several_fits = len({fit for _, fit, _ in bounds}) > 1
    every = max(1, math.ceil(len(bounds) / 12))  # at most a dozen labels
    previous_fit = bounds[0][1] if bounds else None
    for number, (column, fit, epoch) in enumerate(bounds):
        if column:
            ax.axvline(column - 0.5, color=color, linewidth=0.8, alpha=0.8,
                       linestyle="-" if fit != previous_fit else "--")
        previous_fit = fit
        if label and number % every == 0:
            ax.annotate(f"fit {fit} epoch {epoch}" if several_fits else f"epoch {epoch}",
                        (column - 0.5, 1), xycoords=("data", "axes fraction"), xytext=(2, -8),
                        textcoords="offset points", color=color, fontsize=8, va="top")


def _colorbar(figure, image, ax, log):
    bar = figure.colorbar(image, ax=ax, pad=0.01)
    bar.set_label("count (log scale)" if log else "count")
    return bar


def png_bytes(figure, dpi: int = 72) -> bytes:
    "A figure as PNG bytes, and the figure closed (the report page, the live notebook output)."
    import io
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    plt.close(figure)
    return buffer.getvalue()


def grid_image(recording: Recording) -> np.ndarray:
    "The training batches' colour-dim grid as an (height, width, 3) uint8 image (TensorBoard, W&B)."
    figure, _ = color_dims(recording, phase="train")
    figure.canvas.draw()
    image = np.asarray(figure.canvas.buffer_rgba())[..., :3].copy()
    plt.close(figure)
    return image


def _save(figure, fname):
    if fname is not None:
        figure.savefig(fname, dpi=100, bbox_inches="tight")
