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
    from google.protobuf.message import DecodeError
    for _ in range(300):  # wandb.finish() may return before its writer process has written everything
        try:  # read while it writes: a record may be cut short (seen: "Wire format was corrupt")
            records = _records(open(glob.glob(f"{run_dir}/run-*.wandb")[0], "rb").read())
        except DecodeError:
            records = []
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
        if pos + 7 + length > len(raw):  # a record still being written (the writer polled mid-write): not yet
            break
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


def fit_logged(tmp_path, monkeypatch, epochs, *callbacks):
    "A fit of `epochs` into an offline run, moving every 4 batches: the run's rows, ours among them, and the recording."
    run = offline_run(tmp_path, monkeypatch)
    try:
        learn = make_learner(cbs=[ActivationHistogram(layers=["0", "3"], wandb=True, move_every=4), *callbacks])
        learn.fit(epochs)
        run_dir = run.dir.rsplit("/files", 1)[0]
    finally:
        wandb.finish()
    rows = history(run_dir)
    ours = [row for row in rows if any(key.startswith("colordim/") for key in row)]
    return rows, ours, learn.activation_histogram.recording, run_dir


def assert_every_batch_logged_once(rows, recording, name="3"):
    "The rows' histograms add up to the recording's counts: each batch once, none overwritten, none twice."
    for phase in ("train", "valid"):
        logged = [row[f"colordim/activation/{name}/{phase}"]["values"] for row in rows
                  if f"colordim/activation/{name}/{phase}" in row]
        assert np.sum(logged, axis=0).tolist() == recording.counts[name][recording.phase == phase].sum(0)[1:-1].tolist()


@pytest.mark.parametrize("epochs", [2, 3])
def test_with_nothing_else_logging_every_write_keeps_a_row_of_its_own(tmp_path, monkeypatch, epochs):
    "move_every=4: 6 training and 3 validation batches an epoch make moves at 4, 6+3, 13, 15+3, ... and each is a row."
    _, rows, recording, run_dir = fit_logged(tmp_path, monkeypatch, epochs)
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
    rows, ours, recording, _ = fit_logged(tmp_path, monkeypatch, 3, LossLogger())
    assert [row["_step"] for row in rows if "train_loss" in row] == list(range(18))  # the user's steps, undisturbed
    assert_every_batch_logged_once(ours, recording)
    # Writes come at every 4th batch (train or valid) and at each epoch's end; each joins the row the user logs
    # next (training batch k is W&B step k), or, in validation, where nobody logs, is added to our row still
    # waiting there (6 and 12: the epoch's end joins the move at its 2nd validation batch). The last one, after
    # the user's last step, is committed by wandb.finish().
    assert [(row["_step"], row["colordim/step"]) for row in ours] == [
        (3, 4), (6, 6), (8, 9), (12, 12), (13, 14), (17, 18), (18, 18)]
    assert [row["colordim/step"] for row in ours if "colordim/grid" in row] == [6, 12, 18]


def test_a_logger_with_explicit_steps_loses_none_of_its_logs(tmp_path, monkeypatch):
    "As fastai's WandbCallback: step=N at each training batch, and its epoch's metrics at that same step again."
    from fastai.callback.core import Callback

    class StepLogger(Callback):
        order, step = 60, 0

        def after_batch(self):
            if self.training:
                self.step += 1
                wandb.log({"train_loss": float(self.loss.detach())}, step=self.step)

        def after_epoch(self):
            wandb.log({"valid_loss": float(self.recorder.log[2])}, step=self.step)  # W&B drops it if step fell behind
    rows, ours, recording, _ = fit_logged(tmp_path, monkeypatch, 3, StepLogger())
    assert [row["_step"] for row in rows if "train_loss" in row] == list(range(1, 19))
    assert [row["_step"] for row in rows if "valid_loss" in row] == [6, 12, 18]  # each epoch's, none dropped
    assert_every_batch_logged_once(ours, recording)
    assert [row["colordim/step"] for row in ours if "colordim/grid" in row] == [6, 12, 18]


def test_without_a_run_the_fit_stops_at_once_with_what_to_do():
    assert wandb.run is None
    learn = make_learner(cbs=ActivationHistogram(wandb=True))
    with pytest.raises(ValueError, match=r"no W&B run is active; call wandb.init\(...\) before fit"):
        learn.fit(1)


def test_a_write_whose_bins_changed_under_a_waiting_row_commits_it_rather_than_replace_it(monkeypatch):
    "An auto range widened between two writes in a run where the user logs: the rows cannot be summed."
    from colordim.data.recording import Recording
    from colordim.integrations.wandb_log import WandbLog

    class Run:
        step, rows, pending = 5, [], {}  # the user has logged 5 steps

        def define_metric(self, *args, **kwargs): pass

        def log(self, row, commit=None):  # as W&B: an uncommitted row's keys are replaced by later ones
            self.pending.update(row)
            if commit:
                self.rows.append((self.step, self.pending))
                self.pending, self.step = {}, self.step + 1
    run = Run()
    monkeypatch.setattr(wandb, "run", run)
    monkeypatch.setattr(wandb, "Histogram", lambda np_histogram: np_histogram)

    def part(high):
        return Recording(counts={"x": np.array([[0, 3, 1, 0]])}, numel={"x": np.array([4])},
                         edges={"x": np.array([0.0, high / 2, high])}, shapes={"x": (4,)}, fit=np.array([0]),
                         epoch=np.array([0]), phase=np.array(["valid"]), iteration=np.array([0]))
    key = "colordim/activation/x/valid"
    writer = WandbLog()
    writer.write([part(1.0)])
    run.log({"loss": 1.0}, commit=True)  # the user logs: our row joined theirs, at step 5
    writer.write([part(1.0)])
    writer.write([part(1.0)])  # same bins: added into our row waiting at step 6
    assert [step for step, _ in run.rows] == [5] and run.pending[key][0].tolist() == [6, 2]
    writer.write([part(2.0)])  # other bins: our waiting row is committed first
    assert [step for step, _ in run.rows] == [5, 6] and run.rows[1][1][key][0].tolist() == [6, 2]
    assert run.pending[key][1].tolist() == [0.0, 1.0, 2.0] and run.pending[key][0].tolist() == [3, 1]
