"""colordim.record around a hand-written PyTorch loop: columns, phases, epochs, counts, hooks."""
import numpy as np
import pytest
import torch
from torch import nn

import colordim
from conftest import taps


def model_and_data():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    x, y = torch.randn(40, 4), torch.randint(0, 2, (40,))
    return model, [(x[i:i + 8], y[i:i + 8]) for i in range(0, 32, 8)], (x[32:], y[32:])


def test_a_hand_written_loop_records_train_and_valid_columns_per_epoch():
    model, train, (x_valid, y_valid) = model_and_data()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with colordim.record(model, layers=[0, 1], bins=20, range=(-3, 3)) as rec:
        for epoch in range(2):
            model.train()
            for xb, yb in train:
                loss = nn.functional.cross_entropy(model(xb), yb)
                optimizer.zero_grad(); loss.backward(); optimizer.step()
            model.eval()
            with torch.no_grad():
                model(x_valid)
            rec.epoch()
    recording = rec.recording
    assert recording.phase.tolist() == (["train"] * 4 + ["valid"]) * 2
    assert recording.epoch.tolist() == [0] * 5 + [1] * 5
    assert recording.iteration.tolist() == [0, 1, 2, 3, 0] * 2
    assert recording.numel["0"].tolist() == [64, 64, 64, 64, 64] * 2      # 8 x 8 features, valid 8 x 8 too
    total = recording.hist["1"].sum(1) + recording.underflow["1"] + recording.overflow["1"]
    assert total.tolist() == recording.numel["1"].tolist()
    assert all(not taps(module) and not module._forward_pre_hooks for module in model.modules())
    assert colordim.color_dim(recording, "1").get_ylim() == (-3.0, 3.0)


def test_an_error_in_the_loop_keeps_finished_passes_and_removes_hooks():
    model, train, _ = model_and_data()
    with pytest.raises(RuntimeError, match="stop"):
        with colordim.record(model) as rec:
            model(train[0][0])
            model(train[1][0])
            raise RuntimeError("stop")
    assert len(rec.recording) == 2 and rec.recording.layer_names == ["0", "2"]
    assert all(not taps(module) and not module._forward_pre_hooks for module in model.modules())


def test_a_forward_pass_that_fails_midway_is_not_a_column():
    class Fails(nn.Module):
        def forward(self, x):
            if x.shape[0] == 3: raise ValueError("bad batch")
            return x
    model = nn.Sequential(nn.Linear(2, 2), Fails())
    with colordim.record(model, layers=[0]) as rec:
        model(torch.randn(4, 2))
        with pytest.raises(ValueError):
            model(torch.randn(3, 2))          # layer 0 ran, then the model failed
        model(torch.randn(5, 2))
    assert rec.recording.numel["0"].tolist() == [8, 10]
    assert rec.recording.iteration.tolist() == [0, 1]
