"""The fastai side: the `ActivationHistogram` callback and the `Learner.color_dim` patch."""
from __future__ import annotations

import warnings
import weakref

from fastai.learner import Learner
from fastai.callback.core import Callback
from fastcore.basics import patch, store_attr

from ..views import plot
from ..engine.distributed import is_main_process
from ..engine.ledger import DEVICE_BYTES, HOST_BYTES, MOVE_EVERY
from ..engine.find_layers import compiled, find_layers
from .trainers import OPTIONS, Outputs, check_options, make_recorder, recorded_params
from ..health.checks import diagnose
from ..data.options import check_show
from ..data.recording import Recording

__all__ = ["ActivationHistogram"]

# The recorders each learner recorded with, so `learn.color_dim` also finds a callback passed to
# `fit(cbs=...)`. Weak keys: forgetting a learner forgets its entry; nothing is stored on the learner.
_RECORDERS = weakref.WeakKeyDictionary()


class ActivationHistogram(Callback):
    "Record a histogram of each chosen layer's output for every batch, on the model's device."
    order = -5  # after TrainEvalCallback (-10) has set `training`, before most others
    move_every, device_bytes, host_bytes = MOVE_EVERY, DEVICE_BYTES, HOST_BYTES  # callbacks pickled before them
    show, _live, tensorboard, wandb, units, _outputs = False, None, None, False, None, None
    params, param_grads, updates, _step_cancelled, functional = False, False, False, False, False  # pickled before
    param_range, param_scale = "auto", "linear"

    def __init__(self,
        layers=None,      # index, dotted name, glob, module class or module (or a list); None: leaves with params
        bins: int = 100,  # rows of the picture
        range=(-10, 10),  # values outside are counted in an underflow and an overflow row; or "auto"
        scale: str = "linear",  # or "symlog": bins uniform in sign(x) log1p(|x| / linthresh)
        linthresh: float = 1.0,  # where symlog turns from linear to logarithmic
        valid: bool = True,  # record validation batches too, as the 'valid' phase
        stats: bool = True,  # also mean, std, near-zero share, min, max and dead-unit rate per batch
        near_zero: float = 0.05,  # |x| <= near_zero counts as near zero (fastai counts x <= 0.05)
        sample: int = None,  # histogram at most this many values of each output per batch, scaled up
        max_columns: int = 10_000,  # per layer; past it neighbouring batches merge, so memory stays bounded
        move_every: int = MOVE_EVERY,  # finished batches move to the host at least this often (and at epoch ends)
        device_bytes: int = DEVICE_BYTES,  # the recording's rows on the device stay within this
        host_bytes: int = HOST_BYTES,  # and on the host: past it, neighbouring batches merge
        save_to=None,  # a path: the recording is saved there (atomically) at every epoch end and fit end
        grads: bool = False,  # also histogram each layer's output gradient: `recording.grads`, kind="grad"
        grad_range="auto",  # the gradients' range: from the first backward, or (low, high)
        grad_scale: str = "linear",  # or "symlog"
        record_inference: bool = False,  # also record get_preds/validate outside a fit, as 'valid' columns
        export_recording: bool = False,  # let learn.export() carry the recording (host arrays, no hooks)
        report: bool = False,  # print the health report (`colordim.diagnose`) after each fit
        show=False,  # in a notebook: redraw the grid in one output after each epoch (an int N: every N batches too)
        tensorboard=None,  # a log folder: histograms at each move to the host, the grid at each epoch end
        wandb: bool = False,  # the same into the active Weights & Biases run (wandb.init first)
        units=None,  # where each layer's units are, for dead units: guessed, "channels", "features" or {layer: ...}
        params=False,  # per optimizer step, the weights: True (the recorded layers' parameters) or parameter names
        param_grads: bool = False,  # their gradients as the step used them (after accumulation, unscaling, clipping)
        updates: bool = False,  # what each step changed (and the weights): `recording.update_ratio`
        param_range="auto",  # the parameters' streams' range: from each one's first step, or (low, high)
        param_scale: str = "linear",  # or "symlog" (with `linthresh`)
        functional=False,  # True (or function names): also record F.relu, torch.tanh ... called in modules' forward
    ):
        store_attr()
        check_options(self._options()), check_show(show)  # fail now, not at the first batch
        self.histogram_recorder, self._fit, self._trained, self._active = None, -1, False, False
        self._checked = False  # the first forward pass of this fit has been checked

    # --- fastai events -----------------------------------------------------------------------------
    def before_fit(self):
        "Hook the chosen layers (found now, so a bad spec fails before the first batch)."
        self._trained, self._checked = False, False
        self._active = not hasattr(self.learn, "lr_finder")  # lr_find's sweep is not training: nothing recorded,
        if self._active and self.wandb:  # but the hooks are on (no column opens: they return at once), so that
            from .wandb_log import _wandb  # a model torch.compile compiles in the sweep carries them into fit
            _wandb()  # no run to log into: say so now, not at the first epoch's end
        options = self._options()
        modules = find_layers(self.learn.model, self.layers)
        params = recorded_params(self.learn.model, modules, options)
        if self.histogram_recorder is None or list(modules.values()) != list(self.histogram_recorder.modules.values()) \
                or [id(p) for p, _ in params.values()] != [id(p) for p in self.histogram_recorder.steps.params.values()]:
            self.histogram_recorder = make_recorder(self.learn.model, options, modules, params)
            self._out().restart()  # a new recorder counts its columns from 0
        self.histogram_recorder.attach(root=self.learn.model)  # a module called twice in one forward: two layers
        self.histogram_recorder.steps.keep_weights()  # the first step's update is against these
        recorders = _RECORDERS.setdefault(self.learn, [])
        if self.histogram_recorder not in recorders:
            recorders.append(self.histogram_recorder)

    def before_epoch(self):
        "Room for the whole epoch at once, so the device buffer never grows per batch."
        if self._active:
            self.histogram_recorder.reserve(_length(self.dls.train) + (_length(self.dls.valid) if self.valid else 0))

    def before_batch(self):
        "Open a column for this batch (host bookkeeping only, nothing touches the device)."
        if not self._active:
            return
        learn = self.learn  # read from the learner itself: a callback's own lookup goes through fastcore's
        if learn.training:  # GetAttr, several times slower, and this runs every batch
            if not self._trained:  # the first training batch of this fit starts a new fit index
                self._trained, self._fit = True, self._fit + 1
        elif not (self.valid and self._trained or self.record_inference):  # get_preds/validate outside a fit
            return
        self.histogram_recorder.begin_column("train" if learn.training else "valid", epoch=getattr(learn, "epoch", 0),
                                 fit=max(self._fit, 0), iteration=learn.iter)

    def after_pred(self):
        """After the first forward pass of a fit, before any step: a layer that gives no tensor is an error, and
        so is a compiled model whose graph never runs our hooks."""
        if self._active and not self._checked and self.learn.training:
            self._checked = True
            for name, reason in self.histogram_recorder.without_tensors().items():
                if reason.startswith("output is a"):
                    raise TypeError(f"layers: {name!r} cannot be recorded: its {reason} (nor a tuple, list or "
                                    "dict of tensors); choose other layers, e.g. the modules inside it")
            if not self.histogram_recorder.columns.used:  # a training forward pass ran, and no hooked layer did
                _none_recorded(self.learn.model)

    def after_batch(self):
        if self._active:
            self.histogram_recorder.end_column()  # counts it in `recorder.ended`: no callback attribute set per batch
                                      # (fastai's Callback.__setattr__ looks the name up on the learner)
            if self.show and self.show is not True and self.histogram_recorder.ended % self.show == 0 and self.learn.training:
                self._draw()  # every N batches: a move to the host, as `move_every` makes
            if (self.tensorboard is not None or self.wandb) and self.histogram_recorder.ended % self.move_every == 0:
                self._out().write(self.histogram_recorder)  # the rows were due to move to the host now anyway

    def after_cancel_step(self):
        "A step the grad scaler skipped (MixedPrecision): no parameter streams for this batch."
        self._step_cancelled = True

    def after_step(self):
        """The step's parameter streams: its gradients (fastai unscales and clips in `before_step` callbacks
        after ours, and zeroes them only after this), the weights it left, the update; then those weights are
        kept for the next step. GradientAccumulation cancels the batch before the step: no event here."""
        if self._step_cancelled:
            self._step_cancelled = False
        elif self._active and self.histogram_recorder.steps.layers:
            steps = self.histogram_recorder.steps
            steps.after_step()
            steps.keep_weights()

    def after_cancel_batch(self):
        "A cancelled batch is not a complete batch: drop its column."
        if self._active: self.histogram_recorder.abandon_column()

    def after_epoch(self):
        "The epoch's columns go to the host: one transfer per layer per epoch (and to `save_to`)."
        if self._active:
            self.histogram_recorder.flush()
            self._out().save(self.histogram_recorder)
            if self.show:
                self._draw()
            self._out().write(self.histogram_recorder, grid=True)

    def _options(self) -> dict:
        "The recorder's options, as this callback holds them (OPTIONS' names, shared with the other trainers)."
        return {name: getattr(self, name) for name in OPTIONS}

    def _out(self) -> Outputs:
        "Where the recording goes as it grows (`save_to`, TensorBoard, W&B, the report), made at first use."
        if self.__dict__.get("_outputs") is None:
            self.__dict__["_outputs"] = Outputs(self.save_to, self.tensorboard, self.wandb, self.report)
        return self.__dict__["_outputs"]

    def _draw(self):
        "The grid, redrawn in the notebook's one output (nothing outside a notebook)."
        if self._live is None:
            from ..views.live import LiveGrid
            self._live = LiveGrid()
        if self._live.shown and is_main_process():
            self._live.update(self.histogram_recorder.view())

    def after_fit(self):
        "Sum the last columns across ranks (when distributed), remove the hooks; the recording stays."
        if self._active:
            self.histogram_recorder.flush()
            self._out().finish(self.histogram_recorder, trained=self._trained)  # the report, the last save
        self._unhook()

    def _unhook(self):
        # the TensorBoard and W&B writers stay: the next fit's batches follow this one's (each write flushes)
        self._out().commit()  # W&B's last row shows now, not when something else logs
        if self.histogram_recorder is not None:
            self.histogram_recorder.detach()
            if self._active:
                self._out().save(self.histogram_recorder)  # what a crashed or finished fit recorded, on disk too
        self._active = False

    @property
    def hooked(self) -> bool:
        "Whether this callback's hooks are on the model now (during a fit, or after one that died)."
        return self._active or self.histogram_recorder is not None and self.histogram_recorder.attached

    @property
    def learn(self):
        "The Learner carrying this callback: fastai sets it when the callback is added, and None when removed."
        return self.__dict__.get("_carrier")

    @learn.setter
    def learn(self, learn):
        carrier = self.__dict__.get("_carrier")
        if carrier is not None and learn is not carrier:  # taken off its learner: `fit(cbs=...)` ends, died too
            if self.hooked:
                self._unhook()
            _unguard(carrier, self)
        self.__dict__["_carrier"] = learn
        _guard(learn)

    # --- results -----------------------------------------------------------------------------------
    @property
    def recording(self) -> Recording:
        "Everything recorded so far, as a host-side `Recording`."
        if self.histogram_recorder is None and getattr(self, "_exported", None) is not None:
            return self._exported  # carried by learn.export(export_recording=True)
        if self.histogram_recorder is None or not self.histogram_recorder.ended:  # lr_find hooks, records nothing
            raise ValueError("ActivationHistogram has recorded nothing yet: fit the learner first, "
                             "e.g. `learn.fit(1)`")
        return self.histogram_recorder.recording

    def __getstate__(self):
        "Pickle (e.g. `learn.export()`) the settings, not the hooks or recorded buffers."
        state = dict(self.__dict__)
        exported = self.recording if self.export_recording and self.histogram_recorder is not None else None
        state.update(histogram_recorder=None, _active=False, _exported=exported, _live=None, _outputs=None)
        return state

    def __setstate__(self, state):
        "Callbacks exported by colordim 0.1 kept their learner as `learn` and their recorder as `engine`."
        if "learn" in state:
            state.setdefault("_carrier", state.pop("learn"))
        if "engine" in state:
            state.setdefault("histogram_recorder", state.pop("engine"))
        self.__dict__.update(state)


def _none_recorded(model) -> None:
    """No hooked layer ran in a training forward pass. A model compiled before our hooks were on it runs a graph
    without them, and torch.compile does not notice hooks added later (its guards skip them by default,
    `torch._dynamo.config.skip_nnmodule_hook_guards`): an error that says how to record, rather than a fit that
    records nothing. Otherwise the chosen layers did not run (a branch not taken): a warning."""
    message = ("ActivationHistogram: no hooked layer ran in this training batch's forward pass, so nothing "
               "would be recorded. ")
    if compiled(model):
        raise RuntimeError(message + "The model is compiled (torch.compile) and was run before colordim's hooks were "
                           "on it; torch.compile does not see hooks added later. Call torch.compiler.reset() before "
                           "this fit (or add the callback before the model's first call).")
    warnings.warn(message + "Check that `layers=` names modules the model's forward calls.", RuntimeWarning,
                  stacklevel=2)


def _length(loader) -> int:
    try:
        return len(loader)
    except TypeError:  # an iterable loader: the buffer grows geometrically instead
        return 0


# --- unhooking after a crash ---------------------------------------------------------------------
class _FitThatUnhooks:
    """`learn.fit` of a Learner that carries an ActivationHistogram: fastai runs `after_fit` only when a fit
    ends or is cancelled, so after an error or Ctrl-C the callbacks take their hooks off (and save) here.
    Set on that learner alone, as an instance attribute, while it carries one; never on the Learner class."""
    def __init__(self, learn: Learner):
        self.learn = learn
        self.__doc__ = type(learn).fit.__doc__

    def __call__(self, *args, **kwargs):
        try:
            return type(self.learn).fit(self.learn, *args, **kwargs)  # the learner's own fit, subclasses' too
        finally:
            for callback in list(self.learn.cbs):
                if isinstance(callback, ActivationHistogram) and callback.hooked:  # after_fit did not run
                    callback._unhook()

    def __reduce__(self):  # learn.export(): the learner loads with its guard
        return _FitThatUnhooks, (self.learn,)


def _guard(learn: Learner) -> None:
    "Make `learn.fit` unhook colordim's callbacks when a fit dies (this learner only)."
    if learn is not None and not isinstance(learn.__dict__.get("fit"), _FitThatUnhooks):
        learn.fit = _FitThatUnhooks(learn)


def _unguard(learn: Learner, leaving: "ActivationHistogram") -> None:
    "Give `learn` its own `fit` back once no ActivationHistogram but `leaving` is on it."
    if isinstance(learn.__dict__.get("fit"), _FitThatUnhooks) and \
            not any(isinstance(cb, ActivationHistogram) and cb is not leaving for cb in learn.cbs):
        del learn.__dict__["fit"]


# --- Learner patches -----------------------------------------------------------------------------
def learner_recording(learn: Learner, layer=None) -> Recording:
    "The recording of `learn`'s ActivationHistogram (the one that holds `layer`, or the first of a list)."
    recorders = [cb.histogram_recorder for cb in learn.cbs if isinstance(cb, ActivationHistogram) and cb.histogram_recorder]
    recorders += [recorder for recorder in _RECORDERS.get(learn, []) if recorder not in recorders]
    if not recorders:
        raise ValueError("no ActivationHistogram has recorded on this learner; add one, e.g. "
                         "`Learner(..., cbs=ActivationHistogram())` or `learn.fit(1, cbs=ActivationHistogram())`, "
                         "and fit first")
    if isinstance(layer, (list, tuple)):  # a list of layers: the callback that holds the first
        layer = layer[0] if layer else None
    if isinstance(layer, str):
        recorders = [recorder for recorder in recorders if layer in recorder.names] or recorders
    return recorders[0].recording


@patch
def color_dim(self: Learner, layer=0, epoch=None, phase="train", log=True, overlay=None, ax=None, figsize=None,
              **kwargs):
    "Draw the colorful-dimension image of `layer` (index among the hooked layers, or name)."
    return plot.color_dim(learner_recording(self, layer), layer, epoch=epoch, phase=phase, log=log,
                          overlay=overlay, ax=ax, figsize=figsize, **kwargs)


@patch
def color_dims(self: Learner, layers=None, cols=3, **kwargs):
    "A grid of colour-dim images, one per hooked layer (or `layers`), on one colour scale."
    return plot.color_dims(learner_recording(self, layers), layers, cols=cols, **kwargs)


@patch
def color_dim_epochs(self: Learner, layer=0, **kwargs):
    "One colour-dim panel per epoch of `layer`."
    return plot.color_dim_epochs(learner_recording(self, layer), layer, **kwargs)


@patch
def dead_chart(self: Learner, layers=None, **kwargs):
    "Per batch, the share of values at zero and the dead-unit rate of each hooked layer (or `layers`)."
    return plot.dead_chart(learner_recording(self, layers), layers, **kwargs)


@patch
def update_ratio_chart(self: Learner, params=None, **kwargs):
    "log10 RMS(update) / RMS(weights) per parameter and optimizer step, with the 1e-3 guide (updates=True)."
    return plot.update_ratio_chart(learner_recording(self), params, **kwargs)


@patch
def plot_layer_stats(self: Learner, layer=0, **kwargs):
    "Mean, std, share near zero and dead-unit rate of `layer` per batch."
    return plot.plot_layer_stats(learner_recording(self, layer), layer, **kwargs)


@patch
def activation_report(self: Learner, **thresholds):
    """The health report of what the ActivationHistogram recorded: a table per layer and findings in
    plain words (prints as text, shows as HTML in a notebook); thresholds as in `colordim.diagnose`."""
    return diagnose(learner_recording(self), **thresholds)


@patch
def activation_maps(self: Learner, x, layer=0):
    "The output of `layer` (index, name, pattern, type or module of the model) for the one input `x`."
    from ..probes.maps import activation_maps
    return activation_maps(self.model, x, layer)


@patch
def show_heatmap(self: Learner, x, layer=0, **kwargs):
    "The channel-mean map of `layer` for input `x`, resized, over the input image."
    from ..probes.maps import show_heatmap
    return show_heatmap(self.model, x, layer, **kwargs)


@patch
def activation_summary(self: Learner, x=None):
    """Every module of the model with what `layers=` takes to pick it (index, name), its type, output shape,
    parameters and whether it is hooked by default; `x`: an input batch (default: one training batch)."""
    from ..probes.summary import summary
    if x is None:
        batch = self.dls.one_batch()
        inputs = getattr(self.dls, "n_inp", 1 if len(batch) == 1 else len(batch) - 1)  # as fastai's Learner splits
        x = tuple(batch[:inputs])
    return summary(self.model, x)
