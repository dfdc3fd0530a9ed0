"""One layer's rows on its device: the histogram counts and moments of each recorded column."""
from __future__ import annotations

import math

import numpy as np
import torch

from .recording import MOMENTS

__all__ = ["DeviceRows"]


class DeviceRows:
    "One layer's rows on its device: histogram counts (rows, bins + 2) and moments (rows, 6)."
    def __init__(self, rows: int, bins: int, device):
        moments_dtype = torch.float32 if torch.device(device).type == "mps" else torch.float64  # MPS has no float64
        self.counts = torch.zeros(rows, bins + 2, dtype=torch.int64, device=device)
        self.moments = torch.empty(rows, len(MOMENTS), dtype=moments_dtype, device=device)
        self.clear(slice(None))

    def __len__(self): return self.counts.shape[0]

    def grown(self, rows: int) -> "DeviceRows":
        bigger = DeviceRows(rows, self.counts.shape[1] - 2, self.counts.device)
        bigger.counts[:len(self)].copy_(self.counts)
        bigger.moments[:len(self)].copy_(self.moments)
        return bigger

    def clear(self, rows) -> None:
        "Empty `rows` (an int or a slice): zero counts and sums, -min and max at -inf."
        self.counts[rows] = 0
        self.moments[rows, :4] = 0
        self.moments[rows, 4:] = -math.inf

    def move(self, source: int, target: int) -> None:
        self.counts[target].copy_(self.counts[source])
        self.moments[target].copy_(self.moments[source])
        self.clear(source)

    @property
    def nbytes(self) -> int:
        return self.counts.element_size() * self.counts.numel() + self.moments.element_size() * self.moments.numel()

    def to_host(self, used: int) -> tuple[np.ndarray, np.ndarray]:
        "Copies of the first `used` rows as numpy (a copy: on the CPU `.cpu()` would alias)."
        return (self.counts[:used].to("cpu", copy=True).numpy(),
                self.moments[:used].to("cpu", dtype=torch.float64, copy=True).numpy())
