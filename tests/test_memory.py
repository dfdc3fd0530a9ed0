"""max_columns: merging neighbouring columns keeps memory bounded and every count conserved."""
import numpy as np
import pytest
import torch
from torch import nn

from colordim.recorder import HistogramRecorder


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
