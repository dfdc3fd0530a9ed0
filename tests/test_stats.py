"""Per-batch statistics recorded beside the histogram, against numpy on captured outputs."""
import numpy as np
import pytest
import torch
from torch import nn

from colordim.engine.find_layers import find_layers
from colordim.engine.recorder import HistogramRecorder


def record(model, layers, batches, **options):
    "Run `batches` through `model` with the engine on `layers`; also capture the outputs by hand."
    outputs = {name: [] for name in layers}
    handles = [module.register_forward_hook(lambda m, i, o, name=name: outputs[name].append(o.detach().clone()))
               for name, module in layers.items()]
    with HistogramRecorder(layers, **options) as engine:
        for iteration, batch in enumerate(batches):
            engine.begin_column(iteration=iteration)
            model(batch)
            engine.end_column()
    for handle in handles: handle.remove()
    return engine.recording, outputs


def dead_rate(output):
    "monitorch's death rate: units (dim 1) <= 0 for every element of the batch."
    values = np.moveaxis(output, 1, 0).reshape(output.shape[1], -1)
    return (values.max(1) <= 0).mean()


def test_mean_std_near_zero_min_max_and_dead_rate_equal_numpy():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(2, 6, 3), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 4 * 4, 5), nn.ReLU())
    with torch.no_grad():
        model[0].bias[:3] = -50   # three channels that never fire after the ReLU
    layers = find_layers(model, [0, 1, 3, 4])
    batches = [torch.randn(7, 2, 6, 6) * scale for scale in (0.02, 1.0, 4.0)]
    recording, outputs = record(model, layers, batches)
    for name in layers:
        for column, output in enumerate(outputs[name]):
            values = output.numpy().astype(np.float64)
            assert recording.mean[name][column] == pytest.approx(values.mean(), rel=1e-5, abs=1e-6)
            assert recording.std[name][column] == pytest.approx(values.std(ddof=1), rel=1e-4)
            assert recording.near_zero[name][column] == (np.abs(output.numpy()) <= np.float32(0.05)).mean()
            assert recording.min[name][column] == values.min()
            assert recording.max[name][column] == values.max()
            assert recording.dead_rate[name][column] == pytest.approx(dead_rate(values))
    assert recording.dead_rate["1"].min() >= 0.5          # the three channels pushed below zero, at least
    assert recording.channels["1"].tolist() == [6, 6, 6] and recording.channels["3"].tolist() == [5, 5, 5]


def test_all_zero_output_is_fully_dead_and_near_zero():
    class Zeros(nn.Module):
        def forward(self, x): return torch.zeros(4, 3, 2)
    zeros = Zeros()
    recording, _ = record(zeros, {"z": zeros}, [torch.ones(1)])
    assert recording.dead_rate["z"].tolist() == [1.0] and recording.near_zero["z"].tolist() == [1.0]
    assert recording.mean["z"].tolist() == [0.0] and recording.std["z"].tolist() == [0.0]


def test_two_forward_passes_in_one_column_combine_and_half_precision_is_exact():
    shared = nn.Linear(3, 3).half()
    batches = torch.randn(8, 3).half(), torch.randn(8, 3).half()
    engine = HistogramRecorder({"shared": shared}, near_zero=0.1).attach(root=shared)
    engine.begin_column()
    outputs = [shared(batch) for batch in batches]   # two passes (a siamese pair, two micro-batches)
    engine.end_column()
    engine.detach()
    recording = engine.recording
    assert recording.layer_names == ["shared"]
    both = torch.cat([o.detach().float().ravel() for o in outputs]).numpy().astype(np.float64)
    assert recording.mean["shared"][0] == pytest.approx(both.mean(), rel=1e-5)
    assert recording.std["shared"][0] == pytest.approx(both.std(ddof=1), rel=1e-4)
    assert recording.near_zero["shared"][0] == (np.abs(both) <= np.float32(0.1)).mean()
    assert (recording.min["shared"][0], recording.max["shared"][0]) == (both.min(), both.max())
    assert recording.channels["shared"].tolist() == [6]   # 3 units, seen twice


def test_stats_off_and_layers_that_never_ran_give_nan():
    model = nn.Sequential(nn.Linear(2, 2))
    unused = nn.Linear(2, 2)
    recording, _ = record(model, {"0": model[0], "unused": unused}, [torch.randn(3, 2)], stats=False)
    assert np.isnan(recording.mean["0"]).all() and np.isnan(recording.dead_rate["0"]).all()
    assert recording.hist["0"].sum() + recording.underflow["0"].sum() + recording.overflow["0"].sum() == 6
    recording, _ = record(model, {"0": model[0], "unused": unused}, [torch.randn(3, 2)])
    assert np.isnan(recording.mean["unused"]).all() and np.isnan(recording.max["unused"]).all()
    assert not np.isnan(recording.mean["0"]).any()


def test_statistics_survive_select_and_concat_across_epochs():
    model = nn.Linear(2, 4)
    engine = HistogramRecorder({"fc": model}).attach()
    for epoch in range(2):
        for iteration in range(3):
            engine.begin_column(epoch=epoch, iteration=iteration)
            model(torch.full((2, 2), float(epoch * 3 + iteration)))
            engine.end_column()
        engine.flush()
    engine.detach()
    recording = engine.recording
    assert len(recording.mean["fc"]) == 6
    np.testing.assert_allclose(recording.select_epoch(1).mean["fc"], recording.mean["fc"][3:])


@pytest.mark.parametrize("value", [-0.1, float("nan"), "0.05", True])
def test_bad_near_zero(value):
    with pytest.raises(ValueError, match="near_zero: expected a finite number >= 0"):
        HistogramRecorder({"fc": nn.Linear(1, 1)}, near_zero=value)


@pytest.mark.parametrize("path", ["fused", "torch"])
def test_statistics_hold_for_huge_values_and_for_a_large_mean_with_a_small_spread(path, monkeypatch):
    "float64 sums: an untrained resnet50's ~1e35 activations, and mean 1e4 with std 1e-2 (float32 would lose both)."
    import colordim.engine.plans
    monkeypatch.setattr(colordim.engine.plans, "USE_FUSED", path == "fused")
    generator = torch.Generator().manual_seed(0)
    huge = torch.randn(16, 8, 6, 6, generator=generator) * 1e35
    narrow = 1e4 + 1e-2 * torch.randn(64, 32, 8, generator=generator)
    layer = nn.Identity()
    for values, name in ((huge, "huge"), (narrow, "narrow")):
        recording, _ = record(layer, {"x": layer}, [values], range=(-1, 1))
        exact = values.double().numpy().ravel()
        assert np.isfinite(recording.mean["x"][0]) and np.isfinite(recording.std["x"][0]), name
        assert recording.mean["x"][0] == pytest.approx(exact.mean(), rel=1e-6), name
        assert recording.std["x"][0] == pytest.approx(exact.std(ddof=1), rel=1e-3), name
        assert (recording.min["x"][0], recording.max["x"][0]) == (exact.min(), exact.max())


def test_moments_in_the_outputs_own_dtype_never_change_the_output():
    "On MPS the moments are float32, the output's dtype: the squares must be taken on a copy."
    from colordim.engine.torch_kernels import add_moments
    output = torch.tensor([[1.0, -2.0], [3.0, 0.5]])
    before = output.clone()
    out = torch.tensor([0.0, 0.0, 0.0, 0.0, -float("inf"), -float("inf")])  # float32, as on MPS
    add_moments(output, 0.05, out)
    assert torch.equal(output, before)
    assert out.tolist() == [2.5, 1 + 4 + 9 + 0.25, 0.0, 0.0, 2.0, 3.0]
