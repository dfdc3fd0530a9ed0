"""range="auto" and scale="symlog", against numpy references."""
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from torch import nn

from colordim import ActivationHistogram
from colordim.plot import color_dim
from colordim.layout import auto_range
from colordim.recorder import HistogramRecorder
from colordim.recording import bin_edges, readable_bound, symlog
from conftest import make_learner


def record(batches, **options):
    layer = nn.Identity()
    with HistogramRecorder({"x": layer}, **options) as engine:
        for iteration, values in enumerate(batches):
            engine.begin_column(iteration=iteration)
            layer(values)
            engine.end_column()
    return engine.recording


@pytest.mark.parametrize("value,expected", [(0.7, 1.0), (1.0, 1.0), (1.01, 2.0), (2.2, 2.5), (3, 5.0),
                                            (7.3, 10.0), (12, 20.0), (0.031, 0.05), (240, 250.0)])
def test_readable_bound(value, expected):
    assert readable_bound(value) == pytest.approx(expected)


def test_auto_range_from_the_first_batch_symmetric_padded_and_readable():
    first = torch.tensor([0.0, 2.0, -1.0, 3.3, float("inf"), float("nan")])   # finite |max| 3.3
    later = torch.tensor([-20.0, 0.1, 4.9])
    recording = record([first, later], range="auto", bins=10)
    assert recording.range("x") == (-5.0, 5.0)                     # 3.3 * 1.1 = 3.63 -> 5
    np.testing.assert_allclose(recording.edges["x"], np.linspace(-5, 5, 11))
    expected, _ = np.histogram([0.0, 2.0, -1.0, 3.3], bins=10, range=(-5, 5))
    assert recording.hist["x"][0].tolist() == expected.tolist()
    assert recording.overflow["x"].tolist() == [1, 0] and recording.underflow["x"].tolist() == [0, 1]
    assert recording.nan["x"].tolist() == [1, 0]
    assert auto_range(0.0) == (-1.0, 1.0)                          # an all-zero first batch


def test_auto_range_is_one_sync_per_layer_and_kept_across_fits():
    learn = make_learner(cbs=ActivationHistogram(layers=["0", "1"], range="auto"))
    learn.fit(1)
    ranges = [learn.activation_histogram.recording.range(name) for name in ("0", "1")]
    learn.fit(1)
    assert [learn.activation_histogram.recording.range(name) for name in ("0", "1")] == ranges
    assert all(low == -high and high in (1, 2, 2.5, 5, 10, 20, 25, 50) for low, high in ranges)


def test_symlog_bins_are_uniform_in_sign_log1p():
    values = torch.tensor([-1000.0, -5.0, -0.5, 0.0, 0.3, 2.0, 40.0, 900.0, 5000.0])
    recording = record([values], range=(-1000, 1000), bins=8, scale="symlog", linthresh=1.0)
    edges = recording.edges["x"]
    reference = np.sign(edges) * np.log1p(np.abs(edges))
    np.testing.assert_allclose(np.diff(reference), np.diff(reference)[0], rtol=1e-9)   # uniform in symlog
    assert (edges[0], edges[-1]) == (-1000, 1000)
    inside = values.numpy()[np.abs(values.numpy()) <= 1000].astype(np.float64)
    expected, _ = np.histogram(np.sign(inside) * np.log1p(np.abs(inside)), bins=8,
                               range=(-np.log1p(1000), np.log1p(1000)))
    assert recording.hist["x"][0].tolist() == expected.tolist()
    assert recording.overflow["x"].tolist() == [1]                 # 5000
    np.testing.assert_allclose(bin_edges(-1000, 1000, 8, 1.0), edges)


def test_symlog_plot_labels_real_activation_values(tmp_path):
    values = torch.tensor([-300.0, -2.0, 0.0, 0.5, 3.0, 80.0])
    recording = record([values, values * 2], range=(-1000, 1000), bins=20, scale="symlog")
    ax = color_dim(recording, "x", overlay="mean", fname=tmp_path / "symlog.png")
    assert ax.get_ylim() == pytest.approx((-symlog(1000, 1), symlog(1000, 1)))
    labels = [tick.get_text() for tick in ax.get_yticklabels()]
    assert {"0", "1", "10", "100", "1000", "-1000"} <= set(labels)
    positions = dict(zip(labels, ax.get_yticks()))
    assert positions["100"] == pytest.approx(np.log1p(100))
    plt.close("all")


def test_bad_scale_and_range():
    with pytest.raises(ValueError, match="scale: expected 'linear' or 'symlog', got 'log'"):
        HistogramRecorder({"x": nn.Identity()}, scale="log")
    with pytest.raises(ValueError, match="linthresh: expected a finite number > 0"):
        ActivationHistogram(scale="symlog", linthresh=0)
    with pytest.raises(ValueError, match="range: expected two numbers .* or 'auto', got 'automatic'"):
        ActivationHistogram(range="automatic")
