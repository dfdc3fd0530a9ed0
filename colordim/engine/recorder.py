"""`HistogramRecorder`: torch forward hooks on chosen modules; each output goes to its layer's recorder.

The hot path, hook to buffer, in order: `colordim.engine.hooks.Hook` (eager even under torch.compile) ->
`Routing.forward_hook` (`colordim.engine.routing`: is a column open? which layer: a plain tensor, a
container's part, a repeat call?) ->
`LayerRecorder.add` (`colordim.engine.layer`: the plan for this shape, the buffer row) -> the plan
(`colordim.engine.plans`: one compiled call on the CPU, a few torch ops elsewhere, no host sync). Between
batches the host opens and ends columns (`colordim.engine.ledger`); `flush` moves finished rows to the
host as a `Recording`, summed across ranks first when distributed (`colordim.engine.distributed`).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from .buffer import LayerBuffer
from .ledger import DEVICE_BYTES, HOST_BYTES, MOVE_EVERY, Ledger
from .distributed import agree_grids, check_same_columns, is_distributed, reduce_rows
from .hooks import hook_forward, hook_forward_pre
from .host_columns import HostColumns
from .layer import LayerRecorder, Settings
from .routing import CALLS, Routing
from ..data.layout import CHANNELS, MAX, MOMENTS, NEAR_ZERO, NEG_MIN, NUMEL, SAMPLED, SIZES, SUM
from ..data.options import check_bins, check_near_zero, check_phase, check_range, check_sample, check_scale, check_units
from . import ranges
from .ranges import regrid
from .units import resolve_units
from ..data.recording import Recording

__all__ = ["HistogramRecorder", "CALLS"]


class HistogramRecorder:
    "Record a histogram (and statistics) of each module's output, and its gradient, per column, on its device."
    def __init__(self,
        modules: dict,        # {name: module}, e.g. from `colordim.engine.find_layers.find_layers`
        bins: int = 100,      # rows of the picture
        range=(-10, 10),      # values outside are counted in an underflow and an overflow bin; or "auto"
        scale: str = "linear",  # or "symlog": bins uniform in sign(x) log1p(|x| / linthresh)
        linthresh: float = 1.0,  # where symlog turns from linear to logarithmic
        stats: bool = True,   # also mean, std, near-zero share, min, max and dead-unit rate per batch
        near_zero: float = 0.05,  # |x| <= near_zero counts as near zero
        sample: int = None,   # histogram at most this many values of each output (a fixed random subset)
        max_columns: int = 10_000,  # on the host; past this, neighbouring columns merge pairwise
        move_every: int = MOVE_EVERY,  # finished columns move to the host at least every this many batches
        device_bytes: int = DEVICE_BYTES,  # the device rows of all layers stay within this (fewer rows if need be)
        host_bytes: int = HOST_BYTES,  # the host recording too (fewer columns than max_columns if need be)
        grads: bool = False,  # also histogram each output's gradient, in backward: `recording.grads`
        grad_range="auto",    # the gradients' range: "auto" (from the first backward) or (low, high)
        grad_scale: str = "linear",  # or "symlog"
        units=None,           # where each layer's units are (dead units): {name: "channels" | "features"}, one of
                              # those for all, or None: guessed from the modules (`colordim.engine.units`)
    ):
        if not modules:
            raise ValueError("modules: nothing to record; pass at least one {name: module}")
        self.modules = dict(modules)
        self._types = [type(module).__name__ for module in self.modules.values()]  # per module slot
        complete = isinstance(units, dict) and units.keys() >= self.modules.keys()  # as record() and the callback
        units = check_units(units) if complete else resolve_units(None, self.modules, units)  # resolve it
        self._units = [units[name] for name in self.modules]  # per module slot
        # one ledger for every layer and kind: they share columns
        self.columns = Ledger(max_columns, move_every, device_bytes, host_bytes)
        self.settings = Settings(self.columns, check_bins(bins), bool(stats), check_near_zero(near_zero),
                                 check_sample(sample))
        self._kinds = {"activation": (check_range(range), check_scale(scale, linthresh))}
        if grads:
            self._kinds["grad"] = (check_range(grad_range), check_scale(grad_scale, linthresh))
        # Per slot (the modules', then each tensor of a container output, added when first seen), one
        # LayerRecorder per kind; `_all`: every LayerRecorder, by its index.
        self.layers, self._all, self._kind_of = {kind: [] for kind in self._kinds}, [], []  # _kind_of: per index
        self.host = None
        # which layer each output goes to (`colordim.engine.routing`): it adds slots as parts and repeat calls appear
        self.routing = Routing(self.layers, self.columns, self._add_slot, len(self.modules))
        for slot, name in enumerate(self.modules):
            self._add_slot(name, slot)
        # On the host: every column moved so far, in arrays made once within `host_bytes` (`colordim.engine.host_columns`)
        self.host = HostColumns(self.columns.max_columns, self.bins)
        self.shapes = {}  # name -> the shape of its last training output (or last output, with none yet)
        self._trained_shapes = set()  # names whose shape came from a training batch
        self._hooks = []  # our hooks
        self._moving = None  # the move still in flight: CUDA copies not waited for yet (`_Move`)
        self._unsent = None  # the moves' Recordings kept for writers until `new_parts()` takes them (None: not asked)

    @property
    def bins(self) -> int:
        return self.settings.bins

    @property
    def ended(self) -> int:
        "Columns ended so far (never reset): what is new since a caller last looked."
        return self.columns.ended

    @property
    def skipped(self) -> dict:
        "name -> why a layer's output was not recorded."
        return {layer.name: layer.skipped for layer in self.layers["activation"] if layer.skipped}

    @property
    def names(self) -> list[str]:
        "Every slot's name: the modules', then the tensors of container outputs."
        return [layer.name for layer in self.layers["activation"]]

    def without_tensors(self) -> dict:
        """{name: why} for each module none of whose outputs so far held a floating-point tensor, not even
        as one part of a container: nothing of it can be recorded. A container with some tensors is
        recorded; its other parts are only listed in `skipped`."""
        layers_of = {}
        for layer in self.layers["activation"]:
            layers_of.setdefault(layer.module_slot, []).append(layer)
        missing = {}
        for layers in layers_of.values():
            skipped = [layer for layer in layers if layer.skipped]
            if skipped and all(layer.last is None for layer in layers):
                missing[skipped[0].name] = skipped[0].skipped
        return missing

    def _add_slot(self, name: str, module_slot: int) -> int:
        "A new slot: one LayerRecorder per kind (`module_slot`: the module it is, or is a part of)."
        for kind, (value_range, linthresh) in self._kinds.items():
            self._all.append(LayerRecorder(name, len(self._all), self.settings, value_range, linthresh, module_slot,
                                           self._units[module_slot]))
            self.layers[kind].append(self._all[-1])
            self._kind_of.append(kind)
        self.columns.budget(len(self._all), self.bins)  # more layers: fewer rows within the same bytes
        if self.host is not None:
            self.host.fit_within(self.columns.max_columns)
        return len(self.layers["activation"]) - 1

    # --- hooks -------------------------------------------------------------------------------------
    def attach(self, root=None) -> "HistogramRecorder":
        """Hook every module (after removing any hooks of ours still there). `root`: the model, whose every
        forward is one forward pass: a module called twice in one is two layers, in two passes one."""
        self.detach()
        self.settings.unit_maxima = self.settings.stats and is_distributed()  # to merge dead units exactly
        for layer in self._all:
            layer.buffer = None  # made again on the device of the next output (the model may have moved)
        grads = "grad" in self.layers
        routing = self.routing
        self._hooks = [hook_forward(module, routing.forward_hook(slot), routing.gradient_in_graph(slot) if grads else None)
                       for slot, module in enumerate(self.modules.values())]
        if root is not None:  # before the layers' hooks: a pre-hook runs before the root's forward
            self._hooks.append(hook_forward_pre(root, routing.new_forward))
        return self

    def detach(self) -> None:
        "Remove our hooks, drop an unfinished column, keep every finished one. Safe to call twice."
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        self.abandon_column()
        self.flush(reduce=False)  # no collective here: detach also runs on one crashing rank alone

    @property
    def attached(self) -> bool:
        "Whether our hooks are on the modules."
        return bool(self._hooks)

    def __enter__(self): return self.attach()
    def __exit__(self, *exc): self.detach()

    # --- columns (called by the host between batches) ----------------------------------------------
    def reserve(self, columns: int) -> None:
        "Make room for `columns` more columns at once (say, an epoch's batches), so none grows per batch."
        self.columns.reserve(columns)

    def begin_column(self, phase: str = "train", epoch: int = 0, fit: int = 0, iteration: int = 0) -> None:
        "Start recording a column: hooks write into it until `end_column` or `abandon_column`."
        check_phase(phase)
        self.abandon_column()
        self.routing.new_forward()
        self.routing.waiting.clear()
        if self.columns.full or self._widen_now():  # the device rows are full (every move_every batches): to the host
            self.flush()
        self.columns.open(phase, epoch=epoch, fit=fit, iteration=iteration)

    def _widen_now(self) -> bool:
        "Whether to move rows now so that auto ranges off the CPU widen early (`ranges.move_early`)."
        return ranges.move_early(self.columns.ended) and any(layer.widens_at_flush for layer in self._all)

    def end_column(self) -> None:
        "Keep the open column."
        self.columns.end()

    def abandon_column(self) -> None:
        "Drop the open column (an interrupted batch): its row is cleared for the next one."
        row = self.columns.abandon()
        if row is not None:
            for layer in self._all:
                layer.clear(row)

    # --- to the host -------------------------------------------------------------------------------
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
                for layer in self._all:  # a layer this rank never ran takes part with empty rows
                    if layer.buffer is None:
                        layer.buffer = LayerBuffer(max(self.columns.capacity, used + 1), self.bins, device)
                sizes = reduce_rows([layer.buffer for layer in self._all], sizes, used, self.settings.unit_maxima,
                                    device)
        if not used:
            return
        for index, (shape, training) in shapes.items():  # a training batch's shape shows, else the last seen
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
        """The activations' Recording of the shown layers, with the gradients' as its `.grads`: `tables` maps
        (kind, name) to (counts, moments, numel, channels); `columns`, the columns' fit, epoch, phase ..."""
        shown = self._shown()
        kinds = {}
        for kind, layers in self.layers.items():
            shown_layers = [layers[slot] for slot in shown]
            table = {layer.name: tables[kind, layer.name] for layer in shown_layers}
            kinds[kind] = Recording(
                counts={name: arrays[0] for name, arrays in table.items()},
                moments={name: arrays[1] for name, arrays in table.items()} if self.settings.stats else None,
                numel={name: arrays[2] for name, arrays in table.items()},
                channels={name: arrays[3] for name, arrays in table.items()},
                edges={layer.name: layer.edges() for layer in shown_layers},
                shapes={layer.name: self.shapes.get(layer.name, ()) for layer in shown_layers},
                linthresh={layer.name: layer.linthresh for layer in shown_layers}, **columns,
                near_zero_threshold=self.settings.near_zero, skipped=dict(self.skipped),
                types={layer.name: self._types[layer.module_slot] for layer in shown_layers},
                auto={layer.name: layer.auto for layer in shown_layers},
                units={layer.name: layer.units for layer in shown_layers})
        kinds["activation"].grads = kinds.get("grad")
        return kinds["activation"]

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

    def reset(self) -> None:
        "Forget everything recorded (the hooks stay as they are)."
        self.abandon_column()
        for layer in self._all:  # columns not yet flushed: their device rows are reused from row 0
            layer.clear(slice(0, len(self.columns)))
        self.columns.reset()
        self.host.reset()
        self._moving, self._unsent = None, None if self._unsent is None else []

    @property
    def device_nbytes(self) -> int:
        "Bytes of the rows on the device (or in CPU memory, for CPU outputs), every layer's."
        return sum(layer.buffer.nbytes for layer in self._all if layer.buffer is not None)

    @property
    def host_nbytes(self) -> int:
        """Bytes the recording holds on the host: its columns (every column ever held: their pages stay
        resident), a move in flight and the moves kept for writers."""
        moving = 0 if self._moving is None else sum(
            array.nbytes for counts, moments, _ in self._moving.copies.values() for array in (counts, moments))
        return self.host.nbytes + moving + sum(part.nbytes for part in self._unsent or ())

    @property
    def nbytes(self) -> int:
        "Bytes held: the device rows and the host recording."
        return self.device_nbytes + self.host_nbytes


class _Move(NamedTuple):
    "A move to the host: per layer index (counts, moments, binning), the rows' sizes and index, CUDA events."
    copies: dict
    sizes: np.ndarray
    index: list
    events: list


def _as_numpy(array) -> np.ndarray:
    "A host copy as numpy (a pinned tensor's: a view, which keeps its block from torch's cache until dropped)."
    return array.numpy() if isinstance(array, torch.Tensor) else array
