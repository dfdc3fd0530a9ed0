"""sample=N: a fixed random subset per layer and output size, counts scaled to the whole output."""
import numpy as np
import pytest
import torch
from torch import nn

from colordim.engine.recorder import HistogramRecorder


def record(values_per_batch, **options):
    layer = nn.Identity()
    with HistogramRecorder({"x": layer}, bins=40, range=(-4, 4), **options) as engine:
        for iteration, values in enumerate(values_per_batch):
            engine.begin_column(iteration=iteration)
            layer(values)
            engine.end_column()
    return engine


def test_sampled_histogram_is_close_to_the_exact_one(cpu_path):
    generator = torch.Generator().manual_seed(0)
    batches = [torch.randn(64, 32, 16, 16, generator=generator) for _ in range(3)]   # 524,288 values each
    exact = record(batches).recording
    sampled_engine = record(batches, sample=20_000)
    sampled = sampled_engine.recording
    for column in range(3):
        exact_share = exact.counts["x"][column] / exact.numel["x"][column]
        sampled_share = sampled.counts["x"][column] / sampled.numel["x"][column]
        # 20,000 samples: each bin's share is within 4 standard errors, and the total is the whole output
        tolerance = 4 * np.sqrt(exact_share * (1 - exact_share) / 20_000) + 1e-4
        assert (np.abs(sampled_share - exact_share) <= tolerance).all()
        assert sampled.counts["x"][column].sum() == pytest.approx(64 * 32 * 16 * 16)
    # the statistics are estimated from the same sample: within 4 standard errors of the exact ones
    assert np.abs(sampled.mean["x"] - exact.mean["x"]).max() < 4 / np.sqrt(20_000)
    assert np.abs(sampled.std["x"] / exact.std["x"] - 1).max() < 0.03
    assert np.abs(sampled.near_zero["x"] - exact.near_zero["x"]).max() < 0.01
    assert (sampled.max["x"] <= exact.max["x"]).all() and (sampled.max["x"] > 3).all()
    assert sampled.dead_rate["x"].tolist() == exact.dead_rate["x"].tolist() == [0, 0, 0]
    assert len(sampled_engine.layers["activation"][0].plans) == 1     # drawn once for this layer and size


def test_sampled_dead_units_are_found_from_the_sampled_positions(cpu_path):
    values = torch.randn(32, 8, 10, 10, generator=torch.Generator().manual_seed(1)).relu()
    values[:, :4] = 0.0                                   # channels 0-3 never fire
    recording = record([values], sample=2000).recording
    assert recording.dead_rate["x"].tolist() == [0.5]
    assert recording.channels["x"].tolist() == [8]


def test_outputs_no_bigger_than_the_sample_are_exact(cpu_path):
    batches = [torch.randn(10, 10) for _ in range(2)]
    exact, sampled = record(batches).recording, record(batches, sample=100).recording
    np.testing.assert_array_equal(exact.counts["x"], sampled.counts["x"])
    assert sampled.counts["x"].dtype == np.int64


def test_the_same_positions_every_batch(cpu_path):
    engine = record([torch.arange(1000.0) / 250 - 2, torch.arange(1000.0) / 250 - 2], sample=50)
    counts = engine.recording.counts["x"]
    np.testing.assert_array_equal(counts[0], counts[1])


@pytest.mark.parametrize("value", [0, -5, 2.5, True, "100"])
def test_bad_sample(value):
    with pytest.raises(ValueError, match="sample: expected None"):
        HistogramRecorder({"x": nn.Identity()}, sample=value)


def test_outputs_up_to_64_times_the_sample_are_sampled_in_whole_cache_lines():
    from colordim.engine.plans import LINE, draw_sample
    positions, unit_of, lines = draw_sample((64, 8, 14, 14), 4096, seed=3)   # 100,352 values <= 64 x 4096
    runs = positions.reshape(-1, LINE)
    assert len(positions) == 4096 and LINE == 16
    assert (runs[:, 0] % LINE == 0).all() and (runs - runs[:, :1] == torch.arange(LINE)).all()
    assert len(set(runs[:, 0].tolist())) == 4096 // LINE                  # no line twice
    assert (lines * LINE == runs[:, 0]).all()
    assert (unit_of == positions // (14 * 14) % 8).all()
    big, _, none = draw_sample((64, 32, 32, 32), 4096, seed=3)                    # 2,097,152 values: independent
    assert len(big) == 4096 and (big[1:] >= big[:-1]).all()
    assert (big[1:] - big[:-1] == 1).float().mean() < 0.01 and none is None  # not in runs
    short, _, _ = draw_sample((1000,), 200, seed=0)                            # 63 lines, the last of 8 values
    assert len(short) in (192, 184) and short.max() < 1000 and len(set(short.tolist())) == len(short)


def test_sample_in_lines_of_correlated_values_stays_close_to_the_exact_histogram(cpu_path):
    "Smooth maps (each value the mean of its 4 x 4 neighbourhood): lines of neighbours still do."
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(64, 8, 35, 35, generator=generator)
    smooth = nn.functional.avg_pool2d(noise, 4, stride=1) * 4                # (64, 8, 32, 32), std ~1
    exact, sampled = record([smooth]).recording, record([smooth], sample=8192).recording
    exact_share = exact.counts["x"][0] / exact.numel["x"][0]
    sampled_share = sampled.counts["x"][0] / sampled.numel["x"][0]
    # 6 standard errors of independent values (1.5 for neighbours' correlation, times 4); measured: 2.5
    assert (np.abs(sampled_share - exact_share) <= 6 * np.sqrt(exact_share * (1 - exact_share) / 8192) + 1e-4).all()
    assert abs(sampled.mean["x"][0] - exact.mean["x"][0]) < 6 / np.sqrt(8192)
