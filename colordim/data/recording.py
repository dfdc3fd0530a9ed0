"""The host-side result of a run: per-layer histogram counts per column, edges and the column index."""
from __future__ import annotations

from dataclasses import dataclass, field

from pathlib import Path

import numpy as np

from .layout import DEAD, EXTREMES, MAX, MOMENTS, NEAR_ZERO, NEG_MIN, SUM, SUM_SQ, SUMS, bin_edges, symlog, symlog_inverse
from .options import PHASES, check_phase

__all__ = ["Recording", "LayerDict", "PHASES", "MOMENTS", "symlog", "symlog_inverse", "bin_edges"]


KINDS = ("activation", "grad", "param", "param_grad", "update")
# where a Recording keeps each other kind: a Recording of its own, on the same columns
KIND_FIELDS = {"grad": "grads", "param": "params", "param_grad": "param_grads", "update": "updates"}
KIND_NAMES = {"activation": "activation", "grad": "gradient", "param": "weights", "param_grad": "weight gradient",
              "update": "update"}  # how figures and reports say each kind
_PLURAL = {"activation": "activations", "grad": "gradients", "param": "weights", "param_grad": "weight gradients",
           "update": "updates"}
ROWS = "rows"  # a parameter's units (its `units`): its rows, a weight's output units (`colordim.engine.steps`)


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
    moments: dict = None  # name -> (columns, 6) float64, as MOMENTS; None: statistics were off (all NaN)
    channels: dict = None  # name -> (columns,) int64: units the dead-unit rate is over (see `units`)
    near_zero_threshold: float = 0.05  # |x| <= this counted as near zero
    skipped: dict = field(default_factory=dict)  # name -> why nothing was recorded
    batches: np.ndarray = None  # (columns,) batches merged into each column (1 until `max_columns` merges)
    linthresh: dict = None  # name -> t when the bins are uniform in sign(x) log1p(|x| / t), else None
    grads: "Recording" = None  # the same layers' output gradients, same columns (grads=True), else None
    params: "Recording" = None  # per parameter ("0.weight"), the weights after each optimizer step, same columns
    param_grads: "Recording" = None  # their gradients as the step saw them (NaN moments in columns without a step)
    updates: "Recording" = None  # what each step changed: the weights after it minus before it
    types: dict = None    # name -> the recorded module's class name ("Conv2d"; a container's part: its module's)
    auto: dict = None     # name -> whether its range was "auto" (widened with the run: `colordim.engine.ranges`)
    units: dict = None    # name -> "channels" (its units are dim 1) or "features" (the last dim): `colordim.engine.units`

    def __post_init__(self):
        columns = len(self.phase)
        if self.batches is None:
            self.batches = np.ones(columns, dtype=np.int64)
        if self.linthresh is None:
            self.linthresh = {name: None for name in self.counts}
        if self.moments is None:
            self.moments = {name: np.full((columns, len(MOMENTS)), np.nan) for name in self.counts}
        if self.channels is None:
            self.channels = {name: np.zeros(columns, dtype=np.int64) for name in self.counts}
        self.types = {name: (self.types or {}).get(name, "") for name in self.counts}
        self.auto = {name: bool((self.auto or {}).get(name, False)) for name in self.counts}
        self.units = {name: (self.units or {}).get(name) or "channels" for name in self.counts}  # older runs: dim 1
        for name in ("counts", "numel", "edges", "shapes", "moments", "channels"):
            setattr(self, name, LayerDict(getattr(self, name)))

    @property
    def layer_names(self) -> list[str]:
        "Recorded layers, in the model's order."
        return list(self.counts)

    @property
    def nbytes(self) -> int:
        "Bytes of the arrays held."
        tables = (self.counts, self.numel, self.moments, self.channels)
        return sum(array.nbytes for table in tables for array in table.values()) + \
            sum(array.nbytes for array in (self.fit, self.epoch, self.phase, self.iteration, self.batches)) + \
            sum(other.nbytes for other in self._others().values())

    def _others(self) -> dict:
        "The other kinds recorded with this one: {kind: Recording} (none, for one of them)."
        return {kind: getattr(self, field) for kind, field in KIND_FIELDS.items() if getattr(self, field) is not None}

    @property
    def kinds(self) -> list[str]:
        "The kinds recorded: 'activation', and those of 'grad', 'param', 'param_grad', 'update' that were."
        return ["activation", *self._others()]

    def __len__(self) -> int:
        "The number of columns (batches) recorded."
        return len(self.phase)

    @property
    def hist(self) -> "Histograms":
        "In-range counts per layer: (columns, bins); `hist[layer]`, or `hist(layer, kind='grad')`."
        return Histograms(self)

    def kind(self, kind: str = "activation") -> "Recording":
        """This recording ('activation'), or the one of the output gradients ('grad'), the weights ('param'),
        their gradients ('param_grad') or their updates ('update')."""
        if kind not in KINDS:
            raise ValueError(f"kind: {kind!r} is not a kind; use one of {KINDS}")
        if kind == "activation":
            return self
        other = getattr(self, KIND_FIELDS[kind])
        if other is None:
            option = {"grad": "grads=True", "param": "params=True", "param_grad": "param_grads=True",
                      "update": "updates=True"}[kind]
            raise ValueError(f"kind: no {_PLURAL[kind]} were recorded; record with {option} "
                             f"(this recording has {self.kinds})")
        return other

    @property
    def update_ratio(self) -> LayerDict:
        """Per parameter and column, RMS(update) / RMS(weights after the step) (makemore's and CS231n's
        update-to-weight ratio; about 1e-3 is healthy): NaN in columns without a step."""
        if self.updates is None or self.params is None:
            raise ValueError("update_ratio: needs the updates and the weights; record with updates=True")
        rms = lambda part, name: np.sqrt(part.moments[name][:, SUM_SQ] / part.numel[name])
        with np.errstate(divide="ignore", invalid="ignore"):
            return LayerDict((name, rms(self.updates, name) / rms(self.params, name)) for name in self.updates.counts)

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

    # --- statistics per layer and column, derived from the moments; NaN where the layer did not run ----
    def _per_column(self, formula) -> LayerDict:
        with np.errstate(divide="ignore", invalid="ignore"):
            return LayerDict((name, formula(name, self.moments[name].T, self.numel[name].astype(float)))
                             for name in self.counts)

    @property
    def mean(self) -> LayerDict:
        "Per layer and column, the mean of the output."
        return self._per_column(lambda name, m, n: m[SUM] / n)

    @property
    def std(self) -> LayerDict:
        "Per layer and column, the standard deviation of the output (n - 1 in the denominator, like torch.std)."
        return self._per_column(lambda name, m, n: np.sqrt(np.maximum(m[SUM_SQ] - m[SUM] ** 2 / n, 0) / (n - 1)))

    @property
    def near_zero(self) -> LayerDict:
        "Per layer and column, the share of values with |x| <= `near_zero_threshold`."
        return self._per_column(lambda name, m, n: m[NEAR_ZERO] / n)

    @property
    def dead_rate(self) -> LayerDict:
        """Per layer and column, the share of units whose output is <= 0 for the whole batch: channels (dim 1)
        or features (the last dim), as `units` says."""
        return self._per_column(lambda name, m, n: m[DEAD] / self.channels[name])

    @property
    def min(self) -> LayerDict:
        "Per layer and column, the smallest value."
        return self._per_column(lambda name, m, n: np.where(n > 0, -m[NEG_MIN], np.nan))

    @property
    def max(self) -> LayerDict:
        "Per layer and column, the largest value."
        return self._per_column(lambda name, m, n: np.where(n > 0, m[MAX], np.nan))

    def zero_bin_share(self) -> LayerDict:
        "Per layer and column, the share of values in the bin(s) touching 0 (NaN if 0 is outside the range)."
        def share(name):
            edges, counts = self.edges[name], self.hist[name]
            width = edges[1] - edges[0]
            at_edge = np.flatnonzero(np.isclose(edges, 0, rtol=0, atol=width * 1e-6))
            if len(at_edge):  # 0 is an edge: the bins on both sides of it
                bins = [k for k in (at_edge[0] - 1, at_edge[0]) if 0 <= k < len(edges) - 1]
            elif edges[0] < 0 < edges[-1]:
                bins = [int(np.searchsorted(edges, 0, side="right")) - 1]
            else:
                return np.full(len(self), np.nan)
            with np.errstate(divide="ignore", invalid="ignore"):
                return counts[:, bins].sum(1) / self.numel[name]
        return LayerDict((name, share(name)) for name in self.counts)

    def label(self, layer) -> str:
        "How figures and reports name `layer`: its name and module type, `1.2 ReLU`."
        name = self.layer_name(layer)
        return f"{name} {self.types[name]}" if self.types.get(name) else name

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

    def layer_names_of(self, layers) -> list[str]:
        "The names of `layers`: None for all, or one or a list of recorded layers by position or name."
        if layers is None:
            return self.layer_names
        return [self.layer_name(layer) for layer in (layers if isinstance(layers, (list, tuple)) else [layers])]

    def range(self, layer=0) -> tuple[float, float]:
        "The (low, high) of `layer`'s histogram."
        edges = self.edges[self.layer_name(layer)]
        return float(edges[0]), float(edges[-1])

    def select(self, layers=None, fit=None, epoch=None, phase=None) -> "Recording":
        "A Recording of only some layers (a name, an index or a list) and the columns matching the rest."
        keep = np.ones(len(self), dtype=bool)
        if phase is not None:
            keep &= self.phase == check_phase(phase)
        for name, wanted in (("fit", fit), ("epoch", epoch)):
            if wanted is not None:
                column_values = getattr(self, name)
                if wanted not in column_values:
                    raise ValueError(f"{name}: {wanted!r} was not recorded; recorded: "
                                     f"{sorted(set(column_values.tolist()))}")
                keep &= column_values == wanted
        return self._subset(keep, self.layer_names_of(layers), every_layer=layers is None)

    @property
    def step_columns(self) -> np.ndarray:
        "(columns,) bool: where any layer has values; in a parameter kind's recording, the optimizer steps."
        stepped = np.zeros(len(self), dtype=bool)
        for numel in self.numel.values():
            stepped |= numel > 0
        return stepped

    def steps(self) -> "Recording":
        """Only the columns in which an optimizer step was recorded (a parameter kind's: `kind('update').steps()`);
        what figures of the parameter kinds show, without the columns of batches that did not step."""
        return self._subset(self.step_columns, self.layer_names, every_layer=True)

    def _subset(self, keep: np.ndarray, names: list, every_layer: bool) -> "Recording":
        "The columns `keep` (a mask) of the layers `names`; the other kinds' of the same layers (`every_layer`: all)."
        chosen = lambda kind, other: other.layer_names if every_layer else names if kind == "grad" \
            else _owned(other, names)  # a parameter kind: the chosen layers' parameters
        others = {KIND_FIELDS[kind]: other._subset(keep, chosen(kind, other), every_layer)
                  for kind, other in self._others().items()}
        return Recording(
            counts={name: self.counts[name][keep] for name in names},
            numel={name: self.numel[name][keep] for name in names},
            edges={name: self.edges[name] for name in names},
            shapes={name: self.shapes[name] for name in names},
            fit=self.fit[keep], epoch=self.epoch[keep], phase=self.phase[keep],
            iteration=self.iteration[keep],
            moments={name: self.moments[name][keep] for name in names},
            channels={name: self.channels[name][keep] for name in names},
            near_zero_threshold=self.near_zero_threshold, batches=self.batches[keep],
            linthresh={name: self.linthresh[name] for name in names}, **others,
            skipped={name: why for name, why in self.skipped.items() if name in names},
            types={name: self.types[name] for name in names}, auto={name: self.auto[name] for name in names},
            units={name: self.units[name] for name in names})

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

    # the file and the page: their modules import this one, so they load on first use (no import cycle)
    def save(self, path) -> Path:
        "Write one .npz (arrays and a JSON header); atomically, so an interruption leaves the old file."
        from .saved import save
        return save(self, path)

    @classmethod
    def load(cls, path) -> "Recording":
        "Read a Recording saved by `save` (never unpickles: opening a file cannot run code)."
        from .saved import load
        return load(path)

    def to_html(self, path, title: str = "colordim report", **thresholds) -> Path:
        """Write one self-contained HTML page of this run (metadata, health report, every figure as an
        embedded PNG) to `path`; `thresholds` as in `colordim.diagnose`. Returns the path. The one import
        of a view from the data layer: a convenience that draws on demand (matplotlib loads then)."""
        from ..views.html_page import write_html
        return write_html(self, path, title=title, **thresholds)

    def __eq__(self, other) -> bool:
        "Equal layers, arrays and metadata."
        if not isinstance(other, Recording) or self.layer_names != other.layer_names:
            return False
        same = lambda a, b: a.shape == b.shape and np.array_equal(a, b, equal_nan=a.dtype.kind == "f")
        columns = all(same(getattr(self, key), getattr(other, key))
                      for key in ("fit", "epoch", "iteration", "batches")) and (self.phase == other.phase).all()
        tables = all(same(getattr(self, key)[name], getattr(other, key)[name])
                     for key in ("counts", "numel", "moments", "channels", "edges") for name in self.layer_names)
        return columns and tables and self.shapes == other.shapes and self.linthresh == other.linthresh \
            and self.near_zero_threshold == other.near_zero_threshold and self.skipped == other.skipped \
            and self.types == other.types and self.auto == other.auto and self.units == other.units \
            and all(getattr(self, field) == getattr(other, field) for field in KIND_FIELDS.values())

    @classmethod
    def concat(cls, parts: list["Recording"]) -> "Recording":
        "Join recordings of the same layers along the columns, in order."
        first = parts[0]
        join = lambda attr: np.concatenate([getattr(part, attr) for part in parts])
        per_layer = lambda attr: {name: np.concatenate([getattr(part, attr)[name] for part in parts])
                                  for name in first.counts}
        return cls(
            counts=per_layer("counts"), numel=per_layer("numel"), edges=dict(first.edges),
            shapes=dict(parts[-1].shapes), fit=join("fit"), epoch=join("epoch"), phase=join("phase"),
            iteration=join("iteration"), moments=per_layer("moments"), channels=per_layer("channels"),
            near_zero_threshold=first.near_zero_threshold, batches=join("batches"), linthresh=dict(first.linthresh),
            **{field: cls.concat([getattr(part, field) for part in parts])
               if all(getattr(part, field) is not None for part in parts) else None for field in KIND_FIELDS.values()},
            skipped={k: v for part in parts for k, v in part.skipped.items()}, types=dict(parts[-1].types),
            auto=dict(parts[-1].auto), units=dict(parts[-1].units))

    def coarsen(self, width: int) -> "Recording":
        "Merge the columns of each `width` consecutive batches of one fit, epoch and phase into one column."
        if len(self) < 2:
            return self
        key = np.stack([self.fit, self.epoch, np.unique(self.phase, return_inverse=True)[1], self.iteration // width])
        starts = np.flatnonzero(np.r_[True, (key[:, 1:] != key[:, :-1]).any(0)])
        if len(starts) == len(self):
            return self
        add = lambda array: np.add.reduceat(array, starts, axis=0)
        merge_moments = lambda m: np.concatenate([add(m[:, SUMS]), np.maximum.reduceat(m[:, EXTREMES], starts, axis=0)], 1)
        return Recording(
            counts={name: add(counts) for name, counts in self.counts.items()},
            numel={name: add(numel) for name, numel in self.numel.items()},
            edges=dict(self.edges), shapes=dict(self.shapes),
            fit=self.fit[starts], epoch=self.epoch[starts], phase=self.phase[starts],
            iteration=self.iteration[starts], batches=add(self.batches),
            moments={name: merge_moments(moments) for name, moments in self.moments.items()},
            channels={name: add(channels) for name, channels in self.channels.items()},
            near_zero_threshold=self.near_zero_threshold, linthresh=dict(self.linthresh), skipped=dict(self.skipped),
            **{KIND_FIELDS[kind]: other.coarsen(width) for kind, other in self._others().items()},
            types=dict(self.types),
            auto=dict(self.auto), units=dict(self.units))


def _owned(parameters: Recording, layers: list) -> list[str]:
    "The parameters (by name) of `layers`: '0.weight' and '0.bias' are layer '0''s."
    return [name for name in parameters.layer_names if any(name.startswith(f"{layer}.") for layer in layers)]


class Histograms(LayerDict):
    "A recording's in-range counts per layer: `hist[layer]`, or `hist(layer, kind='grad')` for gradients."
    def __init__(self, recording: Recording):
        super().__init__((name, counts[:, 1:-1]) for name, counts in recording.counts.items())
        self._recording = recording

    def __call__(self, layer=0, kind: str = "activation"):
        source = self._recording.kind(kind)
        return source.counts[source.layer_name(layer)][:, 1:-1]
