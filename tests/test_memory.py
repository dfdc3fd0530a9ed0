"""max_columns: merging neighbouring columns keeps memory bounded and every count conserved."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

import colordim
from colordim.engine.recorder import HistogramRecorder


def test_100000_batches_stay_within_max_columns_and_conserve_totals():
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    engine = HistogramRecorder({"fc": model}, bins=8, range=(-2, 2), max_columns=500).attach()
    inputs = torch.randn(64, 4, 3)
    bound = 0
    for epoch in range(4):
        engine.reserve(25_000)
        for iteration in range(25_000):
            engine.begin_column("train", epoch=epoch, iteration=iteration)
            model(inputs[iteration % 64])
            engine.end_column()
            if iteration % 5000 == 4999:
                bound = max(bound, engine.nbytes)
        engine.flush()
    engine.detach()
    recording = engine.recording
    assert len(recording) <= 500
    assert recording.batches.sum() == 100_000
    assert recording.numel["fc"].sum() == 100_000 * 4 * 2           # 4 rows x 2 features per batch
    assert recording.counts["fc"].sum() == 100_000 * 8
    assert recording.channels["fc"].sum() == 100_000 * 2
    # columns never straddle an epoch: each epoch's columns hold exactly its 25,000 batches
    assert [recording.batches[recording.epoch == epoch].sum() for epoch in range(4)] == [25_000] * 4
    # memory: 500 columns on the host plus at most 501 device rows, each (8 + 2) counts and 6 moments
    per_column = (8 + 2) * 8 + 6 * 8 + 3 * 8
    assert bound <= 2 * 501 * per_column + 100_000   # never grew with the number of batches
    assert recording.max["fc"].max() == pytest.approx(float(max(model(x).max() for x in inputs)))


def test_coarsen_merges_within_epochs_and_phases_only():
    layer = nn.Identity()
    engine = HistogramRecorder({"x": layer}, bins=4, range=(0, 4)).attach()
    for epoch in range(2):
        for phase, batches in (("train", 5), ("valid", 2)):
            for iteration in range(batches):
                engine.begin_column(phase, epoch=epoch, iteration=iteration)
                layer(torch.full((3,), float(iteration)))
                engine.end_column()
    engine.detach()
    merged = engine.recording.coarsen(2)
    assert merged.phase.tolist() == ["train"] * 3 + ["valid"] + ["train"] * 3 + ["valid"]
    assert merged.batches.tolist() == [2, 2, 1, 2] * 2
    assert merged.iteration.tolist() == [0, 2, 4, 0] * 2
    assert merged.hist["x"][0].tolist() == [3, 3, 0, 0]              # values 0 and 1 of batches 0 and 1
    assert merged.max["x"].tolist() == [1, 3, 4, 1] * 2 and merged.min["x"].tolist() == [0, 2, 4, 0] * 2
    np.testing.assert_allclose(merged.mean["x"], [0.5, 2.5, 4, 0.5] * 2)


def test_bad_max_columns():
    with pytest.raises(ValueError, match="max_columns: expected an int >= 2"):
        HistogramRecorder({"x": nn.Identity()}, max_columns=1)


def test_a_300_module_model_over_many_steps_stays_within_both_budgets_and_loses_nothing():
    "A step loop that never calls epoch(): rows move to the host every few steps, merged there past its budget."
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Tanh() if i % 2 else nn.Linear(2, 2) for i in range(300)])
    budget = 2 ** 20
    steps, x = 1_000, torch.randn(1, 2)  # 38 moves, merged on the host to 64 steps a column
    with torch.no_grad(), colordim.record(model, layers="*", bins=8, range=(-2, 2), device_bytes=budget,
                                          host_bytes=budget) as rec:
        engine, device, host = rec.recorder, 0, 0
        for step in range(steps):
            model(x)
            device, host = max(device, engine.device_nbytes), max(host, engine.host_nbytes)
    recording = rec.recording
    assert engine.columns.rows == 26 and engine.columns.max_columns == 24   # what 1 MiB allows for 300 layers
    assert device <= budget and host <= budget                             # at every step
    assert len(recording.layer_names) == 300 and len(recording) <= 24
    assert recording.batches.sum() == steps                                # nothing lost
    for name in recording.layer_names:
        assert recording.numel[name].sum() == 2 * steps
        assert recording.counts[name].sum() + recording.nan[name].sum() == 2 * steps


def test_on_cuda_a_move_to_the_host_is_waited_for_only_at_the_next_move_or_a_read(monkeypatch):
    "No CUDA here: the copies' event is a stand-in that counts its waits; the device rows are the CPU's."
    from colordim.engine.buffer import LayerBuffer
    waits = []

    class Event:
        def synchronize(self):
            waits.append(len(waits))

    copy = LayerBuffer.to_host
    monkeypatch.setattr(LayerBuffer, "start_to_host", lambda self, used: (*copy(self, used), Event()))
    layer = nn.Identity()
    engine = HistogramRecorder({"x": layer}, bins=4, range=(0, 4)).attach()
    for column in range(3):
        engine.begin_column(iteration=column)
        layer(torch.full((2,), float(column)))
        engine.end_column()
        if column == 0:
            engine.flush()
            assert waits == []                                             # started, not waited for
    engine.flush()
    assert len(waits) == 1                                                 # the first move, at the second
    recording = engine.recording
    assert len(waits) == 2 and recording.hist["x"].tolist() == [[2, 0, 0, 0], [0, 2, 0, 0], [0, 0, 2, 0]]
    engine.detach()


def test_the_callback_moves_every_few_batches_and_checks_its_budgets():
    from colordim import ActivationHistogram
    from conftest import make_learner
    with pytest.raises(ValueError, match=r"device_bytes: expected a number of bytes >= 2\*\*20"):
        ActivationHistogram(device_bytes=1000)
    with pytest.raises(ValueError, match="move_every: expected an int >= 1"):
        ActivationHistogram(move_every=0)
    callback = ActivationHistogram(layers=["0", "1"], move_every=4)
    learn = make_learner(cbs=callback)
    learn.fit(1)
    assert callback.histogram_recorder.columns.rows == 4 and len(callback.histogram_recorder.columns) == 0
    recording = callback.recording
    assert recording.phase.tolist() == ["train"] * 6 + ["valid"] * 3 and recording.batches.sum() == 9
    assert recording.numel["0"].tolist() == [8 * 4 * 64] * 8 + [4 * 4 * 64]


RESIDENT = """
import json, os, sys
import torch
from torch import nn
import colordim

def resident():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

torch.manual_seed(0)
model = nn.Sequential(*[module for _ in range(10) for module in (nn.Linear(8, 8), nn.ReLU())])
x, readings = torch.randn(4, 8), []
with torch.no_grad(), colordim.record(model, host_bytes=16 * 2 ** 20) as rec:
    for step in range(16_000):
        model(x)
        if step % 1000 == 0:
            readings.append((resident(), rec.recorder.host_nbytes, rec.recorder.device_nbytes))
recording = rec.recording
print(json.dumps(dict(readings=readings, batches=int(recording.batches.sum()), columns=len(recording),
                      numel=int(recording.numel["0"].sum()), width=rec.recorder.host.width)))
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="resident memory read from Linux's /proc")
def test_resident_memory_stays_flat_over_a_long_step_loop_merging_on_the_host():
    """16,000 steps of 10 layers with host_bytes=16 MiB (room for 1,723 columns): the host's columns merge in
    place four times (16 batches a column by the end). Concatenating at each merge made this process grow by
    46 MiB for a 16 MiB budget; now it grows by the budgets (21.5 MiB: 15.7 host, 2.1 device, a move's copy)
    and stays flat once the columns are full. In a process of its own: the suite's earlier allocations would
    blur it."""
    import json
    result = subprocess.run([sys.executable, "-c", RESIDENT], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    resident, host, device = (np.array(column) for column in zip(*measured["readings"]))
    mib = 2 ** 20
    assert host.max() <= 16 * mib and device.max() <= 2.5 * mib             # the recorder's own bytes, in budget
    assert resident.max() - resident[0] <= host.max() + device.max() + 8 * mib  # the process: the budgets, no more
    assert np.ptp(resident[8:]) <= 2 * mib                                   # flat over the second half
    assert measured["batches"] == 16_000 and measured["numel"] == 16_000 * 4 * 8  # every step counted
    assert measured["columns"] <= 1_723 and measured["width"] == 16
