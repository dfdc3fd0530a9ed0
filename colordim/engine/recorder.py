"""`HistogramRecorder`: torch forward hooks on chosen modules, one column ledger, and the host's columns.

The hot path, hook to buffer, in order: `colordim.engine.hooks.Hook` (eager even under torch.compile) ->
`Routing.forward_hook` (`colordim.engine.routing`: is a column open? which layer: a plain tensor, a
container's part, a repeat call?) -> `LayerRecorder.add` (`colordim.engine.layer`: the plan for this
shape, the buffer row) -> the plan (`colordim.engine.plans`: one compiled call on the CPU, one Triton op
on CUDA, a few torch ops elsewhere; no host sync). Here: the recorder's layers, attaching and detaching
its hooks, and the column lifecycle (`begin_column`, `end_column`, `abandon_column`; the ledger:
`colordim.engine.ledger`). Moving rows to the host and assembling the `Recording` is `Moves`
(`colordim.engine.transfer`), which it inherits. The other streams enter the same layers and ledger:
an optimizer step's weights, gradients and updates through `steps` (`colordim.engine.steps`), functional
calls through `FunctionalTap` (`colordim.engine.functional`).
"""
from __future__ import annotations

from .distributed import is_distributed
from .hooks import hook_forward, hook_forward_pre
from .host_columns import HostColumns
from .layer import LayerRecorder, Settings
from .ledger import DEVICE_BYTES, HOST_BYTES, MOVE_EVERY, Ledger
from .find_layers import compiled, unwrapped
from .functional import FunctionalTap, check_functions, check_not_compiled
from .plain import reading
from .routing import CALLS, Routing, backward_task
from .steps import ParamSteps
from .transfer import Moves
from . import ranges
from .units import CHANNELS, FEATURES, resolve_units
from ..data.options import check_bins, check_near_zero, check_phase, check_range, check_sample, check_scale, check_streams, check_units

__all__ = ["HistogramRecorder", "CALLS"]


class HistogramRecorder(Moves):
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
        params: dict = None,  # {name: (parameter, its module's class name)} (`steps.find_params`) for `streams`
        streams=(),           # which of "param", "param_grad", "update" to record per optimizer step (`steps`)
        param_range="auto",   # the parameter streams' range: "auto" (each from its first step) or (low, high)
        param_scale: str = "linear",  # or "symlog" (with `linthresh`): gradients and updates span many decades
        functional=None,      # True, or some of `functional.FUNCTIONS`: also record those functional calls made in
                              # the modules' forward (`F.relu(...)`: "block:relu"); needs `attach(root=model)`
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
        self.steps = self._add_params(params or {}, check_streams(streams, params), check_range(param_range),
                                      check_scale(param_scale, linthresh))
        self.functions, self._tap, self._functional = check_functions(functional), None, {}  # name -> its slot
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

    def _add_params(self, params: dict, streams: tuple, value_range, linthresh) -> ParamSteps:
        "A LayerRecorder per parameter and stream, after the modules' slots; a trainer calls `steps` at each step."
        self.param_types = {name: kind for name, (_, kind) in params.items()}
        layers = {stream: {} for stream in streams}
        for stream in streams:
            self.layers[stream] = []
            for name in params:
                layer = LayerRecorder(name, len(self._all), self.settings, value_range, linthresh, units=CHANNELS)
                self._all.append(layer)
                self._kind_of.append(stream)
                self.layers[stream].append(layer)
                layers[stream][name] = layer
        self.columns.budget(len(self._all), self.bins)
        return ParamSteps(params, layers, self.columns)

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
        if self.functions:
            if root is None:
                raise ValueError("functional: recording functional calls needs the model: attach(root=model)")
            check_not_compiled(compiled(root))
            self._tap = FunctionalTap(unwrapped(root), self.functions, self._add_functional)
        return self

    def watch_functional(self, on: bool) -> None:
        """Watch functional calls from now on (True) or no longer (False), beside the root's forward: for a
        trainer whose step may call a submodule rather than the root (Lightning's `self.model(x)`)."""
        if self._tap is not None:
            self._tap.enter() if on else self._tap.leave()

    def _add_functional(self, name: str, function: str, output) -> None:
        "A functional call's output (`FunctionalTap`): a layer of its own, its slot added when first seen."
        if self.columns.row is None or backward_task() != -1:  # between batches; a recomputation in backward
            return
        slot = self._functional.get(name)
        if slot is None:  # a pseudo-module of its own: its type is the function, its units by the output's shape
            self._types.append(function)
            self._units.append(CHANNELS if output.dim() >= 4 else FEATURES)
            slot = self._functional[name] = self._add_slot(name, len(self._types) - 1)
        with reading(output):  # fastai's tensors: without their Python methods
            self.layers["activation"][slot].add(output)
            if "grad" in self.layers and output.requires_grad:
                output.register_hook(self.layers["grad"][slot].add_gradient)

    def detach(self) -> None:
        """Remove our hooks, drop an unfinished column and the weights kept for the next update (their memory
        goes back; a step after the next `attach` keeps them afresh), keep every finished column. Safe to call twice."""
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        if self._tap is not None:
            self._tap.remove()
            self._tap = None
        self.abandon_column()
        self.flush(reduce=False)  # no collective here: detach also runs on one crashing rank alone
        self.steps.forget()

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
