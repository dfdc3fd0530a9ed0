"""Saved runs: round trip, refusal of bad files, atomic writes, and saving at every epoch end."""
import json

import numpy as np
import pytest
import torch
from torch import nn

import colordim
from colordim import ActivationHistogram, Recording
from conftest import make_learner


def a_recording(**options):
    class Pair(nn.Module):
        def forward(self, x): return x, x
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), Pair())
    with colordim.record(model, layers=[0, 1, 2], **options) as rec:
        for epoch in range(2):
            model.train()
            for _ in range(3):
                model(torch.randn(5, 3) * 4)
            model.eval()
            model(torch.tensor([[float("nan"), 1.0, 2.0]]))
            rec.epoch()
    return rec.recording


@pytest.mark.parametrize("options", [{}, {"scale": "symlog", "range": (-100, 100)}, {"range": "auto", "stats": False},
                                     {"max_columns": 2}])
def test_save_then_load_is_equal(tmp_path, options):
    recording = a_recording(**options)
    path = recording.save(tmp_path / "runs" / "a.npz")
    loaded = Recording.load(path)
    assert loaded == recording and loaded is not recording
    assert loaded.layer_names == ["0", "1", "2[0]", "2[1]"] and loaded.skipped == {}
    assert loaded.range("0") == recording.range("0") and loaded.nan["0"].tolist() == recording.nan["0"].tolist()
    assert loaded != a_recording(range=(-1, 1))


def test_a_truncated_file_a_future_version_and_other_files_are_refused(tmp_path):
    path = a_recording().save(tmp_path / "a.npz")
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError, match="truncated.npz: not a colordim recording .not a complete .npz archive"):
        Recording.load(truncated)
    text = tmp_path / "notes.npz"  # a text file renamed: numpy would call it a pickle and suggest allow_pickle
    text.write_text("hello")
    with pytest.raises(ValueError, match="notes.npz: not a colordim recording") as refused:
        Recording.load(text)
    assert "pickle" not in str(refused.value)
    with np.load(path) as data:
        arrays = dict(data)
    header = json.loads(bytes(arrays["header"]).decode())
    header["version"] = 99
    arrays["header"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    np.savez(tmp_path / "future.npz", **arrays)
    with pytest.raises(ValueError, match="written by a newer colordim .* format 99\\); this one reads format 1"):
        Recording.load(tmp_path / "future.npz")
    np.savez(tmp_path / "other.npz", x=np.arange(3), y=np.ones(2))
    with pytest.raises(ValueError, match="other.npz: not a colordim recording .an .npz without colordim's header; "
                                         "its arrays: x, y.$"):
        Recording.load(tmp_path / "other.npz")
    np.savez(tmp_path / "json.npz", header=np.frombuffer(b'{"format": "theirs"}', dtype=np.uint8))
    with pytest.raises(ValueError, match="json.npz: not a colordim recording .its header's format is 'theirs'"):
        Recording.load(tmp_path / "json.npz")
    with pytest.raises(FileNotFoundError, match="missing.npz: no such file"):
        Recording.load(tmp_path / "missing.npz")


def test_a_failure_mid_save_leaves_the_old_file_intact(tmp_path, monkeypatch):
    path = a_recording().save(tmp_path / "a.npz")
    before = path.read_bytes()
    def fail_midway(file, **arrays):
        file.write(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt
    monkeypatch.setattr(np, "savez_compressed", fail_midway)
    with pytest.raises(KeyboardInterrupt):
        a_recording(range=(-1, 1)).save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["a.npz"]          # no temporary file left behind


def test_the_callback_saves_at_every_epoch_end_even_when_the_fit_dies(tmp_path):
    from fastai.callback.core import Callback
    class DieInEpoch1(Callback):
        def before_batch(self):
            if self.epoch == 1 and self.iter == 2: raise RuntimeError("died")
    path = tmp_path / "runs" / "run.npz"
    learn = make_learner(cbs=[ActivationHistogram(layers=[0], save_to=path), DieInEpoch1()])
    with pytest.raises(RuntimeError, match="died"):
        learn.fit(3)
    saved = Recording.load(path)
    assert saved == learn.activation_histogram.recording        # epoch 0 and the finished batches of epoch 1
    assert saved.epoch.tolist() == [0] * 9 + [1, 1]


def test_the_end_of_a_fit_does_not_write_the_last_epoch_again(tmp_path, monkeypatch):
    writes = []
    original = Recording.save
    monkeypatch.setattr(Recording, "save", lambda self, path: writes.append(len(self)) or original(self, path))
    learn = make_learner(cbs=ActivationHistogram(layers=[0], save_to=tmp_path / "run.npz"))
    learn.fit(2)
    assert writes == [9, 18]                                  # one write per epoch, none repeated at fit end
    assert len(Recording.load(tmp_path / "run.npz")) == 18
