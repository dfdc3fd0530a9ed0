"""A Recording written as TensorBoard histogram summaries, for users who live in TensorBoard."""
from __future__ import annotations

import numpy as np

from ..data.layout import SUM, SUM_SQ
from ..data.options import STREAMS
from ..data.recording import Recording

__all__ = ["to_tensorboard", "LiveBoard", "training_steps"]


def _summary_writer():
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as error:
        raise ImportError("colordim.to_tensorboard needs TensorBoard: pip install 'colordim[tensorboard]' "
                          f"(or pip install tensorboard); {error}") from None
    return SummaryWriter


def to_tensorboard(recording: Recording, log_dir, kinds=None) -> list[str]:
    """Write every layer's per-batch histograms to `log_dir` (tags kind/layer/phase, step = column) of each
    kind recorded (or of `kinds`: 'activation', 'grad', 'param', 'param_grad', 'update'); the tags. A
    parameter's kinds have a histogram at each optimizer step (`param/0.weight/train`)."""
    SummaryWriter = _summary_writer()
    tags = []
    with SummaryWriter(str(log_dir)) as writer:
        for kind in recording.kinds if kinds is None else kinds:
            source = recording.kind(kind)
            for name in source.layer_names:
                for phase in sorted(set(source.phase.tolist())):
                    columns = np.flatnonzero(source.phase == phase)
                    if kind in STREAMS:  # a parameter's kinds: the columns of steps only, none in validation
                        columns = columns[source.numel[name][columns] > 0]
                        if not len(columns):
                            continue
                    tags.append(f"{kind}/{name}/{phase}")
                    for column in columns:
                        _write_column(writer, tags[-1], source, name, int(column))
    return tags


def training_steps(recording: Recording) -> np.ndarray:
    """Per column, the training iteration it belongs to, counted over the whole recording (as fastai's
    `train_iter`): a training column's own, a validation column's that of the training before it plus its
    own index in the epoch."""
    train = recording.phase == "train"
    done = np.cumsum(np.where(train, recording.batches, 0))  # training batches up to and with each column
    before = done - np.where(train, recording.batches, 0)
    return np.where(train, done - 1, before + recording.iteration).astype(np.int64)


class LiveBoard:
    """TensorBoard during training (`ActivationHistogram(tensorboard=log_dir)`): at each `write`, the columns
    the host received since the last one as histograms (step = training iteration), and at each epoch end
    the colour-dim grid as an image. Only host copies: nothing here reads the device.

    Each tag's steps only go up: TensorBoard drops every event of a tag at or after a step that comes again
    (its reservoir takes that for a restarted run), so a validation pass that would land on an earlier
    step (one outside a fit, or an epoch with more validation than training batches) is moved just past it."""
    def __init__(self, log_dir):
        self.writer = _summary_writer()(str(log_dir))
        self.trained = 0  # training batches written so far, over every fit: where the next ones' steps start
        self.last = {}    # tag -> the last step written to it

    def write(self, parts: list, grid: Recording = None, steps: list = None) -> None:
        """Each part's columns (as `HistogramRecorder.new_parts` gives them), and `grid`'s image at the last step.
        `steps`: per part, each column's step in the trainer's count (Lightning's `global_step`): the columns of
        one step and phase (the micro-batches of an accumulated step, an evaluation's batches) are summed into
        one histogram at that step."""
        for index, part in enumerate(parts):
            if steps is None:
                at = training_steps(part) + self.trained
            else:
                at, part = _per_step(part, np.asarray(steps[index], dtype=np.int64))
            for kind in part.kinds:
                source = part.kind(kind)
                for name in source.layer_names:
                    for column in range(len(source)):
                        if not source.numel[name][column]:  # nothing in it (a gradient in validation, no step)
                            continue
                        tag = f"{kind}/{name}/{source.phase[column]}"
                        _write_column(self.writer, tag, source, name, column, step=self._step(tag, int(at[column])))
            self.trained += int(part.batches[part.phase == "train"].sum())
        if grid is not None and len(grid) and (grid.phase == "train").any():
            from ..views.plot import grid_image
            last = self.trained - 1 if steps is None or not len(steps) or not len(steps[-1]) else int(steps[-1][-1])
            self.writer.add_image("colordim/grid", grid_image(grid),
                                  global_step=self._step("colordim/grid", last), dataformats="HWC")
        self.writer.flush()  # the writer stays open for the next fit's batches

    def _step(self, tag: str, step: int) -> int:
        "`step`, or one past the tag's last step where it would not be later than that."
        step = max(step, self.last.get(tag, -1) + 1)
        self.last[tag] = step
        return step


def _per_step(part: Recording, steps: np.ndarray):
    "The part with the neighbouring columns of one step and phase summed, and each merged column's step."
    keyed = part.select()  # a copy whose `iteration` is the step, every kind's: `coarsen` merges equal neighbours
    for kind in keyed.kinds:
        keyed.kind(kind).iteration = steps
    merged = keyed.coarsen(1)
    return merged.iteration, merged


def _write_column(writer, tag: str, source: Recording, name: str, column: int, step: int = None) -> None:
    "One histogram: the underflow, the bins and the overflow, as TensorBoard's right-edged buckets."
    edges, counts = source.edges[name], source.counts[name][column].astype(np.float64)
    low, high = float(edges[0]), float(edges[-1])
    smallest, largest = source.min[name][column], source.max[name][column]
    smallest = low - (edges[1] - edges[0]) if not np.isfinite(smallest) or smallest >= low else smallest
    largest = high + (edges[1] - edges[0]) if not np.isfinite(largest) or largest <= high else largest
    moments = np.nan_to_num(source.moments[name][column])
    writer.add_histogram_raw(
        tag, min=float(min(smallest, low)), max=float(max(largest, high)), num=int(counts.sum()),
        sum=float(moments[SUM]), sum_squares=float(moments[SUM_SQ]),
        bucket_limits=[low, *edges[1:].tolist(), float(largest)],  # right edges: below low, the bins, above high
        bucket_counts=counts.tolist(), global_step=column if step is None else step)
