"""The fastai callback: phases, epochs, fits, parity with fastai's ActivationStats, hooks after crashes."""
import numpy as np
import pytest
import torch
from torch import nn
from fastai.callback.core import Callback, CancelFitException, CancelBatchException
from fastai.callback.hook import ActivationStats

from colordim import ActivationHistogram
from conftest import make_dls, make_learner, taps, tiny_cnn

TRAIN_BATCHES, VALID_BATCHES = 6, 3


def hook_counts(model):
    return [taps(module) for module in model.modules()]


def test_train_and_valid_batches_are_separate_phases_with_epoch_columns():
    learn = make_learner(cbs=ActivationHistogram(layers=["0", "1"], bins=10, range=(-3, 3)))
    learn.fit(2)
    recording = learn.activation_histogram.recording
    per_epoch = ["train"] * TRAIN_BATCHES + ["valid"] * VALID_BATCHES
    assert recording.phase.tolist() == per_epoch * 2
    assert recording.epoch.tolist() == [0] * 9 + [1] * 9
    assert recording.iteration.tolist() == (list(range(6)) + list(range(3))) * 2
    assert recording.fit.tolist() == [0] * 18
    # every value of every batch is counted: layer "1" outputs (B, 6, 4, 4)
    batch_sizes = [8] * 6 + [8, 8, 4]
    assert recording.numel["1"].tolist() == [b * 96 for b in batch_sizes] * 2
    totals = recording.hist["1"].sum(1) + recording.underflow["1"] + recording.overflow["1"]
    assert totals.tolist() == recording.numel["1"].tolist()
    assert recording.shapes["1"] == (8, 6, 4, 4)   # a training batch's, not the short validation batch's


def test_valid_false_records_training_only():
    learn = make_learner(cbs=ActivationHistogram(valid=False))
    learn.fit(1)
    recording = learn.activation_histogram.recording
    assert recording.phase.tolist() == ["train"] * TRAIN_BATCHES
    assert recording.layer_names == ["0.0", "1.0", "1.1", "3"]   # leaves with parameters, like fastai


def test_in_range_counts_equal_fastai_activation_stats_batch_for_batch():
    model = tiny_cnn()
    modules = [model[0][0], model[1][0], model[3]]
    stats = ActivationStats(modules=modules, with_hist=True)
    ours = ActivationHistogram(layers=modules, bins=40, range=(0, 10))
    learn = make_learner(cbs=[stats, ours], model=model)
    learn.fit(2, lr=0.1)
    recording = ours.recording.select_phase("train")
    assert len(recording) == 2 * TRAIN_BATCHES == len(stats.stats)
    for index, name in enumerate(recording.layer_names):
        theirs = torch.stack([batch[index]["hist"] for batch in stats.stats]).numpy()  # before their log1p
        np.testing.assert_array_equal(recording.hist[name], theirs.astype(np.int64))
        assert recording.hist[name].sum() > 0


def test_repeated_fits_append_with_fit_index():
    learn = make_learner(cbs=ActivationHistogram(layers=[0], valid=False))
    learn.fit(1)
    learn.fit(2)
    recording = learn.activation_histogram.recording
    assert recording.fit.tolist() == [0] * 6 + [1] * 12
    assert recording.epoch.tolist() == [0] * 6 + [0] * 6 + [1] * 6
    assert [(column, fit, epoch) for column, fit, epoch in recording.boundaries()] == [(0, 0, 0), (6, 1, 0), (12, 1, 1)]


class FailAt(Callback):
    "Raise `error` in after_loss of training batch `at`."
    def __init__(self, error, at=3): self.error, self.at = error, at
    def after_loss(self):
        if self.training and self.iter == self.at: raise self.error


def test_hooks_come_off_after_a_crash_and_complete_batches_stay():
    model = tiny_cnn()
    before = hook_counts(model)
    learn = make_learner(cbs=[ActivationHistogram(), FailAt(RuntimeError("bad batch"))], model=model)
    with pytest.raises(RuntimeError, match="bad batch"):
        learn.fit(1)
    assert hook_counts(model) == before
    recording = learn.activation_histogram.recording
    assert recording.iteration.tolist() == [0, 1, 2]   # batch 3 died after its forward pass: dropped
    learn.remove_cb(FailAt)
    learn.fit(1)                                     # the next fit works and appends
    assert len(learn.activation_histogram.recording) == 3 + TRAIN_BATCHES + VALID_BATCHES
    assert hook_counts(model) == before


def test_keyboard_interrupt_and_cancel_fit_keep_complete_batches_and_unhook():
    for error in (KeyboardInterrupt(), CancelFitException()):
        model = tiny_cnn()
        learn = make_learner(cbs=[ActivationHistogram(valid=False), FailAt(error, at=2)], model=model)
        try:
            learn.fit(1)
        except KeyboardInterrupt:
            pass
        assert hook_counts(model) == [0] * len(hook_counts(model))
        assert learn.activation_histogram.recording.iteration.tolist() == [0, 1]


def test_cancelled_batch_is_dropped():
    class SkipSecond(Callback):
        def after_pred(self):
            if self.training and self.iter == 1: raise CancelBatchException()
    learn = make_learner(cbs=[ActivationHistogram(valid=False), SkipSecond()])
    learn.fit(1)
    assert learn.activation_histogram.recording.iteration.tolist() == [0, 2, 3, 4, 5]


def test_callback_passed_to_fit_and_get_preds_records_nothing_extra():
    learn = make_learner()
    callback = ActivationHistogram(layers=nn.Conv2d)
    learn.fit(1, cbs=callback)
    assert not any(isinstance(cb, ActivationHistogram) for cb in learn.cbs)
    assert len(callback.recording) == TRAIN_BATCHES + VALID_BATCHES
    assert learn.color_dim("0.0").get_ylim() == (-10.0, 10.0)  # found after fit(cbs=...) too
    learn.add_cb(callback)
    learn.get_preds()
    learn.validate()
    assert len(callback.recording) == TRAIN_BATCHES + VALID_BATCHES
    assert hook_counts(learn.model) == [0] * len(hook_counts(learn.model))


def test_lr_find_is_not_recorded(tmp_path):
    import fastai.callback.schedule  # noqa: F401
    learn = make_learner(cbs=ActivationHistogram(layers=[0]))
    learn.path = tmp_path  # lr_find saves the model into its models/ folder: not the working directory
    learn.lr_find(num_it=5, show_plot=False)
    with pytest.raises(ValueError, match="recorded nothing yet"):
        learn.activation_histogram.recording
    learn.fit(1)
    assert len(learn.activation_histogram.recording) == TRAIN_BATCHES + VALID_BATCHES


def test_bad_arguments_fail_at_construction_and_bad_layers_before_the_first_batch():
    with pytest.raises(ValueError, match="bins: expected an int >= 1"):
        ActivationHistogram(bins=0)
    with pytest.raises(ValueError, match="range: expected finite low < high"):
        ActivationHistogram(range=(3, -3))
    seen = []
    class Count(Callback):
        def before_batch(self): seen.append(self.iter)
    learn = make_learner(cbs=[ActivationHistogram(layers="conv9"), Count()])
    with pytest.raises(ValueError, match="no module named 'conv9'"):
        learn.fit(1)
    assert seen == []


def test_color_dim_without_a_callback_says_what_to_do():
    learn = make_learner()
    with pytest.raises(ValueError, match="no ActivationHistogram has recorded on this learner"):
        learn.color_dim()


def test_export_pickles_settings_not_hooks_or_buffers(tmp_path):
    learn = make_learner(cbs=ActivationHistogram(layers=[0], bins=7))
    learn.fit(1)
    import pickle
    callback = pickle.loads(pickle.dumps(learn.activation_histogram))
    assert callback.bins == 7 and callback.histogram_recorder is None


def test_export_then_load_learner_fits_and_records_again(tmp_path):
    from fastai.learner import load_learner
    learn = make_learner(cbs=ActivationHistogram(layers=["0", "1"], bins=9))
    learn.fit(1)
    learn.path = tmp_path
    learn.dls.new_empty = make_dls  # TensorDataset has no new_empty; export only needs empty-ish loaders
    learn.export("model.pkl")
    loaded = load_learner(tmp_path / "model.pkl")
    callback = loaded.activation_histogram
    assert callback.histogram_recorder is None and callback.bins == 9     # settings travel, buffers do not
    assert all(not taps(module) for module in loaded.model.modules())
    loaded.fit(1)
    assert len(callback.recording) == TRAIN_BATCHES + VALID_BATCHES
    assert callback.recording.hist["1"].shape == (9, 9)


def test_get_preds_is_recorded_when_asked():
    callback = ActivationHistogram(layers=[0], record_inference=True)
    learn = make_learner(cbs=callback)
    learn.get_preds()                                   # before any fit
    assert callback.recording.phase.tolist() == ["valid"] * VALID_BATCHES
    learn.fit(1)
    learn.validate()
    assert callback.recording.phase.tolist() == (["valid"] * 3 + ["train"] * 6 + ["valid"] * 3 + ["valid"] * 3)


def test_export_carries_the_recording_when_asked(tmp_path):
    import pickle
    learn = make_learner(cbs=ActivationHistogram(layers=[0], export_recording=True))
    learn.fit(1)
    callback = pickle.loads(pickle.dumps(learn.activation_histogram))
    assert callback.histogram_recorder is None and callback.recording == learn.activation_histogram.recording


def test_event_dispatch_skips_only_events_it_has_no_method_for():
    class Counting(ActivationHistogram):
        steps = 0

        def after_step(self):  # a subclass's own event still runs
            self.steps += 1
    callback = Counting(layers=nn.Conv2d, valid=False)
    learn = make_learner(cbs=callback)
    assert callback("before_backward") is None and callback("after_cancel_train") is None
    learn.fit(1)
    assert callback.steps == TRAIN_BATCHES and len(callback.recording) == TRAIN_BATCHES
    callback.run = False  # fastai's switch: no event runs, until the fit's end sets it back
    learn.fit(1)
    assert len(callback.recording) == TRAIN_BATCHES and callback.steps == TRAIN_BATCHES and callback.run
    learn.fit(1)
    assert len(callback.recording) == 2 * TRAIN_BATCHES


def test_event_dispatch_keeps_fastais_train_valid_filter_and_cancels():
    from fastai.callback.core import CancelBatchException

    class TrainOnly(ActivationHistogram):
        run_valid = False  # fastai's filter: no batch event while validating

    class CancelsOne(ActivationHistogram):
        def before_batch(self):
            super().before_batch()
            if self.training and self.iter == 2:
                raise CancelBatchException()  # must reach fastai as it is, not as an error
    train_only, cancels = TrainOnly(layers=nn.Conv2d), CancelsOne(layers=nn.Conv2d, valid=False)
    make_learner(cbs=train_only).fit(1)
    make_learner(cbs=cancels).fit(1)
    assert train_only.recording.phase.tolist() == ["train"] * TRAIN_BATCHES
    assert cancels.recording.iteration.tolist() == [0, 1, 3, 4, 5]  # the cancelled batch's column dropped


def test_an_error_in_an_event_names_the_callback_and_event():
    learn = make_learner(cbs=ActivationHistogram(layers="no_such_layer"))
    with pytest.raises(Exception, match="ActivationHistogram.*before_fit") as error:
        learn.fit(1)
    assert "no_such_layer" in str(error.value)


def test_no_fastai_class_is_patched_for_the_whole_process():
    "Only the learners that carry an ActivationHistogram get a `fit` that unhooks after a crash, as their own."
    from fastai.learner import Learner
    import colordim.integrations.fastai as integration
    assert "fit" in Learner.__dict__ and not isinstance(Learner.__dict__["fit"], integration._FitThatUnhooks)
    assert Learner.fit.__module__ == "fastai.learner"
    plain = make_learner()
    assert "fit" not in plain.__dict__                     # a learner without the callback: untouched
    callback = ActivationHistogram(layers=[0])
    carrier = make_learner(cbs=callback)
    assert isinstance(carrier.__dict__["fit"], integration._FitThatUnhooks)
    carrier.remove_cb(callback)
    assert "fit" not in carrier.__dict__                   # its own fit back once none is left
    assert callback.learn is None


def test_a_callback_passed_to_fit_comes_off_after_a_crash():
    "fit(cbs=...) removes its callbacks in a `finally`: the callback unhooks there, the batches it kept stay."
    model = tiny_cnn()
    before = hook_counts(model)
    learn = make_learner(model=model)
    callback = ActivationHistogram(valid=False)
    with pytest.raises(RuntimeError, match="bad batch"):
        learn.fit(1, cbs=[callback, FailAt(RuntimeError("bad batch"), at=2)])
    assert hook_counts(model) == before
    assert callback.recording.iteration.tolist() == [0, 1]
    assert "fit" not in learn.__dict__ and callback.learn is None


def test_a_subclassed_learners_own_fit_runs_under_the_guard():
    from fastai.learner import Learner
    calls = []

    class Counting(Learner):
        def fit(self, *args, **kwargs):
            calls.append(args)
            return super().fit(*args, **kwargs)
    base = make_learner()
    learn = Counting(base.dls, tiny_cnn(), loss_func=base.loss_func, cbs=ActivationHistogram(valid=False))
    learn.fit(1)
    assert calls == [(1,)] and len(learn.activation_histogram.recording) == TRAIN_BATCHES


def test_a_callback_exported_by_the_last_version_loads_with_its_learner_and_settings():
    "colordim 0.1 pickled the callback's learner as `learn` and its recorder as `engine`."
    callback = ActivationHistogram(layers=[0], bins=11)
    learn = make_learner(cbs=callback)
    state = callback.__getstate__()
    state["learn"], state["engine"] = state.pop("_carrier"), state.pop("histogram_recorder")
    old = ActivationHistogram.__new__(ActivationHistogram)
    old.__setstate__(state)
    assert old.learn is learn and old.histogram_recorder is None and old.bins == 11
    assert "engine" not in old.__dict__ and "learn" not in old.__dict__
