"""Moving a recorder's finished rows to the host, and the `Recording`s assembled from them.

Every `move_every` batches, at each epoch's end and when asked (`flush`), each layer's finished rows
leave its device: a CPU buffer's rows are read as numpy views straight into the host's columns
(`colordim.engine.host_columns`, within `host_bytes`); CUDA rows are copied into pinned memory without
waiting, and the copies are read at the next move or when the recording is read (`_Move`). Before they
leave, distributed runs sum them across ranks (`colordim.engine.distributed`), and auto ranges off the
CPU widen as `colordim.engine.ranges.at_move` says. `recording` assembles what the host holds into a
`Recording`; `new_parts` gives writers (TensorBoard, W&B) each move once.

`Moves` is the part of `HistogramRecorder` (`colordim.engine.recorder`) that does this: it reads the
recorder's layers, ledger (`columns`) and host columns.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from .buffer import LayerBuffer
from .distributed import agree_grids, check_same_columns, is_distributed, reduce_rows
from .layer import LayerRecorder
from ..data.layout import CHANNELS, MAX, MOMENTS, NEAR_ZERO, NEG_MIN, NUMEL, SAMPLED, SUM
from . import ranges
from .ranges import regrid
from ..data.options import STREAMS
from ..data.recording import KIND_FIELDS, ROWS, Recording

__all__ = ["Moves"]


class Moves:
    "The host side of a `HistogramRecorder`: moves of finished rows, and the Recording they make."
    def flush(self, reduce: bool = True) -> None:
        """Move the finished columns to the host (one transfer per layer) and reuse the device rows. On CUDA
        the copies go into pinned memory without waiting: the next move or a read of the recording waits."""
        self._finish_move()
        # Under torch.distributed, every rank calls this at the same epoch end and the rows are summed
        # across ranks first (reduce=False: this rank's own rows only).
        used = len(self.columns)
        sizes, shapes = self.columns.sizes(len(self._all))
        if reduce and is_distributed():
            device = self._reduce_device()
            check_same_columns(used, device)
            self._agree_ranges(device)  # every rank's rows on the same bins before they are summed
            if used:
                # a parameter's streams are the same on every rank (DDP keeps the replicas equal): not summed
                summed = [layer for layer in self._all if self._kind_of[layer.index] not in STREAMS]
                for layer in summed:  # a layer this rank never ran takes part with empty rows
                    if layer.buffer is None:
                        layer.buffer = LayerBuffer(max(self.columns.capacity, used + 1), self.bins, device)
                at = [layer.index for layer in summed]
                sizes[:, at] = reduce_rows([layer.buffer for layer in summed], np.ascontiguousarray(sizes[:, at]),
                                           used, self.settings.unit_maxima, device)
        if not used:
            return
        for index, (shape, training) in shapes.items():  # a training batch's shape shows, else the last seen
            if self._kind_of[index] in STREAMS:  # a parameter's own shape is known
                continue
            if training or self._all[index].name not in self._trained_shapes:
                self.shapes[self._all[index].name] = shape
            if training:
                self._trained_shapes.add(self._all[index].name)
        copies, events, open_row = {}, [], self.columns.row
        for layer in self._all:
            counts, moments, event = self._to_host(layer, used)
            copies[layer.index] = counts, moments, layer.binning
            events += [event] if event is not None else []
        if events:  # CUDA copies in flight, waited for later: rows on the CPU among them are copied now
            copies = {index: (np.array(counts), np.array(moments), binning) if isinstance(counts, np.ndarray)
                      else (counts, moments, binning) for index, (counts, moments, binning) in copies.items()}
        self._moving = _Move(copies, sizes, self.columns.moved_to_host(), events)
        if not events:  # nothing on CUDA: the rows are read into the host's columns now, before they are cleared
            self._finish_move()
        for layer in self._all:
            if layer.buffer is not None:  # the device runs this after the copies: the rows are reused
                layer.buffer.clear(slice(0, used))
                if open_row is not None:
                    layer.buffer.move(open_row, 0)

    def _finish_move(self) -> None:
        "The last move's rows as host arrays (waiting for its CUDA copies, if any), added to the host's columns."
        if self._moving is None:
            return
        move, self._moving = self._moving, None
        for event in move.events:
            event.synchronize()
        host = {}
        for layer in self._all:
            counts, moments, binning = move.copies[layer.index]
            counts, moments = _as_numpy(counts), _as_numpy(moments)
            if binning is not None and layer.binning != binning:  # widened since (CPU outputs, in flight)
                counts = regrid(counts, binning, layer.binning)
            host[layer.index] = self._widened(layer, counts, moments) if layer.widens_at_flush else (counts, moments)
        self._keep(self._recording(host, move.sizes, move.index))

    def _keep(self, part: Recording) -> None:
        "One move's Recording into the host's columns (within `host_bytes`, merging neighbours in place)."
        for layer in self._all:  # an auto range widened since its columns went to the host: they follow, exactly
            if layer.host_binning is not None and layer.host_binning != layer.binning:
                old, new = layer.host_binning, layer.binning
                self.host.regrid(self._key(layer), lambda counts: regrid(counts, old, new))
            layer.host_binning = layer.binning
        self.host.append(part)
        if self._unsent is not None:  # a copy: the part's arrays may be views of rows reused next
            self._unsent.append(part.select())

    def _key(self, layer: LayerRecorder) -> tuple:
        "(kind, name): how the host's columns name a layer."
        return self._kind_of[layer.index], layer.name

    def _widened(self, layer: LayerRecorder, counts: np.ndarray, moments: np.ndarray):
        """These moved rows with the layer's auto range widened as `ranges.at_move` says, merged to it. On the
        CPU it held them already; elsewhere this is where it grows (no sync per batch), and values that were
        outside it before stay in the edge bins."""
        binning = layer.binning
        wider = ranges.at_move(binning, counts, moments[:, NEG_MIN], moments[:, MAX], self.settings.stats)
        if wider == binning:
            return counts, moments
        layer.rebin(wider)  # the open row, still on the device
        return regrid(counts, binning, wider), moments

    def _agree_ranges(self, device) -> None:
        "Distributed: every auto layer on the widest of the ranks' ranges (which holds each rank's bins)."
        auto = [layer for layer in self._all if layer.auto]
        if not auto:
            return
        for layer, grid in zip(auto, agree_grids([layer.binning and layer.binning.grid for layer in auto], device)):
            if grid is None:
                continue
            agreed = ranges.widest(self.bins, grid, layer.linthresh)
            if layer.binning is None:
                layer.binning = agreed
            elif agreed != layer.binning:
                layer.rebin(agreed)

    def _to_host(self, layer: LayerRecorder, used: int):
        """Layer's first `used` rows on the host: views of a CPU buffer (read before `flush` clears them), pinned
        tensors being filled and their CUDA event, or numpy copies."""
        if layer.buffer is None:  # this layer never ran
            return *self._empty(used), None
        return layer.grown().start_to_host(used)  # as long as the others: a layer may have missed the last columns

    def _empty(self, columns: int) -> tuple[np.ndarray, np.ndarray]:
        "Host counts and moments of `columns` columns where a layer did not run: no values, NaN moments."
        return np.zeros((columns, self.bins + 2), np.int64), np.full((columns, len(MOMENTS)), np.nan)

    def _reduce_device(self):
        devices = [layer.buffer.device for layer in self._all if layer.buffer is not None]
        if devices:
            return devices[0]
        backend = torch.distributed.get_backend()
        return torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")

    def _shown(self) -> list[int]:
        "The slots a Recording shows, in the model's order: a container's parts stand in for the container."
        layers = self.layers["activation"]  # a container's module shows too if it gave a bare tensor first
        return sorted((slot for slot in range(len(layers)) if slot not in self.routing.containers or layers[slot].last),
                      key=lambda slot: (layers[slot].module_slot, slot))

    def _recording(self, host: dict, sizes: np.ndarray, index: list) -> Recording:
        """One move's Recording: per layer index its host (counts, moments), `sizes` (columns, layers, 3) and
        the columns' index; a sampled output's counts and sums scaled to stand for the whole output."""
        fit, epoch, phase, iteration = zip(*index) if index else ((), (), (), ())
        columns = dict(fit=np.array(fit, dtype=np.int64), epoch=np.array(epoch, dtype=np.int64),
                       phase=np.array(phase, dtype="<U5"), iteration=np.array(iteration, dtype=np.int64))
        tables = {}
        for layer in self._all:
            counts, moments = host[layer.index]
            numel, sampled = sizes[:, layer.index, NUMEL], sizes[:, layer.index, SAMPLED]
            if (sampled < numel).any():  # a sample stands for its whole output: scale its counts up
                scale = np.where(sampled > 0, numel / np.maximum(sampled, 1), 0.0)
                counts = counts * scale[:, None]
                moments[:, SUM:NEAR_ZERO + 1] *= scale[:, None]  # sums and counts taken on the sample
            tables[self._key(layer)] = counts, moments, numel, sizes[:, layer.index, CHANNELS]
        return self._assemble(tables, columns)

    def _assemble(self, tables: dict, columns: dict) -> Recording:
        """The activations' Recording of the shown layers, with the other kinds' as its `.grads`, `.params` ...:
        `tables` maps (kind, name) to (counts, moments, numel, channels); `columns`, the columns' fit, epoch ..."""
        shown = self._shown()
        kinds = {}
        for kind, layers in self.layers.items():
            per_step = kind in STREAMS  # a parameter's streams: every one shows, with its own shape and type
            shown_layers = layers if per_step else [layers[slot] for slot in shown]
            table = {layer.name: tables[kind, layer.name] for layer in shown_layers}
            kinds[kind] = Recording(
                counts={name: arrays[0] for name, arrays in table.items()},
                moments={name: arrays[1] for name, arrays in table.items()} if self.settings.stats else None,
                numel={name: arrays[2] for name, arrays in table.items()},
                channels={name: arrays[3] for name, arrays in table.items()},
                edges={layer.name: layer.edges() for layer in shown_layers},
                shapes={layer.name: tuple(self.steps.params[layer.name].shape) if per_step
                        else self.shapes.get(layer.name, ()) for layer in shown_layers},
                linthresh={layer.name: layer.linthresh for layer in shown_layers}, **columns,
                near_zero_threshold=self.settings.near_zero,
                skipped={layer.name: layer.skipped for layer in shown_layers if layer.skipped} if per_step
                else dict(self.skipped),
                types={layer.name: self.param_types[layer.name] if per_step else self._types[layer.module_slot]
                       for layer in shown_layers},
                auto={layer.name: layer.auto for layer in shown_layers},
                units={layer.name: ROWS if per_step else layer.units for layer in shown_layers})
        recording = kinds.pop("activation")
        for kind, part in kinds.items():
            setattr(recording, KIND_FIELDS[kind], part)
        return recording

    @property
    def recording(self) -> Recording:
        "Everything recorded so far, on the host (copies what is still on the device): a copy of its own to keep."
        return self._read(copy=True)

    def view(self) -> Recording:
        """Everything recorded so far, as views of the host's columns: for a reader done with it before the
        next batch (a picture, a file); the next move may merge those columns in place."""
        return self._read(copy=False)

    def _read(self, copy: bool) -> Recording:
        if not is_distributed():  # distributed: whole epochs only, summed at their ends on every rank
            self.flush()
        self._finish_move()
        keys = [self._key(layer) for layer in self._all]
        return self._assemble(self.host.read(keys, copy=copy), self.host.columns(copy=copy))

    def new_parts(self) -> list[Recording]:
        """The Recordings of the moves to the host since the last call, as they came (each column once, never
        merged with an earlier one): for writers that send each batch once. The first call turns this on and
        returns everything so far, as one."""
        if self._unsent is None:
            everything = self.view()
            self._unsent = []  # kept from the next move on
            return [everything] if len(everything) else []
        if not is_distributed():
            self.flush()
        self._finish_move()
        parts, self._unsent = self._unsent, []
        return parts


class _Move(NamedTuple):
    "A move to the host: per layer index (counts, moments, binning), the rows' sizes and index, CUDA events."
    copies: dict
    sizes: np.ndarray
    index: list
    events: list


def _as_numpy(array) -> np.ndarray:
    "A host copy as numpy (a pinned tensor's: a view, which keeps its block from torch's cache until dropped)."
    return array.numpy() if isinstance(array, torch.Tensor) else array
