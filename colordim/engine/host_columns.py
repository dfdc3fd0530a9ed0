"""The recording on the host: each layer's columns in arrays allocated once, filled at each move, merged in place.

Each move to the host (`HistogramRecorder.flush`) brings a few hundred columns. They are written into
per-layer arrays made once with room for `capacity` columns (what `host_bytes` allows), not joined to
earlier ones by concatenation. When the arrays are full, neighbouring columns merge pairwise in place
(width doubles) and the new ones follow. Why: a run that concatenated its parts made new arrays of a few
MB while the old ones lived, then freed them; glibc serves such arrays from its heap once larger ones
were freed, and resident memory rose at every merge and never came back. Here nothing large is made or
freed after the first move (arrays are reserved, so their pages become resident only as columns fill),
and the process's memory stays at torch's own plus the budgets.
"""
from __future__ import annotations

import numpy as np

from ..data.layout import EXTREMES, MOMENTS, SUMS
from ..data.recording import Recording

__all__ = ["HostColumns", "KEYS"]

KEYS = ("fit", "epoch", "phase", "iteration", "batches")  # per column, shared by every layer
TABLES = ("counts", "moments", "numel", "channels")       # per layer and column


class HostColumns:
    "Every layer's columns on the host, (kind, name) -> its arrays, in room for `capacity` columns."
    def __init__(self, capacity: int, bins: int):
        self.bins, self.capacity = bins, capacity
        self.n, self.width = 0, 1  # columns held; batches a column merges once the arrays were full
        self.touched = 0           # the most columns ever held: pages that are resident since
        self.index = _index_arrays(capacity)
        self.tables = {}           # (kind, name) -> {"counts", "moments", "numel", "channels": arrays}
        self._scratch = {}         # (dtype, columns of a row) -> one array a merge writes into first

    def __len__(self) -> int:
        return self.n

    def __contains__(self, key) -> bool:
        return key in self.tables

    # --- adding a move's columns -------------------------------------------------------------------
    def append(self, part: Recording) -> None:
        "Add `part`'s columns (every layer of both kinds), merging neighbours in place while they do not fit."
        while True:
            part = part.coarsen(self.width) if self.width > 1 else part
            skip = self._continues(part)  # its first column completes the last one held
            if self.n + len(part) - skip <= self.capacity:
                break
            wider = 2 * self.width
            if not self._coarsen(wider) and len(part.coarsen(wider)) == len(part):
                # a column per fit, epoch and phase already: more room than the budget (rare), grown by half
                self._reallocate(max(self.n + len(part), self.capacity * 3 // 2))
                break
            self.width = wider
        tables = _tables(part)
        for key, arrays in tables.items():
            self._add_layer(key, arrays["counts"].dtype)
        for key in self.tables.keys() - tables.keys():  # a layer this part does not show: empty columns
            tables[key] = _empty_tables(len(part), self.bins)
        for key, arrays in tables.items():
            self._write(self.tables[key], arrays, skip)
        self._write_index(part, skip)
        self.n += len(part) - skip
        self.touched = max(self.touched, self.n)

    def _continues(self, part: Recording) -> int:
        "1 when `part`'s first column is the same merged column (fit, epoch, phase, batches) as the last held."
        if not (self.n and len(part) and self.width > 1):
            return 0
        last = self.n - 1
        same = (self.index["fit"][last] == part.fit[0] and self.index["epoch"][last] == part.epoch[0] and
                self.index["phase"][last] == part.phase[0] and
                self.index["iteration"][last] // self.width == part.iteration[0] // self.width)
        return int(same)

    def _write(self, held: dict, arrays: dict, skip: int) -> None:
        "One layer's new columns after the held ones (the first added into the last held, when `skip`)."
        if arrays["counts"].dtype.kind == "f" and held["counts"].dtype.kind != "f":  # sampled: counts scaled
            held["counts"] = held["counts"].astype(np.float64)
        n = self.n
        if skip:
            for name in ("counts", "numel", "channels"):
                held[name][n - 1] += arrays[name][0]
            held["moments"][n - 1, SUMS] += arrays["moments"][0, SUMS]
            np.maximum(held["moments"][n - 1, EXTREMES], arrays["moments"][0, EXTREMES],
                       out=held["moments"][n - 1, EXTREMES])
        for name in TABLES:
            held[name][n:n + len(arrays[name]) - skip] = arrays[name][skip:]

    def _write_index(self, part: Recording, skip: int) -> None:
        if skip:
            self.index["batches"][self.n - 1] += part.batches[0]
        for name in KEYS:
            self.index[name][self.n:self.n + len(part) - skip] = getattr(part, name)[skip:]

    def _add_layer(self, key, dtype=np.int64) -> None:
        "Arrays for a layer first seen now: its columns so far are empty (it did not run in them)."
        if key in self.tables:
            return
        arrays = _allocate(self.capacity, self.bins, dtype)
        for name, value in _empty_tables(self.n, self.bins).items():
            arrays[name][:self.n] = value
        self.tables[key] = arrays

    # --- merging in place --------------------------------------------------------------------------
    def _coarsen(self, width: int) -> bool:
        "Merge the held columns of each `width` batches of one fit, epoch and phase, in place; False: none merged."
        n, index = self.n, self.index
        if n < 2:
            return False
        phase = np.unique(index["phase"][:n], return_inverse=True)[1]
        key = np.stack([index["fit"][:n], index["epoch"][:n], phase, index["iteration"][:n] // width])
        starts = np.flatnonzero(np.r_[True, (key[:, 1:] != key[:, :-1]).any(0)])
        if len(starts) == n:
            return False
        for arrays in self.tables.values():
            self._reduce(np.add, arrays["counts"], starts)
            self._reduce(np.add, arrays["moments"][:, SUMS], starts)
            self._reduce(np.maximum, arrays["moments"][:, EXTREMES], starts)
            self._reduce(np.add, arrays["numel"], starts)
            self._reduce(np.add, arrays["channels"], starts)
        self._reduce(np.add, index["batches"], starts)
        for name in ("fit", "epoch", "phase", "iteration"):  # a merged column is named by its first batch
            index[name][:len(starts)] = index[name][starts]
        self.n = len(starts)
        return True

    def _reduce(self, ufunc, array: np.ndarray, starts: np.ndarray) -> None:
        "array[:m] = ufunc over each run array[starts[k]:starts[k + 1]], through a scratch array made once."
        m, n = len(starts), self.n
        shape = array.shape[1:]
        key = (array.dtype.str, shape)
        if key not in self._scratch or len(self._scratch[key]) < self.capacity:
            self._scratch[key] = np.empty((self.capacity, *shape), array.dtype)
        out = self._scratch[key][:m]
        ufunc.reduceat(array[:n], starts, axis=0, out=out)
        array[:m] = out

    def _reallocate(self, capacity: int) -> None:
        "Room for `capacity` columns, the held ones copied over (layers added, or more segments than room: rare)."
        self.capacity = capacity
        index = _index_arrays(capacity)
        for name in KEYS:
            index[name][:self.n] = self.index[name][:self.n]
        self.index = index
        for key, arrays in self.tables.items():
            bigger = _allocate(capacity, self.bins, arrays["counts"].dtype)
            for name in TABLES:
                bigger[name][:self.n] = arrays[name][:self.n]
            self.tables[key] = bigger
        self._scratch.clear()

    def fit_within(self, capacity: int) -> None:
        "Hold at most `capacity` columns from now on (more layers share the same bytes): merged to fit, then moved."
        if capacity == self.capacity:
            return
        while self.n > capacity and self._coarsen(2 * self.width):
            self.width *= 2
        self._reallocate(max(capacity, self.n))
        self.touched = self.n

    def regrid(self, key, remap) -> None:
        "A layer's held counts binned anew (an auto range widened): `remap(counts)` gives the new counts."
        if key in self.tables:
            counts = self.tables[key]["counts"]
            counts[:self.n] = remap(counts[:self.n])

    # --- reading -----------------------------------------------------------------------------------
    def columns(self, copy: bool = True) -> dict:
        "The held columns' (fit, epoch, phase, iteration, batches)."
        return {name: (array[:self.n].copy() if copy else array[:self.n]) for name, array in self.index.items()}

    def read(self, keys: list, copy: bool = True) -> dict:
        """key -> (counts, moments, numel, channels) of the held columns: copies in one block per table (a
        block past glibc's mmap threshold goes back to the system when freed), or views when not `copy`
        (valid until the next move: for a reader done with them at once)."""
        present = [key for key in keys if key in self.tables]
        read = {key: _empty_tables(self.n, self.bins) for key in keys if key not in self.tables}
        if not copy:
            read.update({key: {name: self.tables[key][name][:self.n] for name in TABLES} for key in present})
        elif present:
            for name in TABLES:
                for dtype in {self.tables[key][name].dtype for key in present}:
                    same = [key for key in present if self.tables[key][name].dtype == dtype]
                    block = np.empty((len(same), self.n, *self.tables[same[0]][name].shape[1:]), dtype)
                    for row, key in zip(block, same):
                        row[...] = self.tables[key][name][:self.n]
                        read.setdefault(key, {})[name] = row
        return {key: tuple(read[key][name] for name in TABLES) for key in keys}

    @property
    def nbytes(self) -> int:
        "Bytes of every column ever held (resident since) and of the scratch a merge wrote into."
        per_column = sum(arrays[name][:1].nbytes for arrays in self.tables.values() for name in TABLES)
        per_column += sum(array[:1].nbytes for array in self.index.values())
        scratch = sum(array[:min(self.touched, len(array))].nbytes for array in self._scratch.values())
        return per_column * self.touched + scratch

    def reset(self) -> None:
        "Forget every column (the arrays stay, for the next)."
        self.n, self.width = 0, 1


def _index_arrays(capacity: int) -> dict:
    arrays = {name: np.zeros(capacity, np.int64) for name in KEYS if name != "phase"}
    arrays["phase"] = np.zeros(capacity, "<U5")
    return {name: arrays[name] for name in KEYS}


def _allocate(capacity: int, bins: int, dtype) -> dict:
    "One layer's arrays with room for `capacity` columns (reserved: pages become resident as they fill)."
    return dict(counts=np.empty((capacity, bins + 2), dtype), moments=np.empty((capacity, len(MOMENTS))),
                numel=np.empty(capacity, np.int64), channels=np.empty(capacity, np.int64))


def _empty_tables(columns: int, bins: int) -> dict:
    "A layer's arrays where it did not run: no values, NaN moments."
    return dict(counts=np.zeros((columns, bins + 2), np.int64), moments=np.full((columns, len(MOMENTS)), np.nan),
                numel=np.zeros(columns, np.int64), channels=np.zeros(columns, np.int64))


def _tables(part: Recording) -> dict:
    "(kind, name) -> a part's arrays, for every kind it holds."
    return {(kind, name): {table: getattr(source, table)[name] for table in TABLES}
            for kind in part.kinds for source in [part.kind(kind)] for name in source.layer_names}
