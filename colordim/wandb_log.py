"""Weights & Biases during training (`ActivationHistogram(wandb=True)`): each layer's histogram with
colordim's own bins, and the colour-dim grid, logged into the run the user started with `wandb.init`.

At each write, the batches the host received since the last one, summed per layer and phase (one
`wandb.Histogram(np_histogram=(counts, edges))` each: a W&B histogram is one per step), with
`commit=False`, so they join the step that fastai's `WandbCallback` (or the user) logs next; at each
epoch end also the grid, as a `wandb.Image`. Host copies only; nothing is sent while `WANDB_MODE` is
offline.
"""
from __future__ import annotations

import numpy as np

from .recording import Recording

__all__ = ["WandbLog"]


def _wandb():
    try:
        import wandb
    except ImportError as error:
        raise ImportError(f"ActivationHistogram(wandb=True) needs Weights & Biases: pip install wandb ({error})") from None
    if wandb.run is None:
        raise ValueError("wandb=True: no W&B run is active; call wandb.init(...) before fit (fastai's WandbCallback "
                         "needs it too)")
    return wandb


class WandbLog:
    "Logs a recording's new batches to the active W&B run, as histograms per layer and phase, and its grid."
    def __init__(self):
        self.wandb, self.written = _wandb(), 0

    def write(self, recording: Recording, grid: bool = False) -> None:
        "The columns new since the last write, summed per layer and phase (and, with `grid`, the grid image)."
        if len(recording) < self.written:  # neighbours merged past max_columns: go on from what is there
            self.written = len(recording)
        logged = {}
        for kind in ("activation", "grad"):
            if kind == "grad" and recording.grads is None:
                continue
            source = recording.kind(kind)
            new = np.arange(self.written, len(source))
            for phase in ("train", "valid"):
                columns = new[source.phase[new] == phase]
                for name in source.layer_names:
                    if not columns.size or not source.numel[name][columns].sum():
                        continue
                    counts = source.counts[name][columns].sum(0)[1:-1]  # the bins; the edge rows have no width
                    logged[f"colordim/{kind}/{name}/{phase}"] = self.wandb.Histogram(
                        np_histogram=(counts, source.edges[name]))
        self.written = len(recording)
        if grid and len(recording) and (recording.phase == "train").any():
            from .plot import grid_image
            logged["colordim/grid"] = self.wandb.Image(grid_image(recording))
        if logged:
            self.wandb.log(logged, commit=False)
