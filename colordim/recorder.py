"""`HistogramRecorder`: hooks on chosen modules that summarise each output on its own device, no sync."""
from __future__ import annotations

from functools import partial

import numpy as np
import torch

from .checks import (auto_range, check_bins, check_max_columns, check_near_zero, check_range, check_sample,
                     check_scale)
from .device_rows import DeviceRows
from .distributed import all_reduce, check_same_columns, is_distributed
from .hooks import hook_forward
from .recording import MOMENTS, PHASES, Recording, bin_edges, symlog
from .plans import SharedArrays, make_plan
from .summaries import Scratch

__all__ = ["HistogramRecorder", "Recorders"]

NUMEL, CHANNELS, SAMPLED = 0, 1, 2  # what the host counts per row and layer, beside the device rows


class HistogramRecorder:
    "Record a histogram (and statistics) of each module's output per column (batch), on the output's device."
    def __init__(self,
        modules: dict,        # {name: module}, e.g. from `colordim.layers.find_layers`
        bins: int = 100,      # rows of the picture
        range=(-10, 10),      # values outside are counted in an underflow and an overflow bin; or "auto"
        scale: str = "linear",  # or "symlog": bins uniform in sign(x) log1p(|x| / linthresh)
        linthresh: float = 1.0,  # where symlog turns from linear to logarithmic
        stats: bool = True,   # also mean, std, near-zero share, min, max and dead-unit rate per batch
        near_zero: float = 0.05,  # |x| <= near_zero counts as near zero
        sample: int = None,   # histogram at most this many values of each output (a fixed random subset)
        max_columns: int = 10_000,  # past this, neighbouring columns merge pairwise: memory stays bounded
        grads: bool = False,  # histogram the gradient of each output (in backward) instead of the output
    ):
        if not modules:
            raise ValueError("modules: nothing to record; pass at least one {name: module}")
        self.modules = dict(modules)
        self.names = list(self.modules)
        self.bins = check_bins(bins)
        self.range, self.linthresh = check_range(range), check_scale(scale, linthresh)
        # per layer: (low, high) in activation units and as binned (symlog'd when asked); None until
        # an "auto" range has seen the layer's first output
        self._limits = [None if self.range == "auto" else self.range] * len(self.names)
        self._bin_limits = [None if self.range == "auto" else self._binned(self.range)] * len(self.names)
        self.stats, self.near_zero, self.sample = bool(stats), check_near_zero(near_zero), check_sample(sample)
        self._plans = {}  # (slot, shape, device) -> how such outputs are summarised (`colordim.plans`)
        self._last = [None] * len(self.names)  # per layer: the plan of its last output (the next is alike)
        self._used = []  # (slot, plan) of each output in the open column: the host counts sizes at its end
        self._sizes_of = {}  # (slot, plan) sequence of a column -> its sizes and shapes (`_column_sizes`)
        self._scratch = Scratch()  # CPU buffers the size of the biggest output, reused by every hook
        self._shared = SharedArrays()  # the compiled kernel's scratch, shared by this recorder's plans
        self.max_columns, self._width = check_max_columns(max_columns), 1  # batches per column once merging started
        self.grads = bool(grads)
        self.shapes, self.skipped = {}, {}
        self._handles = []
        self._rows = [None] * len(self.names)  # per layer: its DeviceRows, made on the first output's device
        self._unit_maxima = False  # distributed: keep per-unit maxima (set at attach)
        # A module that returns a tuple, list or dict is recorded as one layer per tensor in it
        # ("rnn[0]", "head['logits']"): those slots are added when first seen, after the modules' own.
        self._parent = [slot for slot, _ in enumerate(self.names)]  # each slot's module slot
        self._containers, self._part_slots = set(), {}  # module slots that returned containers; (slot, path) -> slot
        self._capacity = 0                     # rows every layer will have
        self._row_sizes = []  # host, per committed row: its outputs' (slot, plan), or (layers, 3) NUMEL, CHANNELS, SAMPLED
        self._index = []                       # host: (fit, epoch, phase, iteration) per committed row
        self._row = None                       # the row hooks write into now, or None: not recording
        self._pending = None                   # its (fit, epoch, phase, iteration)
        self._host = []                        # Recordings already copied to the host

    # --- hooks -------------------------------------------------------------------------------------
    def attach(self) -> "HistogramRecorder":
        "Hook every module (after removing any hooks of ours still there): `colordim.hooks`."
        self.detach()
        self._rows = [None] * len(self.names)  # made again on the device of the next output
        self._unit_maxima = self.stats and is_distributed()  # to merge dead units across ranks exactly
        hook = self._gradient_forward_hook if self.grads else self._forward_hook
        self._handles = [hook_forward(module, hook(slot)) for slot, module in enumerate(self.modules.values())]
        return self

    def detach(self) -> None:
        "Remove our hooks, drop an unfinished column, keep every finished one. Safe to call twice."
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.abandon_column()
        self.flush(reduce=False)  # no collective here: detach also runs on one crashing rank alone

    close = detach

    @property
    def attached(self) -> bool:
        "Whether our hooks are on the modules."
        return bool(self._handles)

    def __enter__(self): return self.attach()
    def __exit__(self, *exc): self.detach()

    def _forward_hook(self, slot: int):
        """Module `slot`'s forward hook. It runs once per layer and batch between the layers' own work,
        which has just evicted it from the caches: there every step costs several times what it costs
        in a loop, so the common case (a tensor like the layer's last one) takes as few as it can."""
        def hook(module, inputs, output):
            row = self._row
            if row is None:  # between batches or outside a fit: nothing to record
                return
            plan, rows = self._last[slot], self._rows[slot]
            if plan is not None and rows is not None and plan.fits(output) and rows.size >= self._capacity:
                per_unit = plan.add(output, rows, row)
                if self._unit_maxima:
                    rows.keep_unit_max(row, per_unit)
                self._used.append(plan.used)
            elif isinstance(output, torch.Tensor):
                self._record(slot, output)
            else:
                for part, value in self._parts(slot, output):
                    self._record(part, value)
        return hook

    def _gradient_forward_hook(self, slot: int):
        "Module `slot`'s forward hook when gradients are recorded: a hook on each output tensor."
        def hook(module, inputs, output):
            if self._row is None:
                return
            for part, value in self._parts(slot, output):
                if isinstance(value, torch.Tensor) and value.requires_grad:
                    # a hook on the output tensor, not register_full_backward_hook: in-place ops break that
                    value.register_hook(partial(self._gradient_hook, part))
                elif not isinstance(value, torch.Tensor) or not value.is_floating_point():
                    self._record(part, value)  # the reason it is skipped
        return hook

    def _parts(self, slot, output, path=""):
        "[(slot, value)]: the output itself, or one slot per leaf of a tuple, list or dict of them."
        if not isinstance(output, (tuple, list, dict)):
            return [(slot if not path else self._part_slot(slot, path), output)]
        self._containers.add(slot)
        items = output.items() if isinstance(output, dict) else enumerate(output)
        return [part for key, value in items if value is not None
                for part in self._parts(slot, value, f"{path}[{key!r}]")]

    def _part_slot(self, slot, path) -> int:
        "The slot of one tensor in a module's container output, added when first seen."
        if (slot, path) not in self._part_slots:
            self._part_slots[(slot, path)] = len(self.names)
            self.names.append(self.names[slot] + path)
            self._parent.append(slot)
            self._rows.append(None)
            self._last.append(None)
            self._limits.append(self._limits[slot] if self.range != "auto" else None)
            self._bin_limits.append(self._bin_limits[slot] if self.range != "auto" else None)
            self._sizes_of = {}  # worked out for fewer layers
        return self._part_slots[(slot, path)]

    def _gradient_hook(self, slot, gradient):
        if self._row is not None:  # the batch is still open (a late backward after detach is ignored)
            self._record(slot, gradient)

    def _record(self, slot, output):
        "Histogram (and summarise) one output, or one gradient, into the open column."
        if not isinstance(output, torch.Tensor) or not output.is_floating_point():
            self._skip(slot, output)
            return
        plan = self._last[slot]  # worked out when a shape is first seen
        if plan is None or plan.shape != output.shape or plan.device != output.device:
            if not output.numel():
                self.shapes[self.names[slot]] = tuple(output.shape)
                return
            plan = self._plan(slot, output)
        rows = self._rows[slot]
        if rows is None or rows.size < self._capacity:
            rows = self._device_rows(slot, output.device)
        per_unit = plan(output, rows, self._row)  # the plan takes it to float32 (and out of autograd)
        if self._unit_maxima:
            rows.keep_unit_max(self._row, per_unit)
        self._used.append(plan.used)  # (slot, plan): its sizes are metadata, counted on the host at the flush

    def _skip(self, slot, output) -> None:
        "Note why a layer's output is not recorded (shown in `recording.skipped`)."
        self.skipped[self.names[slot]] = f"output is a {type(output).__name__}, not a tensor" \
            if not isinstance(output, torch.Tensor) else f"output dtype {output.dtype} is not floating point"

    def _plan(self, slot, output: torch.Tensor):
        "How this layer's outputs of this shape are summarised: the range first (range='auto'), then the plan."
        values = output.detach().float()
        if self._limits[slot] is None:
            self._set_auto_range(slot, values)
        key = (slot, output.shape, output.device)
        if key not in self._plans:
            self._plans[key] = make_plan(values, self.sample, len(self._plans), self.bins, self._bin_limits[slot],
                                         self.linthresh, self.near_zero, self.stats, self._scratch, self._shared)
            self._plans[key].used = (slot, self._plans[key])  # what a column keeps of each output
        self._last[slot] = self._plans[key]
        return self._plans[key]

    def _binned(self, limits) -> tuple[float, float]:
        return limits if self.linthresh is None else tuple(float(symlog(end, self.linthresh)) for end in limits)

    def _set_auto_range(self, slot, values: torch.Tensor) -> None:
        "range='auto': from this first output, one host sync for this layer, once."
        finite = torch.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
        self._limits[slot] = auto_range(finite.abs().max().item())
        self._bin_limits[slot] = self._binned(self._limits[slot])

    def edges(self, slot) -> np.ndarray:
        "Layer `slot`'s bin edges in activation units ((-1, 1) while an auto range is still unknown)."
        low, high = self._limits[slot] or (-1.0, 1.0)
        return bin_edges(low, high, self.bins, self.linthresh)

    def _device_rows(self, slot, device) -> DeviceRows:
        "Layer `slot`'s device rows, made (or grown) on `device` when they must be."
        rows = self._rows[slot]
        if rows is None:
            rows = self._rows[slot] = DeviceRows(self._capacity, self.bins, device)
        elif len(rows) < self._capacity:
            rows = self._rows[slot] = rows.grown(self._capacity)
        return rows

    # --- columns (called by the host between batches) ----------------------------------------------
    def reserve(self, columns: int) -> None:
        "Make room for `columns` more columns at once (say, an epoch's batches), so none grows per batch."
        self._set_capacity(min(len(self._index) + columns, self.max_columns) + 1)

    def begin_column(self, phase: str = "train", epoch: int = 0, fit: int = 0, iteration: int = 0) -> None:
        "Start recording a column: hooks write into it until `end_column` or `abandon_column`."
        if phase not in PHASES:
            raise ValueError(f"phase: {phase!r} is not a phase; use one of {PHASES}")
        self.abandon_column()
        if len(self._index) >= self.max_columns:  # the device rows are full: to the host (once per max_columns)
            self.flush()
        row = len(self._index)
        if row >= self._capacity:  # no reserve() or an epoch longer than announced: grow geometrically
            self._set_capacity(max(16, 2 * self._capacity))
        self._row, self._pending = row, (fit, epoch, phase, iteration)

    def end_column(self) -> None:
        "Keep the open column."
        if self._row is not None:
            # what its outputs added is known on the host (no sync), and worked out at the flush: every
            # step here costs several times more than later, with the caches the batch has just used
            last = self._row_sizes[-1] if self._row_sizes else None  # most columns use the plans the last did:
            same = type(last) is list and last == self._used            # share its list (memory stays small)
            self._row_sizes.append(last if same else self._used)
            self._index.append(self._pending)
            self._row = self._pending = None
        self._used = []

    def _column_sizes(self, used: tuple):
        """What a column's outputs, `((slot, plan), ...)`, add to the host's sizes (layers, 3), and their
        shapes: worked out once per sequence of plans, which is the same batch after batch."""
        if used not in self._sizes_of:
            if len(self._sizes_of) >= 64:  # shapes that keep changing (say, text of any length): stay bounded
                self._sizes_of.clear()
            sizes, shapes = np.zeros((len(self.names), 3), np.int64), {}
            for slot, plan in used:
                sizes[slot] += plan.sizes
                shapes[self.names[slot]] = tuple(plan.shape)
            self._sizes_of[used] = sizes, shapes
        return self._sizes_of[used]

    def abandon_column(self) -> None:
        "Drop the open column (an interrupted batch): its row is cleared for the next one."
        if self._row is None:
            return
        for rows in self._rows:
            if rows is not None:
                rows.clear(self._row)
        self._used = []
        self._row = self._pending = None

    def _set_capacity(self, rows: int) -> None:
        if rows > self._capacity:  # device rows follow in `_device_rows`, on their own device
            self._capacity = rows

    # --- to the host -------------------------------------------------------------------------------
    def flush(self, reduce: bool = True) -> None:
        "Copy the finished columns to the host (one transfer per layer and kind) and reuse the device rows."
        # Under torch.distributed, every rank calls this at the same epoch end and the rows are summed
        # across ranks first (reduce=False: this rank's own rows only).
        used = len(self._index)
        if reduce and is_distributed():
            device = self._reduce_device()
            check_same_columns(used, device)
            if used:
                self._all_reduce(used, device)
        if not used:
            return
        counts, moments = {}, {}
        for slot, name in enumerate(self.names):
            rows = self._rows[slot]
            if rows is None:  # this layer never ran
                counts[name] = np.zeros((used, self.bins + 2), dtype=np.int64)
                moments[name] = np.full((used, len(MOMENTS)), np.nan)
                continue
            counts[name], moments[name] = rows.to_host(used)
            rows.clear(slice(0, used))
            if self._row is not None:  # a column is open: it becomes the first row
                rows.move(self._row, 0)
        sizes, self._row_sizes = self._host_sizes(), []
        if self._row is not None:
            self._row = 0
        self._host.append(self._to_recording(counts, moments, sizes, self._index))
        self._index = []
        self._compact()

    def _host_sizes(self) -> np.ndarray:
        """The committed rows' sizes as one (rows, layers, 3) array (layers added since are zero); the
        layers' shapes from them: a training batch's shapes show, another's only where none is known."""
        sizes = np.zeros((len(self._row_sizes), len(self.names), 3), np.int64)
        shared, worked_out, applied = None, None, None
        for row, part in enumerate(self._row_sizes):  # once per epoch; most rows share one list
            if isinstance(part, list):  # the (slot, plan) of each output, as `end_column` kept them
                if part is not shared:
                    shared, worked_out = part, self._column_sizes(tuple(part))
                training = self._index[row][2] == "train"
                part, shapes = worked_out
                if applied != (id(shared), training):  # the same again would change nothing
                    applied = id(shared), training
                    if training:
                        self.shapes.update(shapes)
                    else:
                        for name, shape in shapes.items():
                            self.shapes.setdefault(name, shape)
            sizes[row, :len(part)] = part
        return sizes

    def _reduce_device(self):
        devices = [rows.counts.device for rows in self._rows if rows is not None]
        if devices:
            return devices[0]
        backend = torch.distributed.get_backend()
        return torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")

    def _all_reduce(self, used: int, device) -> None:
        "Sum this epoch's rows across ranks (counts, sums, sizes), max of (-min, max) and of unit maxima."
        for slot, rows in enumerate(self._rows):
            if rows is None:  # this rank never ran the layer; others may have: take part with empty rows
                self._rows[slot] = DeviceRows(max(self._capacity, used + 1), self.bins, device)
        if self._unit_maxima:  # every rank's unit maxima must be as wide before they are merged
            widths = torch.tensor([0 if rows.unit_max is None else rows.unit_max.shape[1] for rows in self._rows],
                                  dtype=torch.float64, device=device)
            all_reduce([], [widths], device)
            for rows, width in zip(self._rows, widths.tolist()):
                rows.widen(int(width))
        sizes = torch.from_numpy(self._host_sizes()).to(device)  # (used, layers, 3)
        maxima = [rows.moments[:used, 4:] for rows in self._rows]
        maxima += [rows.unit_max[:used] for rows in self._rows] if self._unit_maxima else []
        all_reduce([rows.counts[:used] for rows in self._rows] + [rows.moments[:used, :4] for rows in self._rows]
                   + [sizes], maxima, device)
        summed = sizes.cpu().numpy()
        if self._unit_maxima:  # dead = <= 0 on every rank: count over the merged maxima, over each unit once
            for slot, rows in enumerate(self._rows):
                ran = summed[:, slot, NUMEL] > 0
                dead = (rows.unit_max[:used] <= 0).sum(1).to(rows.moments.dtype)
                rows.moments[:used, 3] = dead * torch.from_numpy(ran).to(device)
                summed[:, slot, CHANNELS] = np.where(ran, rows.unit_max.shape[1], 0)
        self._row_sizes = list(summed)

    def _compact(self) -> None:
        "One host Recording of at most `max_columns` columns: merge pairs of neighbours while it is longer."
        parts = [self._padded(part) for part in self._host]
        total = Recording.concat(parts).coarsen(self._width) if len(parts) > 1 else parts[0]
        while len(total) > self.max_columns:
            merged = total.coarsen(2 * self._width)
            if len(merged) == len(total):  # one column per epoch and phase already: nothing left to merge
                break
            total, self._width = merged, 2 * self._width
        self._host = [total]

    @property
    def recording(self) -> Recording:
        "Everything recorded so far, on the host (copies what is still on the device)."
        if not is_distributed():  # distributed: whole epochs only, summed at their ends on every rank
            self.flush()
        if not self._host:
            return self._to_recording({name: np.zeros((0, self.bins + 2), dtype=np.int64) for name in self.names},
                                      {name: np.zeros((0, len(MOMENTS))) for name in self.names},
                                      np.zeros((0, len(self.names), 3), dtype=np.int64), [])
        recording = self._host[0]
        recording.shapes.update(self.shapes)
        recording.skipped.update(self.skipped)
        return recording

    def reset(self) -> None:
        "Forget everything recorded (the hooks stay as they are)."
        self.abandon_column()
        for rows in self._rows:  # columns not yet flushed: their device rows are reused from row 0
            if rows is not None:
                rows.clear(slice(0, len(self._index)))
        self._index, self._host, self._row_sizes = [], [], []

    @property
    def nbytes(self) -> int:
        "Bytes held: the device rows and the host recording."
        device = sum(rows.nbytes for rows in self._rows if rows is not None)
        return device + sum(part.nbytes for part in self._host)

    def _shown(self) -> list[int]:
        "The slots a Recording shows, in the model's order: a container's parts stand in for the container."
        return sorted((slot for slot, _ in enumerate(self.names) if slot not in self._containers),
                      key=lambda slot: (self._parent[slot], slot))

    def _to_recording(self, counts: dict, moments: dict, sizes: np.ndarray, index: list) -> Recording:
        "A host Recording of some columns: per layer `counts`, `moments`; `sizes` (columns, layers, 3)."
        fit, epoch, phase, iteration = zip(*index) if index else ((), (), (), ())
        shown = [(slot, self.names[slot]) for slot in self._shown()]
        for slot, name in shown:
            numel, sampled = sizes[:, slot, NUMEL], sizes[:, slot, SAMPLED]
            if (sampled < numel).any():  # a sample stands for its whole output: scale its counts up
                scale = np.where(sampled > 0, numel / np.maximum(sampled, 1), 0.0)
                counts[name] = counts[name] * scale[:, None]
                moments[name][:, :3] *= scale[:, None]  # sums and the near-zero count were taken on the sample
        return Recording(
            counts={name: counts[name] for _, name in shown},
            numel={name: sizes[:, slot, NUMEL] for slot, name in shown},
            edges={name: self.edges(slot) for slot, name in shown},
            shapes={name: self.shapes.get(name, ()) for _, name in shown},
            linthresh={name: self.linthresh for _, name in shown},
            fit=np.array(fit, dtype=np.int64), epoch=np.array(epoch, dtype=np.int64),
            phase=np.array(phase, dtype="<U5"), iteration=np.array(iteration, dtype=np.int64),
            moments={name: moments[name] for _, name in shown} if self.stats else None,
            channels={name: sizes[:, slot, CHANNELS] for slot, name in shown},
            near_zero_threshold=self.near_zero, skipped=dict(self.skipped))

    def _padded(self, part: Recording) -> Recording:
        "`part` with every shown layer: the parts of a container first seen later are empty in it."
        missing = [slot for slot in self._shown() if self.names[slot] not in part.counts]
        if not missing and part.layer_names == [self.names[slot] for slot in self._shown()]:
            return part
        columns = len(part)
        counts = {self.names[slot]: np.zeros((columns, self.bins + 2), dtype=np.int64) for slot in missing}
        moments = {self.names[slot]: np.full((columns, len(MOMENTS)), np.nan) for slot in missing}
        counts.update(part.counts), moments.update(part.moments)
        sizes = np.zeros((columns, len(self.names), 3), dtype=np.int64)
        for slot in self._shown():
            if self.names[slot] in part.counts:
                sizes[:, slot, NUMEL] = part.numel[self.names[slot]]
                sizes[:, slot, CHANNELS] = part.channels[self.names[slot]]
        sizes[:, :, SAMPLED] = sizes[:, :, NUMEL]  # already scaled: no second scaling
        index = list(zip(part.fit.tolist(), part.epoch.tolist(), part.phase.tolist(), part.iteration.tolist()))
        padded = self._to_recording(counts, moments, sizes, index)
        padded.batches = part.batches
        return padded


class Recorders:
    "The activation recorder and (grads=True) the output-gradient recorder of the same layers, run as one."
    def __init__(self,
        modules: dict,
        grads: bool = False,     # also histogram the gradient of each output, in backward
        grad_range="auto",       # the gradients' own range: "auto" (from the first backward) or (low, high)
        grad_scale="linear",     # or "symlog"
        **options,               # HistogramRecorder's: bins, range, scale, linthresh, stats, sample, ...
    ):
        self.activations = HistogramRecorder(modules, **options)
        self.gradients = HistogramRecorder(modules, **dict(options, range=grad_range, scale=grad_scale,
                                                           grads=True)) if grads else None
        self.modules, self.names = self.activations.modules, self.activations.names
        self._all = [engine for engine in (self.activations, self.gradients) if engine is not None]
        self.ended = 0  # end_column calls so far: what is new since a caller last looked

    def attach(self) -> "Recorders":
        "Hook every layer for both kinds."
        for engine in self._all: engine.attach()
        return self

    def detach(self) -> None:
        "Remove every hook; keep every finished column."
        for engine in reversed(self._all): engine.detach()  # the last hooked is on top

    def reserve(self, columns: int) -> None:
        for engine in self._all: engine.reserve(columns)

    def begin_column(self, phase: str = "train", epoch: int = 0, fit: int = 0, iteration: int = 0) -> None:
        for engine in self._all: engine.begin_column(phase, epoch=epoch, fit=fit, iteration=iteration)

    def end_column(self) -> None:
        self.ended += 1
        for engine in self._all: engine.end_column()

    def abandon_column(self) -> None:
        for engine in self._all: engine.abandon_column()

    def flush(self, reduce: bool = True) -> None:
        for engine in self._all: engine.flush(reduce)

    @property
    def recording(self) -> Recording:
        "The activations' Recording, with the gradients' as its `.grads` (same columns)."
        recording = self.activations.recording
        recording.grads = self.gradients.recording if self.gradients is not None else None
        return recording

    @property
    def nbytes(self) -> int:
        return sum(engine.nbytes for engine in self._all)
