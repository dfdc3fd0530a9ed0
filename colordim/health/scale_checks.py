"""What large-model research measures of a layer's scale, read from a Recording: massive activations,
heavy tails, and growth with depth. `colordim.diagnose` turns each into a finding.

- Massive activations (Sun et al. 2024): a few values at least 100 in size and 1000 times the median
  size. The median |x| comes from the histogram: its bin's upper edge in |x|, an upper bound, so a
  finding is certain; a linear range too coarse to resolve the median finds nothing (use
  `scale="symlog"`).
- Heavy tails (LLM.int8, Dettmers et al. 2022): the share of values beyond 6 standard deviations of
  the mean, from the bins that lie wholly beyond (a lower bound). A normal distribution has 2e-9 of
  its values there.
- Growth with depth: the RMS of each block of a stack (layers whose names differ only in one index,
  `blocks.0`, `blocks.1`, ..., with the same shape) against the stack's first block.
- Blow-ups in time: a layer's RMS in a batch against its median RMS over the batches just before (a
  learning rate that spikes scales every layer up by orders of magnitude within a few batches, often
  without a NaN; a layer that grows steadily from a tiny initialisation is not a blow-up).
"""
from __future__ import annotations

import numpy as np

from ..data.layout import SUM_SQ
from ..data.recording import Recording

__all__ = ["median_size", "massive_ratio", "share_beyond", "stacks", "growth", "rms", "blowup"]

SIGMAS = 6  # heavy tails: values beyond this many standard deviations


def median_size(recording: Recording, name: str) -> np.ndarray:
    "Per column, an upper bound of the median |x|: the upper |x| edge of the bin the median falls in."
    counts, edges = recording.counts[name].astype(float), recording.edges[name]
    upper = np.concatenate([[np.inf], np.maximum(np.abs(edges[:-1]), np.abs(edges[1:])), [np.inf]])
    order = np.argsort(upper, kind="stable")
    cumulative = np.cumsum(counts[:, order], axis=1)
    half = cumulative[:, -1:] / 2
    found = (cumulative >= half).argmax(axis=1)
    median = upper[order][found]
    return np.where(cumulative[:, -1] > 0, median, np.nan)


def massive_ratio(recording: Recording, name: str) -> tuple[np.ndarray, np.ndarray]:
    "Per column, the largest finite |x| and its ratio to the median |x| (a lower bound of the ratio)."
    largest = np.maximum(np.abs(recording.max[name]), np.abs(recording.min[name]))
    largest = np.where(np.isfinite(largest), largest, np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        return largest, largest / median_size(recording, name)


def share_beyond(recording: Recording, name: str, sigmas: float = SIGMAS) -> np.ndarray:
    """Per column, the share of values beyond `sigmas` standard deviations of the mean: those in bins wholly
    beyond (and under- or overflow past them), a lower bound; NaN without statistics."""
    if recording.moments is None:
        return np.full(len(recording), np.nan)
    counts, edges, numel = recording.counts[name].astype(float), recording.edges[name], recording.numel[name]
    mean, std = recording.mean[name], recording.std[name]
    low, high = (mean - sigmas * std)[:, None], (mean + sigmas * std)[:, None]
    beyond = (edges[None, 1:] <= low) | (edges[None, :-1] >= high)  # (columns, bins)
    under = (edges[0] <= low[:, 0]) * counts[:, 0]
    over = (edges[-1] >= high[:, 0]) * counts[:, -1]
    total = (counts[:, 1:-1] * beyond).sum(1) + under + over
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(numel > 0, total / np.maximum(numel, 1), np.nan)


def stacks(recording: Recording) -> list[list[str]]:
    """Groups of layers whose names differ only in one integer part and whose shapes agree, in index order
    (`blocks.0`, `blocks.1`, ...; `model.layers.0.mlp`, `model.layers.1.mlp`, ...): a stack of blocks."""
    groups = {}
    for name in recording.layer_names:
        parts = name.split(".")
        for at, part in enumerate(parts):
            if part.isdigit():
                key = (".".join(parts[:at]), ".".join(parts[at + 1:]), tuple(recording.shapes.get(name, ())))
                groups.setdefault(key, []).append((int(part), name))
                break  # the first index: `blocks.0.mlp.2` is block 0's
    return [[name for _, name in sorted(members)] for members in groups.values() if len(members) >= 2]


def rms(recording: Recording, name: str) -> np.ndarray:
    "Per column, the root mean square of the layer's values (NaN without statistics or values)."
    if recording.moments is None:
        return np.full(len(recording), np.nan)
    numel = recording.numel[name]
    with np.errstate(invalid="ignore"):
        return np.where(numel > 0, np.sqrt(recording.moments[name][:, SUM_SQ] / np.maximum(numel, 1)), np.nan)


def growth(recording: Recording, stack: list[str]) -> np.ndarray:
    "Per column and block of `stack` (columns, blocks): its output's RMS over the first block's."
    sizes = np.stack([rms(recording, name) for name in stack], axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return sizes / sizes[:, :1]


BEFORE = 10  # blow-ups: a batch against the median of this many training batches before it


def blowup(recording: Recording, name: str, train: np.ndarray, before: int = BEFORE) -> np.ndarray:
    """Per column, the layer's RMS over its median RMS in the `before` training columns just before it (from
    the 4th training column on); NaN elsewhere, and where the RMS is not finite (NaN and Inf have findings
    of their own)."""
    ratio = np.full(len(recording), np.nan)
    sizes = rms(recording, name)[train]
    sizes = np.where(np.isfinite(sizes), sizes, np.nan)
    for at in range(3, len(sizes)):
        earlier = sizes[max(0, at - before):at]
        earlier = earlier[np.isfinite(earlier)]
        if earlier.size and np.median(earlier) > 0:
            ratio[train[at]] = sizes[at] / np.median(earlier)
    return ratio

