"""Every matplotlib figure of colordim, drawn from a `Recording` alone."""
from __future__ import annotations

import numpy as np
import matplotlib.pyplot as plt
from matplotlib.colors import Normalize, SymLogNorm

from .recording import Recording

__all__ = ["color_dim"]


def color_dim(recording: Recording, layer=0,
    epoch=None,       # an epoch number to draw only that epoch (of every fit)
    phase="train",    # 'train' or 'valid' columns
    log=True,         # colour by log count, so rare values still show
    ax=None, figsize=None,
    cmap="viridis",
    fname=None,       # also save the figure as a PNG here
):
    "Draw the colorful-dimension image of one layer: x = batch, y = activation, colour = count."
    name = recording.layer_name(layer)
    shown = recording.select(layers=[name], epoch=epoch, phase=phase)
    if not len(shown):
        raise ValueError(f"phase: no {phase!r} columns were recorded for {name!r}"
                         f"{'' if epoch is None else f' in epoch {epoch}'}; recorded: {recording!r}")
    counts = shown.hist[name].T  # (bins, columns): one column per batch
    low, high = shown.range(name)
    if ax is None:
        _, ax = plt.subplots(figsize=figsize or (10, 4))
    colours = plt.get_cmap(cmap)
    peak = max(int(counts.max()), 1)
    norm = SymLogNorm(linthresh=1, vmin=0, vmax=peak, base=10) if log else Normalize(0, peak)
    image = ax.imshow(counts, origin="lower", aspect="auto", interpolation="nearest", cmap=colours,
                      norm=norm, extent=(-0.5, len(shown) - 0.5, low, high))
    bar = ax.figure.colorbar(image, ax=ax, pad=0.01)
    bar.set_label("count (log scale)" if log else "count")
    _mark_epochs(ax, shown)
    ax.set_ylim(low, high)
    ax.set_xlabel(f"{phase} batch")
    ax.set_ylabel("activation")
    shape = shown.shapes.get(name) or ()
    ax.set_title(f"{name}" + (f"  {tuple(shape)}" if shape else ""))
    if fname is not None:
        ax.figure.savefig(fname, dpi=100, bbox_inches="tight")
    return ax


def _mark_epochs(ax, shown: Recording) -> None:
    "A dashed line and a label where each epoch (and fit) starts."
    bounds = shown.boundaries()
    several_fits = len({fit for _, fit, _ in bounds}) > 1
    for column, fit, epoch in bounds:
        if column:
            ax.axvline(column - 0.5, color="white", linewidth=0.8, linestyle="--", alpha=0.8)
        label = f"fit {fit} epoch {epoch}" if several_fits else f"epoch {epoch}"
        ax.annotate(label, (column - 0.5, 1), xycoords=("data", "axes fraction"), xytext=(2, -10),
                    textcoords="offset points", color="white", fontsize=8, va="top")
