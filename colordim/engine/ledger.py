"""The column ledger: which row hooks write into now, what each finished row is, what its outputs added.

One ledger serves every layer of a recorder, activations and gradients alike, so both kinds always
have the same columns. The host counts everything here itself (no device value is read): a column's
(fit, epoch, phase, iteration), and the sizes its outputs added, from the plans that summarised them.
"""
from __future__ import annotations

import numpy as np

from ..data.layout import MOMENTS, SIZES
from ..data.options import check_bytes, check_count, check_max_columns, check_phase

__all__ = ["Ledger"]


MOVE_EVERY = 256             # finished columns go to the host at least this often (batches)
# Defaults that fit a laptop: 320 MiB at most in all. 150 layers of 100 bins keep 2,000 columns on the
# host (a picture 2,000 pixels wide), 10 layers 10,000 (max_columns); `benchmarks/long_run.py` prints it.
DEVICE_BYTES = 64 * 2 ** 20   # the device rows of every layer together stay within this
HOST_BYTES = 256 * 2 ** 20    # the host recording too: past it, neighbouring columns merge pairwise


class Ledger:
    """The columns of one recorder: the open one, the finished ones not yet on the host, and the budgets:
    at most `rows` finished rows on the device (`move_every`, fewer when `device_bytes` says so for this
    many layers), at most `max_columns` columns on the host (fewer when `host_bytes` says so)."""
    def __init__(self, max_columns: int = 10_000, move_every: int = MOVE_EVERY, device_bytes: int = DEVICE_BYTES,
                 host_bytes: int = HOST_BYTES):
        self.columns_asked = check_max_columns(max_columns)
        self.move_every = check_count("move_every", move_every, MOVE_EVERY)
        self.device_bytes, self.host_bytes = check_bytes("device_bytes", device_bytes), check_bytes("host_bytes", host_bytes)
        self.rows, self.max_columns = self.move_every, self.columns_asked
        self.row = None       # the row hooks write into now, or None: not recording
        self.used = []        # (layer index, plan) of each output in the open column
        self.capacity = 0     # rows every layer's buffer will have
        self.index = []       # per finished row: (fit, epoch, phase, iteration)
        self.outputs = []     # per finished row: its outputs' (layer index, plan) list (shared while the same)
        self._pending = None  # the open column's (fit, epoch, phase, iteration)
        self._sizes_of = {}   # a sequence of (layer index, plan) -> what it adds, worked out once
        self.ended = 0        # rows ever ended: what is new since a caller last looked
        self.opened = 0       # rows ever opened: names the open one (an abandoned row's number is not reused)

    def __len__(self) -> int:
        "Finished rows not yet moved to the host."
        return len(self.index)

    def budget(self, layers: int, bins: int) -> None:
        "Work out the device rows and host columns the budgets allow for `layers` layers of `bins` bins."
        row = (bins + 2) * 8 + len(MOMENTS) * 8  # one layer's counts and moments, a column
        self.rows = max(1, min(self.move_every, self.device_bytes // (layers * row) - 1))  # and the open row
        # On the host (`colordim.engine.host_columns`) each layer's column also holds numel and channels, one more
        # layer's worth is the scratch merges write into, and the column's index takes 52 bytes.
        column = (layers + 1) * (row + 2 * 8) + 52
        self.max_columns = max(2, min(self.columns_asked, self.host_bytes // column))

    @property
    def full(self) -> bool:
        "Whether the device holds as many finished rows as it may: time to move them to the host."
        return len(self.index) >= self.rows

    def reserve(self, columns: int) -> None:
        "Room for `columns` more (say, an epoch's batches), so that no buffer grows per batch."
        self.capacity = max(self.capacity, min(len(self.index) + columns, self.rows) + 1)

    def open(self, phase: str = "train", epoch: int = 0, fit: int = 0, iteration: int = 0) -> None:
        "Open the next row (an open one must have been ended or abandoned)."
        check_phase(phase)
        row = len(self.index)
        if row >= self.capacity:  # no reserve() or an epoch longer than announced: grow geometrically
            self.capacity = min(max(16, 2 * self.capacity), self.rows + 1)
        self.row, self._pending, self.used = row, (fit, epoch, phase, iteration), []
        self.opened += 1

    def end(self) -> None:
        "Keep the open row. Every step here costs more than later, in caches the batch has just used."
        if self.row is not None:
            last = self.outputs[-1] if self.outputs else None  # most rows use the plans the last did:
            self.outputs.append(last if last == self.used else self.used)  # share its list (memory stays small)
            self.index.append(self._pending)
            self.ended += 1
        self.row, self._pending, self.used = None, None, []

    def abandon(self) -> int:
        "Forget the open row (an interrupted batch); returns it, or None, for the layers to clear."
        row, self.row, self._pending, self.used = self.row, None, None, []
        return row

    def sizes(self, layers: int) -> tuple[np.ndarray, dict]:
        """The finished rows' SIZES as one (rows, layers, 3) array, and each layer's last shape: a
        training batch's where there is one (layer index -> (shape, whether from a training batch))."""
        sizes, shapes = np.zeros((len(self.outputs), layers, len(SIZES)), np.int64), {}
        for row, outputs in enumerate(self.outputs):  # once per flush; most rows share one list
            added, seen = self._added(tuple(outputs), layers)
            sizes[row] = added
            training = self.index[row][2] == "train"
            for index, shape in seen.items():
                if training or not shapes.get(index, (None, False))[1]:
                    shapes[index] = shape, training
        return sizes, shapes

    def _added(self, outputs: tuple, layers: int):
        if (outputs, layers) not in self._sizes_of:
            if len(self._sizes_of) >= 64:  # shapes that keep changing (text of any length): stay bounded
                self._sizes_of.clear()
            added, shapes = np.zeros((layers, len(SIZES)), np.int64), {}
            for index, plan in outputs:
                added[index] += plan.sizes
                shapes[index] = tuple(plan.shape)
            self._sizes_of[(outputs, layers)] = added, shapes
        return self._sizes_of[(outputs, layers)]

    def moved_to_host(self) -> list:
        "The finished rows went to the host: forget them (an open row becomes row 0); returns their index."
        index, self.index, self.outputs = self.index, [], []
        if self.row is not None:
            self.row = 0
        return index

    def reset(self) -> None:
        "Forget every row, open or finished."
        self.abandon()
        self.index, self.outputs = [], []

