"""Weights & Biases during training (`ActivationHistogram(wandb=True)`): each layer's histogram with
colordim's own bins, and the colour-dim grid, logged into the run the user started with `wandb.init`.

Each move to the host becomes one W&B row: per layer and phase the batches it brought, summed (a W&B
histogram is one per row: `wandb.Histogram(np_histogram=(counts, edges))`), with `colordim/step`, the
training batches seen so far, as the x axis of every `colordim/...` chart (`wandb.define_metric`); at each
epoch end the grid, as a `wandb.Image`, joins the last row.

Nothing is ever overwritten, and the user's own rows keep their W&B steps. A row is logged uncommitted,
so it joins the row the user logs next (a loss logger, fastai's `WandbCallback`, whose `step=` must never
fall behind). When our previous row is still uncommitted at the next write (writing again would overwrite
it): while nobody else logs in the run, it is committed first, as a W&B step of its own; once someone
does, the new row is added into it instead (histograms summed, the newer grid, which holds every batch the
older one did), so that no step of theirs moves. `commit()` commits our last row at a fit's end, under
the same rule. Host copies only; nothing is sent while `WANDB_MODE` is offline.
"""
from __future__ import annotations

from ..data.recording import Recording

__all__ = ["WandbLog"]

STEP = "colordim/step"


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
    "Logs each new part of a recording to the active W&B run as a row of histograms per layer and phase, and the grid."
    def __init__(self):
        self.wandb = _wandb()
        self.trained = 0      # training batches logged so far, over every fit: the `colordim/step` of the next row
        self._run = None      # the run our metrics were defined in
        self._pending = None  # our last row while nobody has committed it: (its W&B step, its histograms)

    def write(self, parts: list, grid: Recording = None, steps: list = None) -> None:
        """One row per part (as `HistogramRecorder.new_parts` gives them); `grid`'s image with the last. `steps`:
        per part, each column's step in the trainer's count: a row's `colordim/step` is its last column's."""
        rows = [self._histograms(part) for part in parts]
        at = [int(max(part_steps)) if len(part_steps) else None for part_steps in steps or ()]
        if grid is not None and len(grid) and (grid.phase == "train").any():
            from ..views.plot import grid_image
            if not rows:
                rows.append({})
            rows[-1]["colordim/grid"] = self.wandb.Image(grid_image(grid))
        for index, row in enumerate(rows):
            if row:
                self._log(row, at[index] if index < len(at) else None)

    def _histograms(self, part: Recording) -> dict:
        "A part's batches summed per kind, layer and phase: key -> (counts of the bins, edges)."
        row = {}
        for kind in part.kinds:
            source = part.kind(kind)
            for phase in ("train", "valid"):
                columns = source.phase == phase
                for name in source.layer_names:
                    if source.numel[name][columns].sum():  # the bins; the edge rows have no width
                        row[_key(kind, name, phase)] = source.counts[name][columns].sum(0)[1:-1], source.edges[name]
        self.trained += int(part.batches[part.phase == "train"].sum())
        return row

    def _log(self, row: dict, step: int = None) -> None:
        """Log `row` uncommitted, joining the user's next row. If our last row is still uncommitted: commit it
        first while nobody else logs (a row of its own each), else add `row` into it (the user's steps stay)."""
        run = self.wandb.run
        if run is None:  # the user finished the run: nothing to log into (not an error mid-fit)
            return
        if run is not self._run:
            run.define_metric(STEP, hidden=True)
            run.define_metric("colordim/*", step_metric=STEP)
            self._run, self._pending, self._ours = run, None, run.step  # _ours: the step if only we commit
        if self._pending is not None and run.step == self._pending[0]:
            if run.step == self._ours or not _joinable(self._pending[1], row):
                self._commit()  # (bins that changed under a user's row: a step of ours, the rare exception)
            else:
                row = _joined(self._pending[1], row)
        histograms = {key: self.wandb.Histogram(np_histogram=value) if isinstance(value, tuple) else value
                      for key, value in row.items()}
        run.log({**histograms, STEP: self.trained if step is None else step}, commit=False)
        self._pending = run.step, row

    def commit(self) -> None:
        "Commit our last row if nobody has logged since we began (so it shows now, and as a W&B step of its own)."
        run = self.wandb.run
        if run is None or run is not self._run or self._pending is None or run.step != self._pending[0]:
            return
        if run.step == self._ours:
            self._commit()

    def _commit(self) -> None:
        "Commit our last row, as a W&B step of its own if nobody else has logged since we began."
        alone = self._run.step == self._ours
        self._run.log({}, commit=True)
        self._ours += alone
        self._pending = None


def _key(kind: str, name: str, phase: str) -> str:
    """The W&B key of a histogram: `colordim/activation/0.1/train`; a parameter's under the names `wandb.watch`
    users know, in our namespace: `colordim/parameters/0.weight`, `colordim/gradients/0.weight`,
    `colordim/updates/0.weight` (steps are training steps: no phase)."""
    return f"colordim/{PARAMETER_KEYS[kind]}/{name}" if kind in PARAMETER_KEYS else f"colordim/{kind}/{name}/{phase}"


PARAMETER_KEYS = {"param": "parameters", "param_grad": "gradients", "update": "updates"}


def _joinable(pending: dict, row: dict) -> bool:
    "Whether every histogram of both rows has the same bins (an auto range may have widened in between)."
    return all(key not in pending or not isinstance(value, tuple) or
               value[1].shape == pending[key][1].shape and (value[1] == pending[key][1]).all()
               for key, value in row.items())


def _joined(pending: dict, row: dict) -> dict:
    "One row of both: histograms added up, the newer grid (it holds every batch the older one did)."
    joined = dict(pending)
    for key, value in row.items():
        joined[key] = (pending[key][0] + value[0], value[1]) if key in pending and isinstance(value, tuple) else value
    return joined
