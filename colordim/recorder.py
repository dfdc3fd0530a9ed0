"""`HistogramRecorder`: hooks on chosen modules that histogram each output on its own device, no sync."""
from __future__ import annotations

import math
from functools import partial

import numpy as np
import torch
from torch import nn

from .recording import PHASES, Recording

__all__ = ["HistogramRecorder", "check_bins", "check_range", "histogram_counts"]

# histc counts in float32: a bin is exact up to 2**24, so bigger outputs are counted in chunks.
CHUNK = 2 ** 24


def check_bins(bins) -> int:
    "`bins` as an int >= 1, or a ValueError that says so."
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 1:
        raise ValueError(f"bins: expected an int >= 1 (rows of the picture, e.g. 100), got {bins!r}")
    return int(bins)


def check_range(value) -> tuple[float, float]:
    "`range` as finite floats (low, high) with low < high, or a ValueError that says so."
    try:
        low, high = (float(end) for end in value)
    except (TypeError, ValueError):
        raise ValueError(f"range: expected two numbers (low, high) such as (-10, 10), got {value!r}") from None
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ValueError(f"range: expected finite low < high, such as (-10, 10), got {value!r}")
    return low, high


def histogram_counts(x: torch.Tensor, bins: int, low: float, high: float, out: torch.Tensor) -> None:
    "Add the counts of `x` to `out` (bins + 2,): underflow, `bins` bins over [low, high], overflow."
    x = x.detach().reshape(-1)
    deterministic_cuda = x.is_cuda and torch.are_deterministic_algorithms_enabled()
    for chunk in (x,) if x.numel() <= CHUNK else x.split(CHUNK):
        chunk = chunk.float()  # histc counts in the input's dtype; CPU bf16 histc does not exist
        if deterministic_cuda:  # CUDA histc has no deterministic kernel and raises
            out.add_(_counts_by_index(chunk, bins, low, high))
            continue
        # Always pass low and high: with min == max, CUDA histc reads the range back to the host.
        out[1:-1].add_(torch.histc(chunk, bins, low, high).long())
        # histc ignores values outside the range; count them ourselves. NaN lands in neither.
        outside = torch.stack([(chunk < low).sum(dtype=torch.int32), (chunk > high).sum(dtype=torch.int32)])
        out[0::bins + 1].add_(outside)


def _counts_by_index(x: torch.Tensor, bins: int, low: float, high: float) -> torch.Tensor:
    "Histogram by bin index and a deterministic accumulate: (bins + 2,) counts, like histc plus edges."
    index = ((x - low) * (bins / (high - low))).floor_().clamp_(-1, bins).add_(1)  # under: 0, over: bins + 1
    index = torch.where(x == high, bins, index)  # the top edge belongs to the last bin, as in histc
    index = index.nan_to_num_(bins + 2).long()  # NaN goes to an extra bin that is dropped
    counts = torch.zeros(bins + 3, dtype=torch.int64, device=x.device)
    counts.index_put_((index,), torch.ones((), dtype=torch.int64, device=x.device), accumulate=True)
    return counts[:-1]


class HistogramRecorder:
    "Record a histogram of each module's output per column (batch), kept on the output's device."
    def __init__(self,
        modules: dict,        # {name: module}, e.g. from `colordim.layers.find_layers`
        bins: int = 100,      # rows of the picture
        range=(-10, 10),      # values outside are counted in an underflow and an overflow bin
    ):
        if not modules:
            raise ValueError("modules: nothing to record; pass at least one {name: module}")
        self.modules = dict(modules)
        self.names = list(self.modules)
        self.bins = check_bins(bins)
        self.low, self.high = check_range(range)
        self.edges = np.linspace(self.low, self.high, self.bins + 1)
        self.shapes, self.skipped = {}, {}
        self._handles = []
        self._buffers = [None] * len(self.names)  # per layer (capacity, bins + 2) int64, on its device
        self._capacity = 0                        # rows every buffer will have
        self._numel = np.zeros((0, len(self.names)), dtype=np.int64)  # host: values seen per row
        self._index = []                          # host: (fit, epoch, phase, iteration) per committed row
        self._row = None                          # the row hooks write into now, or None: not recording
        self._pending = None                      # its (fit, epoch, phase, iteration)
        self._host = []                           # Recordings already copied to the host

    # --- hooks -------------------------------------------------------------------------------------
    def attach(self) -> "HistogramRecorder":
        "Hook every module (after removing any hooks of ours still there)."
        self.detach()
        self._buffers = [None] * len(self.names)  # allocated again on the device of the next output
        self._handles = [module.register_forward_hook(partial(self._hook, slot))
                         for slot, module in enumerate(self.modules.values())]
        return self

    def detach(self) -> None:
        "Remove our hooks, drop an unfinished column, keep every finished one. Safe to call twice."
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.abandon_column()
        self.flush()

    close = detach

    @property
    def attached(self) -> bool:
        "Whether our hooks are on the modules."
        return bool(self._handles)

    def __enter__(self): return self.attach()
    def __exit__(self, *exc): self.detach()

    def _hook(self, slot, module, inputs, output):
        row = self._row
        if row is None:  # between batches or outside a fit: nothing to record
            return
        name = self.names[slot]
        if not isinstance(output, torch.Tensor):
            self.skipped[name] = f"output is a {type(output).__name__}, not a tensor"
            return
        if not output.is_floating_point():
            self.skipped[name] = f"output dtype {output.dtype} is not floating point"
            return
        histogram_counts(output, self.bins, self.low, self.high, self._buffer(slot, output.device)[row])
        self._numel[row, slot] += output.numel()  # shape metadata: known on the host, no sync
        if self._pending[2] == "train" or name not in self.shapes:  # a training batch's shape is the one to show
            self.shapes[name] = tuple(output.shape)

    def _buffer(self, slot, device) -> torch.Tensor:
        "Layer `slot`'s buffer, allocated (or grown) on `device` when it must be."
        buffer = self._buffers[slot]
        if buffer is None or buffer.shape[0] < self._capacity:
            grown = torch.zeros(self._capacity, self.bins + 2, dtype=torch.int64, device=device)
            if buffer is not None:
                grown[:buffer.shape[0]].copy_(buffer)
            self._buffers[slot] = buffer = grown
        return buffer

    # --- columns (called by the host between batches) ----------------------------------------------
    def reserve(self, columns: int) -> None:
        "Make room for `columns` more columns at once (say, an epoch's batches), so none grows per batch."
        self._set_capacity(len(self._index) + columns + 1)

    def begin_column(self, phase: str = "train", epoch: int = 0, fit: int = 0, iteration: int = 0) -> None:
        "Start recording a column: hooks write into it until `end_column` or `abandon_column`."
        if phase not in PHASES:
            raise ValueError(f"phase: {phase!r} is not a phase; use one of {PHASES}")
        self.abandon_column()
        row = len(self._index)
        if row >= self._capacity:  # no reserve() or an epoch longer than announced: grow geometrically
            self._set_capacity(max(16, 2 * self._capacity))
        self._row, self._pending = row, (fit, epoch, phase, iteration)

    def end_column(self) -> None:
        "Keep the open column."
        if self._row is not None:
            self._index.append(self._pending)
            self._row = self._pending = None

    def abandon_column(self) -> None:
        "Drop the open column (an interrupted batch): its slot is cleared for the next one."
        if self._row is None:
            return
        for buffer in self._buffers:
            if buffer is not None:
                buffer[self._row].zero_()
        self._numel[self._row] = 0
        self._row = self._pending = None

    def _set_capacity(self, rows: int) -> None:
        if rows > self._capacity:  # device buffers follow in `_buffer`, on their own device
            self._numel = np.concatenate([self._numel, np.zeros((rows - self._capacity, len(self.names)), np.int64)])
            self._capacity = rows

    # --- to the host -------------------------------------------------------------------------------
    def flush(self) -> None:
        "Copy the finished columns to the host (one transfer per layer) and reuse the device rows."
        used = len(self._index)
        if not used:
            return
        counts = {}
        for slot, name in enumerate(self.names):
            buffer = self._buffers[slot]
            if buffer is None:  # this layer never ran
                counts[name] = np.zeros((used, self.bins + 2), dtype=np.int64)
                continue
            counts[name] = buffer[:used].to("cpu", copy=True).numpy()  # a copy: on the CPU, .cpu() aliases
            buffer[:used].zero_()
            if self._row is not None:  # a column is open: move it to the first row
                buffer[0].copy_(buffer[self._row])
                buffer[self._row].zero_()
        numel, open_numel = self._numel[:used].copy(), self._numel[self._row].copy() if self._row is not None else None
        self._numel[:used + 1] = 0
        if open_numel is not None:
            self._numel[0], self._row = open_numel, 0
        self._host.append(self._to_recording(counts, numel, self._index))
        self._index = []

    @property
    def recording(self) -> Recording:
        "Everything recorded so far, on the host (copies what is still on the device)."
        self.flush()
        if not self._host:
            return self._to_recording({name: np.zeros((0, self.bins + 2), dtype=np.int64) for name in self.names},
                                      np.zeros((0, len(self.names)), dtype=np.int64), [])
        if len(self._host) > 1:
            self._host = [Recording.concat(self._host)]
        recording = self._host[0]
        recording.shapes.update(self.shapes)
        recording.skipped.update(self.skipped)
        return recording

    def reset(self) -> None:
        "Forget everything recorded (the hooks stay as they are)."
        self.abandon_column()
        self._index, self._host = [], []

    def _to_recording(self, counts: dict, numel: np.ndarray, index: list) -> Recording:
        "A host Recording of some columns: `counts` per layer, `numel` (columns, layers), `index` per column."
        fit, epoch, phase, iteration = zip(*index) if index else ((), (), (), ())
        return Recording(
            counts=counts, numel={name: numel[:, slot] for slot, name in enumerate(self.names)},
            edges={name: self.edges for name in self.names},
            shapes={name: self.shapes.get(name, ()) for name in self.names},
            fit=np.array(fit, dtype=np.int64), epoch=np.array(epoch, dtype=np.int64),
            phase=np.array(phase, dtype="<U5"), iteration=np.array(iteration, dtype=np.int64),
            skipped=dict(self.skipped))
