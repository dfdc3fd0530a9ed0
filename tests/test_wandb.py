"""ActivationHistogram(wandb=True): histograms and the grid in the active W&B run, offline, read back."""
import glob
import json
import struct

import matplotlib.image as mpimg
import pytest

from colordim import ActivationHistogram
from conftest import make_learner

wandb = pytest.importorskip("wandb")


def history(run_dir):
    "The history rows of an offline run's .wandb file (a LevelDB-style log of protobuf records)."
    from wandb.proto import wandb_internal_pb2
    raw = open(glob.glob(f"{run_dir}/run-*.wandb")[0], "rb").read()
    rows, pos, pending, block = [], 7, b"", 32768  # 7: the file's own header
    while pos + 7 <= len(raw):
        if block - pos % block < 7:  # too little left in a block for a record header: padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", raw[pos:pos + 7])
        chunk, pos = raw[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 0:  # padding to the block's end
            pos += block - pos % block if length == 0 else 0
            continue
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):  # a whole record, or its last piece
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            if record.WhichOneof("record_type") == "history":
                row = {}
                for item in record.history.item:
                    key = item.key or item.nested_key[0]
                    value = json.loads(item.value_json)
                    if len(item.nested_key) > 1:
                        row.setdefault(key, {})[item.nested_key[1]] = value
                    else:
                        row[key] = value
                rows.append(row)
    return rows


def test_histograms_and_the_grid_go_to_the_wandb_run_beside_the_users_own_logging(tmp_path, monkeypatch):
    "fastai's WandbCallback fails in its before_fit with this wandb (vars() of a run setting): a loss logger stands in."
    from fastai.callback.core import Callback

    class LossLogger(Callback):  # what WandbCallback does each batch
        def after_batch(self):
            if self.training:
                wandb.log({"train_loss": float(self.loss)})
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = wandb.init(project="colordim-tests", dir=str(tmp_path), mode="offline")
    try:
        learn = make_learner(cbs=[ActivationHistogram(layers=["0", "3"], wandb=True),
                                  LossLogger()])
        learn.fit(2)
        run_dir = run.dir.rsplit("/files", 1)[0]
    finally:
        wandb.finish()
    rows = history(run_dir)
    logged = [row for row in rows if "colordim/activation/3/train" in row]
    assert len(logged) == 2  # each epoch's end
    recording = learn.activation_histogram.recording
    for epoch, row in enumerate(logged):
        histogram = row["colordim/activation/3/train"]
        assert histogram["_type"] == "histogram" and histogram["bins"] == pytest.approx(recording.edges["3"].tolist())
        train = (recording.phase == "train") & (recording.epoch == epoch)
        assert histogram["values"] == recording.counts["3"][train].sum(0)[1:-1].tolist()
        assert "colordim/activation/0/valid" in row and "colordim/grid" in row
    assert sum("train_loss" in row for row in rows) == 12  # the user's steps, ours joined to two of them
    grids = sorted(glob.glob(f"{run_dir}/files/media/images/colordim/grid_*.png"))
    assert len(grids) == 2 and mpimg.imread(grids[-1]).shape[1] > 300


def test_without_a_run_the_fit_stops_at_once_with_what_to_do():
    assert wandb.run is None
    learn = make_learner(cbs=ActivationHistogram(wandb=True))
    with pytest.raises(ValueError, match=r"no W&B run is active; call wandb.init\(...\) before fit"):
        learn.fit(1)
