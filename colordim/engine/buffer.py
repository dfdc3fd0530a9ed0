"""One layer's rows on its device: the histogram counts and moments of each recorded column."""
from __future__ import annotations

import math

import numpy as np
import torch

from ..data.layout import EXTREMES, MOMENTS, SUMS

__all__ = ["LayerBuffer"]


class LayerBuffer:
    "One layer's rows on its device: counts (rows, bins + 2) int64 and moments (rows, MOMENTS) float64."
    # Made as normal tensors even when the first output comes under torch.inference_mode (get_preds):
    # inference tensors could not be updated in place once training resumes.
    @torch.inference_mode(False)
    def __init__(self, rows: int, bins: int, device):
        moments_dtype = torch.float32 if torch.device(device).type == "mps" else torch.float64  # MPS has no float64
        self.rows = rows  # fixed: a buffer grows into a new one (`grown`)
        self.counts = torch.zeros(rows, bins + 2, dtype=torch.int64, device=device)
        self.moments = torch.empty(rows, len(MOMENTS), dtype=moments_dtype, device=device)
        # Distributed runs only: each unit's largest value per row, so that ranks can merge dead units
        # exactly (a unit is dead when it is <= 0 on every rank's shard, not on average).
        self.unit_max = None
        self.clear(slice(None))
        # on the CPU, numpy views of the same memory for the compiled kernels (`colordim.engine.cpu_kernel`)
        self.host = (self.counts.numpy(), self.moments.numpy()) if self.counts.device.type == "cpu" else None

    def __len__(self): return self.rows

    @property
    def device(self) -> torch.device:
        return self.counts.device

    @torch.inference_mode(False)
    def keep_unit_max(self, row: int, per_unit) -> None:
        "Merge this output's per-unit maxima into `row` (the width is the first output's unit count)."
        per_unit = torch.as_tensor(per_unit)  # the CPU kernel gives a numpy array
        if self.unit_max is None:
            self.widen(per_unit.numel())
        if per_unit.numel() == self.unit_max.shape[1]:
            torch.maximum(self.unit_max[row], per_unit.to(self.unit_max.dtype), out=self.unit_max[row])

    @torch.inference_mode(False)
    def widen(self, units: int) -> None:
        "Unit maxima `units` wide (ranks must agree before a collective); -inf where nothing was seen."
        if self.unit_max is None or self.unit_max.shape[1] < units:
            wider = torch.full((len(self), units), -math.inf, device=self.device, dtype=self.moments.dtype)
            if self.unit_max is not None:
                wider[:, :self.unit_max.shape[1]].copy_(self.unit_max)
            self.unit_max = wider

    def grown(self, rows: int) -> "LayerBuffer":
        "A copy with `rows` rows (more than now)."
        bigger = LayerBuffer(rows, self.counts.shape[1] - 2, self.device)
        bigger.counts[:len(self)].copy_(self.counts)
        bigger.moments[:len(self)].copy_(self.moments)
        if self.unit_max is not None:
            bigger.widen(self.unit_max.shape[1])
            bigger.unit_max[:len(self)].copy_(self.unit_max)
        return bigger

    def clear(self, rows) -> None:
        "Empty `rows` (an int or a slice): zero counts and sums, the extremes at -inf."
        self.counts[rows] = 0
        self.moments[rows, SUMS] = 0
        self.moments[rows, EXTREMES] = -math.inf
        if self.unit_max is not None:
            self.unit_max[rows] = -math.inf

    def move(self, source: int, target: int) -> None:
        "Row `source` becomes row `target`; `source` is emptied."
        self.counts[target].copy_(self.counts[source])
        self.moments[target].copy_(self.moments[source])
        if self.unit_max is not None:
            self.unit_max[target].copy_(self.unit_max[source])
        self.clear(source)

    @torch.inference_mode(False)
    def regrid(self, rows: int, index) -> None:
        "The first `rows` rows' counts merged as `index` says (`colordim.engine.ranges.remap`: each count's new bin)."
        index = torch.as_tensor(index, device=self.device)
        merged = torch.zeros_like(self.counts[:rows])
        merged.index_add_(1, index, self.counts[:rows])
        self.counts[:rows] = merged

    @property
    def nbytes(self) -> int:
        return self.counts.element_size() * self.counts.numel() + self.moments.element_size() * self.moments.numel()

    def start_to_host(self, used: int):
        """(counts, moments, event): the first `used` rows on the host. On CUDA, pinned tensors that fill
        without the host waiting, done when `event` is; on the CPU, numpy views of the rows themselves (no
        copy: read them before the rows are cleared or written); elsewhere numpy copies (event None)."""
        if self.host is not None:
            return self.host[0][:used], self.host[1][:used], None
        if self.device.type != "cuda":
            return *self.to_host(used), None
        counts = torch.empty((used, self.counts.shape[1]), dtype=self.counts.dtype, pin_memory=True)
        moments = torch.empty((used, self.moments.shape[1]), dtype=torch.float64, pin_memory=True)
        counts.copy_(self.counts[:used], non_blocking=True)
        moments.copy_(self.moments[:used], non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        return counts, moments, event

    def to_host(self, used: int) -> tuple[np.ndarray, np.ndarray]:
        "Copies of the first `used` rows as numpy (a copy: on the CPU `.cpu()` would alias)."
        if used > len(self):
            raise ValueError(f"to_host: {used} rows asked of a buffer of {len(self)}")
        return (self.counts[:used].to("cpu", copy=True).numpy(),
                self.moments[:used].to("cpu", dtype=torch.float64, copy=True).numpy())
