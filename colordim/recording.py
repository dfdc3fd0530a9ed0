"""The host-side result of a run: per-layer histogram counts per column, edges and the column index."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["Recording", "LayerDict", "PHASES"]

PHASES = ("train", "valid")


class LayerDict(dict):
    "A dict keyed by layer name that also takes the layer's position: `hist[0]` or `hist['0.0']`."
    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
            names = list(self)
            if not -len(names) <= key < len(names):
                raise IndexError(f"layer index {key} out of range: {len(names)} layers recorded ({names})")
            key = names[key]
        return super().__getitem__(key)


@dataclass(eq=False)
class Recording:
    "Histograms of chosen layers' outputs, one column per batch, on the host: what every plot takes."
    counts: dict          # name -> (columns, bins + 2) int64: underflow, the bins, overflow
    numel: dict           # name -> (columns,) int64: values seen (NaN = numel - counts.sum(1))
    edges: dict           # name -> (bins + 1,) float64 bin edges, the first and last are `range`
    shapes: dict          # name -> output shape of the last training batch, () if the layer never ran
    fit: np.ndarray       # (columns,) which fit call of the learner, from 0
    epoch: np.ndarray     # (columns,) epoch within that fit, from 0
    phase: np.ndarray     # (columns,) 'train' or 'valid'
    iteration: np.ndarray  # (columns,) batch index within the epoch and phase
    skipped: dict = field(default_factory=dict)  # name -> why nothing was recorded

    def __post_init__(self):
        for name in ("counts", "numel", "edges", "shapes"):
            setattr(self, name, LayerDict(getattr(self, name)))

    @property
    def layer_names(self) -> list[str]:
        "Recorded layers, in the model's order."
        return list(self.counts)

    def __len__(self) -> int:
        "The number of columns (batches) recorded."
        return len(self.phase)

    @property
    def hist(self) -> LayerDict:
        "In-range counts per layer: (columns, bins), like `numpy.histogram` over `range`."
        return LayerDict((name, counts[:, 1:-1]) for name, counts in self.counts.items())

    @property
    def underflow(self) -> LayerDict:
        "Per layer and column, how many values fell below the range (-inf included)."
        return LayerDict((name, counts[:, 0]) for name, counts in self.counts.items())

    @property
    def overflow(self) -> LayerDict:
        "Per layer and column, how many values fell above the range (+inf included)."
        return LayerDict((name, counts[:, -1]) for name, counts in self.counts.items())

    @property
    def nan(self) -> LayerDict:
        "Per layer and column, how many values were NaN: seen but in no bin."
        return LayerDict((name, self.numel[name] - counts.sum(1)) for name, counts in self.counts.items())

    def layer_name(self, layer) -> str:
        "The name of `layer`, given by position among the recorded layers or by name."
        if isinstance(layer, str):
            if layer in self.counts:
                return layer
            raise ValueError(f"layer: {layer!r} was not recorded; recorded layers: {self.layer_names}")
        if isinstance(layer, (int, np.integer)) and not isinstance(layer, bool):
            if -len(self.counts) <= layer < len(self.counts):
                return self.layer_names[layer]
            raise ValueError(f"layer: index {layer} out of range; {len(self.counts)} layers were "
                             f"recorded (0..{len(self.counts) - 1}): {self.layer_names}")
        raise TypeError(f"layer: expected a recorded layer's index or name, got {type(layer).__name__}")

    def range(self, layer=0) -> tuple[float, float]:
        "The (low, high) of `layer`'s histogram."
        edges = self.edges[self.layer_name(layer)]
        return float(edges[0]), float(edges[-1])

    def select(self, layers=None, fit=None, epoch=None, phase=None) -> "Recording":
        "A Recording of only some layers (a name, an index or a list) and the columns matching the rest."
        keep = np.ones(len(self), dtype=bool)
        if phase is not None:
            if phase not in PHASES:
                raise ValueError(f"phase: {phase!r} is not a phase; use one of {PHASES}")
            keep &= self.phase == phase
        for name, wanted in (("fit", fit), ("epoch", epoch)):
            if wanted is not None:
                column_values = getattr(self, name)
                if wanted not in column_values:
                    raise ValueError(f"{name}: {wanted!r} was not recorded; recorded: "
                                     f"{sorted(set(column_values.tolist()))}")
                keep &= column_values == wanted
        names = self.layer_names if layers is None else [
            self.layer_name(layer) for layer in (layers if isinstance(layers, (list, tuple)) else [layers])]
        return Recording(
            counts={name: self.counts[name][keep] for name in names},
            numel={name: self.numel[name][keep] for name in names},
            edges={name: self.edges[name] for name in names},
            shapes={name: self.shapes[name] for name in names},
            fit=self.fit[keep], epoch=self.epoch[keep], phase=self.phase[keep],
            iteration=self.iteration[keep],
            skipped={name: why for name, why in self.skipped.items() if name in names})

    def select_layer(self, layer) -> "Recording":
        "Only `layer` (index or name)."
        return self.select(layers=[layer])

    def select_epoch(self, epoch: int, fit=None) -> "Recording":
        "Only the columns of `epoch` (of every fit, or of `fit`)."
        return self.select(epoch=epoch, fit=fit)

    def select_phase(self, phase: str) -> "Recording":
        "Only the 'train' or only the 'valid' columns."
        return self.select(phase=phase)

    def boundaries(self) -> list[tuple[int, int, int]]:
        "Where a new (fit, epoch) starts: `(column, fit, epoch)` for each, first column included."
        changes = np.flatnonzero((np.diff(self.fit) != 0) | (np.diff(self.epoch) != 0)) + 1
        starts = [0, *changes.tolist()] if len(self) else []
        return [(start, int(self.fit[start]), int(self.epoch[start])) for start in starts]

    def __repr__(self) -> str:
        phases = ", ".join(f"{int((self.phase == p).sum())} {p}" for p in PHASES)
        fits = len(set(self.fit.tolist()))
        return (f"Recording({len(self.counts)} layers, {len(self)} columns ({phases}), "
                f"{fits} fit{'s' if fits != 1 else ''}, layers={self.layer_names})")

    @classmethod
    def concat(cls, parts: list["Recording"]) -> "Recording":
        "Join recordings of the same layers along the columns, in order."
        first = parts[0]
        join = lambda attr: np.concatenate([getattr(part, attr) for part in parts])
        return cls(
            counts={name: np.concatenate([part.counts[name] for part in parts]) for name in first.counts},
            numel={name: np.concatenate([part.numel[name] for part in parts]) for name in first.counts},
            edges=dict(first.edges), shapes=dict(parts[-1].shapes),
            fit=join("fit"), epoch=join("epoch"), phase=join("phase"), iteration=join("iteration"),
            skipped={k: v for part in parts for k, v in part.skipped.items()})
