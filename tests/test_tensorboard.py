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
