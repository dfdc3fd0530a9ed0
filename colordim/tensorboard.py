"""A Recording written as TensorBoard histogram summaries, for users who live in TensorBoard."""
from __future__ import annotations

import numpy as np

from .recording import Recording

__all__ = ["to_tensorboard"]


def to_tensorboard(recording: Recording, log_dir, kinds=("activation", "grad")) -> list[str]:
    "Write every layer's per-batch histograms to `log_dir` (tags kind/layer/phase, step = column); the tags."
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as error:
        raise ImportError("colordim.to_tensorboard needs TensorBoard: pip install 'colordim[tensorboard]' "
                          f"(or pip install tensorboard); {error}") from None
    tags = []
    with SummaryWriter(str(log_dir)) as writer:
        for kind in kinds:
            if kind == "grad" and recording.grads is None:
                continue
            source = recording.kind(kind)
            for name in source.layer_names:
                for phase in sorted(set(source.phase.tolist())):
                    tags.append(f"{kind}/{name}/{phase}")
                    for column in np.flatnonzero(source.phase == phase):
                        _write_column(writer, tags[-1], source, name, int(column))
    return tags


def _write_column(writer, tag: str, source: Recording, name: str, column: int) -> None:
    "One histogram: the underflow, the bins and the overflow, as TensorBoard's right-edged buckets."
    edges, counts = source.edges[name], source.counts[name][column].astype(np.float64)
    low, high = float(edges[0]), float(edges[-1])
    smallest, largest = source.min[name][column], source.max[name][column]
    smallest = low - (edges[1] - edges[0]) if not np.isfinite(smallest) or smallest >= low else smallest
    largest = high + (edges[1] - edges[0]) if not np.isfinite(largest) or largest <= high else largest
    moments = np.nan_to_num(source.moments[name][column])
    writer.add_histogram_raw(
        tag, min=float(min(smallest, low)), max=float(max(largest, high)), num=int(counts.sum()),
        sum=float(moments[0]), sum_squares=float(moments[1]),
        bucket_limits=[low, *edges[1:].tolist(), float(largest)],  # right edges: below low, the bins, above high
        bucket_counts=counts.tolist(), global_step=column)
