"""ActivationHistogram(wandb=True): histograms and the grid in the active W&B run, offline, read back."""
import glob
import json
import struct
import time

import matplotlib.image as mpimg
import numpy as np
import pytest

from colordim import ActivationHistogram
from conftest import make_learner

wandb = pytest.importorskip("wandb")


def history(run_dir):
    "The history rows of an offline run's .wandb file, read once W&B's writer has finished it (its exit record)."
    for _ in range(300):  # wandb.finish() may return before its writer process has written everything
        records = _records(open(glob.glob(f"{run_dir}/run-*.wandb")[0], "rb").read())
        if any(record.WhichOneof("record_type") == "exit" for record in records):
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"{run_dir}: the run's file has no exit record after 30 s")
    rows = []
    for record in records:
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


def _records(raw: bytes) -> list:
    "The protobuf records of a .wandb file (a LevelDB-style log: 32 KiB blocks of records in pieces)."
    from wandb.proto import wandb_internal_pb2
    records, pos, pending, block = [], 7, b"", 32768  # 7: the file's own header
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
            records.append(wandb_internal_pb2.Record())
            records[-1].ParseFromString(pending)
    return records


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


def offline_run(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    return wandb.init(project="colordim-tests", dir=str(tmp_path), mode="offline")


def colordim_rows(run_dir):
    return [row for row in history(run_dir) if any(key.startswith("colordim/") for key in row)]


def assert_every_batch_logged_once(rows, recording, name="3"):
    "The rows' histograms add up to the recording's counts: each batch once, none overwritten, none twice."
    for phase in ("train", "valid"):
        logged = [row[f"colordim/activation/{name}/{phase}"]["values"] for row in rows
                  if f"colordim/activation/{name}/{phase}" in row]
        assert np.sum(logged, axis=0).tolist() == recording.counts[name][recording.phase == phase].sum(0)[1:-1].tolist()


@pytest.mark.parametrize("epochs", [2, 3])
def test_with_nothing_else_logging_every_write_keeps_a_row_of_its_own(tmp_path, monkeypatch, epochs):
    "move_every=4: 6 training and 3 validation batches an epoch make moves at 4, 6+3, 13, 15+3, ... and each is a row."
    run = offline_run(tmp_path, monkeypatch)
    try:
        learn = make_learner(cbs=ActivationHistogram(layers=["0", "3"], wandb=True, move_every=4))
        learn.fit(epochs)
        run_dir = run.dir.rsplit("/files", 1)[0]
    finally:
        wandb.finish()
    recording = learn.activation_histogram.recording
    rows = colordim_rows(run_dir)
    grids = [row for row in rows if "colordim/grid" in row]
    assert len(grids) == epochs                                     # one grid per epoch: none replaced
    assert [row["colordim/step"] for row in grids] == [6 * (epoch + 1) for epoch in range(epochs)]
    assert_every_batch_logged_once(rows, recording)
    steps = [row["colordim/step"] for row in rows]
    assert steps == sorted(steps) and steps[0] == 4                  # the training batches seen at each write
    assert [row["_step"] for row in rows] == list(range(len(rows)))  # each its own W&B step
    assert len(glob.glob(f"{run_dir}/files/media/images/colordim/grid_*.png")) == epochs


def test_beside_a_logger_of_every_step_each_write_joins_its_rows_and_their_steps_stay(tmp_path, monkeypatch):
    from fastai.callback.core import Callback

    class LossLogger(Callback):
        order = 60  # after ours, as fastai's WandbCallback

        def after_batch(self):
            if self.training:
                wandb.log({"train_loss": float(self.loss.detach())})
    run = offline_run(tmp_path, monkeypatch)
    try:
        learn = make_learner(cbs=[ActivationHistogram(layers=["0", "3"], wandb=True, move_every=4), LossLogger()])
        learn.fit(3)
        run_dir = run.dir.rsplit("/files", 1)[0]
    finally:
        wandb.finish()
    rows = history(run_dir)
    losses = [row for row in rows if "train_loss" in row]
    assert [row["_step"] for row in losses] == list(range(18))       # the user's steps, undisturbed
    ours = [row for row in rows if any(key.startswith("colordim/") for key in row)]
    assert_every_batch_logged_once(ours, learn.activation_histogram.recording)
    assert sum("colordim/grid" in row for row in ours) == 3
    # our rows joined the user's next ones: none of ours is a W&B step of its own, but the last epoch's end
    assert sum("train_loss" not in row for row in ours) == 1


def test_without_a_run_the_fit_stops_at_once_with_what_to_do():
    assert wandb.run is None
    learn = make_learner(cbs=ActivationHistogram(wandb=True))
    with pytest.raises(ValueError, match=r"no W&B run is active; call wandb.init\(...\) before fit"):
        learn.fit(1)
