"""TensorBoard: a run written as histogram summaries and read back with TensorBoard's own reader."""
import sys

import numpy as np
import pytest
import torch
from torch import nn

import colordim
from test_cli import run, saved_run


def read_histograms(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import HISTOGRAMS, EventAccumulator
    events = EventAccumulator(str(log_dir), size_guidance={HISTOGRAMS: 0})
    events.Reload()
    return {tag: events.Histograms(tag) for tag in events.Tags()["histograms"]}


def test_every_layer_and_phase_becomes_a_histogram_series_with_the_same_counts(tmp_path):
    recording = colordim.Recording.load(saved_run(tmp_path / "a.npz"))
    tags = colordim.to_tensorboard(recording, tmp_path / "logs")
    assert tags == [f"activation/{name}/{phase}" for name in ("0", "1", "2") for phase in ("train", "valid")]
    histograms = read_histograms(tmp_path / "logs")
    assert sorted(histograms) == sorted(tags)
    train = histograms["activation/1/train"]
    assert [event.step for event in train] == [0, 1, 2, 3, 5, 6, 7, 8]      # the columns of the train phase
    for event, column in zip(train, np.flatnonzero(recording.phase == "train")):
        assert list(event.histogram_value.bucket) == recording.counts["1"][column].tolist()
        assert event.histogram_value.bucket_limit[0] == -4.0                 # underflow's right edge: low
        assert event.histogram_value.num == recording.numel["1"][column]
        assert event.histogram_value.sum == pytest.approx(recording.mean["1"][column] * recording.numel["1"][column])


def test_gradients_go_to_their_own_series_and_the_command_writes_them(tmp_path):
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    with colordim.record(model, layers=[2], grads=True) as rec:
        model(torch.randn(8, 3)).sum().backward()
    rec.recording.save(tmp_path / "g.npz")
    result = run("tensorboard", tmp_path / "g.npz", tmp_path / "logs")
    assert result.returncode == 0, result.stderr
    assert "wrote 2 histogram series" in result.stdout
    assert sorted(read_histograms(tmp_path / "logs")) == ["activation/2/train", "grad/2/train"]


def test_without_tensorboard_the_error_says_which_extra_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    recording = colordim.Recording.load(saved_run(tmp_path / "a.npz"))
    with pytest.raises(ImportError, match=r"pip install 'colordim\[tensorboard\]'"):
        colordim.to_tensorboard(recording, tmp_path / "logs")


def read_images(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import IMAGES, EventAccumulator
    events = EventAccumulator(str(log_dir), size_guidance={IMAGES: 0})
    events.Reload()
    return {tag: events.Images(tag) for tag in events.Tags()["images"]}


def test_the_callback_writes_histograms_during_training_next_to_fastais_tensorboard_callback(tmp_path):
    import matplotlib.image as mpimg
    import io
    from fastai.callback.tensorboard import TensorBoardCallback
    from colordim import ActivationHistogram
    from conftest import make_learner
    learn = make_learner(cbs=[ActivationHistogram(layers=["0", "3"], grads=True, tensorboard=tmp_path / "tb",
                                                  move_every=4),
                              TensorBoardCallback(tmp_path / "tb", trace_model=False, log_preds=False)])
    learn.fit(2)
    histograms = read_histograms(tmp_path / "tb")
    recording = learn.activation_histogram.recording
    assert sorted(tag for tag in histograms if tag.startswith(("activation/", "grad/"))) == sorted(
        f"{kind}/{name}/{phase}" for kind in ("activation", "grad") for name in ("0", "3") for phase in ("train", "valid")
        if not (kind == "grad" and phase == "valid"))
    train = histograms["activation/3/train"]
    assert [event.step for event in train] == list(range(12))  # the training iteration, over both epochs
    valid = histograms["activation/3/valid"]
    assert [event.step for event in valid] == [6, 7, 8, 12, 13, 14]  # after epoch 0's 6 and epoch 1's 12 batches
    columns = np.flatnonzero(recording.phase == "train")
    for event, column in zip(train, columns):  # the same counts as the recording
        assert list(event.histogram_value.bucket) == recording.counts["3"][column].tolist()
    images = read_images(tmp_path / "tb")["colordim/grid"]
    assert [image.step for image in images] == [5, 11]  # each epoch's end
    grid = mpimg.imread(io.BytesIO(images[-1].encoded_image_string), format="png")
    assert grid.shape[0] > 100 and grid.shape[1] > 300 and grid.std() > 0.05
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    scalars = EventAccumulator(str(tmp_path / "tb"))
    scalars.Reload()
    assert "train_loss" in scalars.Tags()["scalars"]  # fastai's callback wrote beside ours
    learn.fit(1)  # a second fit goes on from the first: nothing written twice
    again = read_histograms(tmp_path / "tb")["activation/3/train"]
    assert [event.step for event in again] == list(range(18))


def test_each_tags_steps_only_go_up_so_tensorboard_never_drops_a_written_histogram(tmp_path):
    """TensorBoard drops every event of a tag at or after a step that comes again. A validation outside the fit
    (record_inference) would land on the steps of the last epoch's validation: it is moved just past them."""
    from colordim import ActivationHistogram
    from conftest import make_learner
    learn = make_learner(cbs=ActivationHistogram(layers=["3"], tensorboard=tmp_path / "tb", move_every=1,
                                                 record_inference=True))
    learn.fit(1)
    learn.validate()
    recording = learn.activation_histogram.recording
    valid = read_histograms(tmp_path / "tb")["activation/3/valid"]
    assert [event.step for event in valid] == [6, 7, 8, 9, 10, 11]  # 6 training batches, then 3 + 3 validation
    assert [list(event.histogram_value.bucket) for event in valid] == \
        recording.counts["3"][recording.phase == "valid"].tolist()   # each written once, none lost
