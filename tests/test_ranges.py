"""range="auto" and scale="symlog", against numpy references."""
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from torch import nn

from colordim import ActivationHistogram
from colordim.views.plot import color_dim
from colordim.engine.recorder import HistogramRecorder
from colordim.data.recording import bin_edges, symlog
from conftest import make_learner


def record(batches, **options):
    layer = nn.Identity()
    with HistogramRecorder({"x": layer}, **options) as engine:
        for iteration, values in enumerate(batches):
            engine.begin_column(iteration=iteration)
            layer(values)
            engine.end_column()
    return engine.recording


def test_auto_range_fits_the_first_batch_then_widens_by_powers_of_two_and_merges_exactly(cpu_path):
    first = torch.tensor([0.0, 2.0, -1.0, 3.3, float("inf"), float("nan")])   # finite: -1 .. 3.3
    later = torch.tensor([-20.0, 0.1, 4.9])
    recording = record([first, later], range="auto", bins=10)
    assert recording.range("x") == (-32.0, 32.0)                   # -20 needs 2**5 below zero
    np.testing.assert_allclose(recording.edges["x"], np.linspace(-32, 32, 11))
    for column, values in enumerate([[0.0, 2.0, -1.0, 3.3], [-20.0, 0.1, 4.9]]):
        expected, _ = np.histogram(values, bins=10, range=(-32, 32))
        assert recording.hist["x"][column].tolist() == expected.tolist()
    assert recording.overflow["x"].tolist() == [1, 0] and recording.underflow["x"].tolist() == [0, 0]   # inf
    assert recording.nan["x"].tolist() == [1, 0]
    assert record([torch.zeros(4)], range="auto", bins=10).range("x") == (0.0, 1.0)   # an all-zero first batch


def test_a_layer_that_never_outputs_a_negative_value_gets_a_one_sided_range(cpu_path):
    recording = record([torch.tensor([0.0, 0.3, 2.5]), torch.tensor([7.0, 0.0])], range="auto", bins=8)
    assert recording.range("x") == (0.0, 8.0)                      # no empty negative half
    assert recording.hist["x"].tolist() == [[2, 0, 1, 0, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0, 0, 1]]
    later = record([torch.tensor([0.0, 0.3, 2.5]), torch.tensor([-0.5, 7.0])], range="auto", bins=8)
    assert later.range("x") == (-8.0, 8.0)                         # a negative value: symmetric from then on
    assert later.hist["x"].tolist() == [[0, 0, 0, 0, 2, 1, 0, 0], [0, 0, 0, 1, 0, 0, 0, 1]]


@pytest.mark.parametrize("bins,scale", [(100, "linear"), (7, "linear"), (10, "symlog")])
def test_a_growing_range_counts_exactly_what_binning_at_the_final_range_counts(cpu_path, bins, scale):
    "Merged counts equal a histogram at the final range: the grid keeps every old bin inside one new bin."
    generator = torch.Generator().manual_seed(0)
    batches = [torch.randn(300, generator=generator).abs() * 0.01] + \
        [torch.randn(300, generator=generator) * 1.7 ** step for step in range(12)]
    layer = nn.Identity()
    with HistogramRecorder({"x": layer}, range="auto", bins=bins, scale=scale) as engine:
        for iteration, values in enumerate(batches):
            engine.begin_column(iteration=iteration)
            layer(values)
            engine.end_column()
            if iteration % 5 == 4:
                engine.flush()                                     # part of it on the host, part on the device
    recording = engine.recording
    transform = (lambda v: v) if scale == "linear" else (lambda v: np.sign(v) * np.log1p(np.abs(v)))
    low, high = transform(np.array(recording.range("x")))           # where the bins are uniform
    assert 0.0 in recording.edges["x"] and low < 0                  # a grid anchored at 0, symmetric:
    if bins % 2 == 0:
        assert high == pytest.approx(-low) and np.log2(high) == pytest.approx(round(np.log2(high)))  # a power of 2
    else:
        assert high == pytest.approx(-low * 4 / 3)                  # 7 bins: 3 below zero, 4 above
    assert recording.underflow["x"].sum() == recording.overflow["x"].sum() == 0
    edges = recording.edges["x"]
    for column, values in enumerate(batches):
        expected, _ = np.histogram(transform(values.numpy().astype(np.float64)), bins=transform(edges))
        assert recording.hist["x"][column].tolist() == expected.tolist(), column


def test_the_demo_cnn_over_a_whole_fit_has_nothing_outside_its_auto_ranges():
    "The case of the issue: digits, a CNN whose activations grow tenfold as it trains."
    from colordim.demos.cnn import BLOCKS, train
    learn = train(batch_norm=False, epochs=1, grads=True, range="auto")
    recording = learn.activation_histogram.recording
    for kind in (recording, recording.grads):
        for name in BLOCKS:
            outside = kind.underflow[name].sum() + kind.overflow[name].sum()
            assert outside == 0, (name, outside)
            low, high = kind.range(name)
            largest = max(np.nanmax(kind.max[name]), -np.nanmin(kind.min[name]))
            assert largest > (high - low) / 4                       # as narrow as the grid allows
    for name in BLOCKS[:4]:                                        # conv + ReLU: nothing below zero
        assert recording.range(name)[0] == 0
    assert recording.range("4")[0] < 0                             # the logits
    report = learn.activation_report()
    assert not [finding for finding in report.findings if finding.check in ("below", "above")]


def test_auto_range_is_one_sync_per_layer_and_kept_across_fits():
    learn = make_learner(cbs=ActivationHistogram(layers=["0", "1"], range="auto"))
    learn.fit(1)
    ranges = [learn.activation_histogram.recording.range(name) for name in ("0", "1")]
    learn.fit(1)
    recording = learn.activation_histogram.recording
    for name, (low, high) in zip(("0", "1"), ranges):
        later_low, later_high = recording.range(name)
        assert later_low <= low and later_high >= high             # it only widens
        assert np.log2(later_high) % 1 == 0 and later_low in (0, -later_high)
        assert recording.underflow[name].sum() + recording.overflow[name].sum() == 0


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
    assert {"0", "10", "100", "1000", "-1000"} <= set(labels)  # "1": too close to "0" at this size
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


@pytest.fixture
def like_a_gpu(monkeypatch):
    "The torch path as it runs on a GPU: no look at the values per batch, so auto ranges widen at flushes only."
    import colordim.engine.plans
    monkeypatch.setattr(colordim.engine.plans, "USE_FUSED", False)
    made = colordim.engine.plans.TorchPlan.__init__

    def without_checks(self, *args, **kwargs):
        made(self, *args, **kwargs)
        self.grow = False
    monkeypatch.setattr(colordim.engine.plans.TorchPlan, "__init__", without_checks)


def test_off_the_cpu_an_auto_range_widens_at_early_flushes_only(like_a_gpu):
    generator = torch.Generator().manual_seed(0)
    batches = [torch.randn(500, generator=generator) * 1.25 ** step for step in range(40)]
    layer = nn.Identity()
    with HistogramRecorder({"x": layer}, range="auto", bins=20) as engine:
        tops = []
        for iteration, values in enumerate(batches):
            engine.begin_column(iteration=iteration)
            tops.append(engine.layers["activation"][0].binning.high if iteration else None)
            layer(values)
            engine.end_column()
    recording = engine.recording
    low, high = recording.range("x")
    assert high >= max(values.abs().max().item() for values in batches) and low == -high
    changed = [column for column in range(2, 40) if tops[column] != tops[column - 1]]
    assert changed and set(changed) <= {2, 3, 4, 6, 8, 11, 16, 23, 32}   # at flushes, never per batch
    assert all(tops[column] > tops[column - 1] for column in changed)       # it only widens
    outside = recording.underflow["x"] + recording.overflow["x"]
    assert recording.hist["x"].sum() + outside.sum() == 40 * 500       # nothing lost: outside is counted
    assert all(recording.hist["x"][column].sum() == 500 for column in (1, 2))   # room for twice what came back


def test_off_the_cpu_the_demo_cnn_keeps_under_1_percent_outside_its_auto_ranges(like_a_gpu):
    from colordim.demos.cnn import BLOCKS, train
    learn = train(batch_norm=False, epochs=1, grads=True, range="auto")
    recording = learn.activation_histogram.recording
    for kind in (recording, recording.grads):
        for name in BLOCKS:
            outside = (kind.underflow[name].sum() + kind.overflow[name].sum()) / kind.numel[name].sum()
            assert outside < 0.01, (name, outside)


def test_the_report_never_advises_auto_for_an_auto_range_and_a_saved_run_remembers_it(tmp_path):
    from colordim import Recording, diagnose
    values = torch.tensor([0.5, -1.0, 2.0, float("inf"), float("inf")])   # 40% beyond any range
    fixed, auto = record([values], range=(-4, 4), bins=8), record([values], range="auto", bins=8)
    assert auto.auto == {"x": True} and fixed.auto == {"x": False}
    (advice_fixed,), (advice_auto,) = ([f.advice for f in diagnose(r).findings if f.check == "above"]
                                       for r in (fixed, auto))
    assert 'use `range="auto"`' in advice_fixed
    assert "auto range widened" in advice_auto and 'use `range="auto"`' not in advice_auto
    auto.save(tmp_path / "auto.npz")
    assert Recording.load(tmp_path / "auto.npz").auto == {"x": True}
    assert Recording.load(tmp_path / "auto.npz") == auto


def test_the_widening_policy_at_a_move_to_the_host():
    "`ranges.at_move`, with known answers: nothing at the edges keeps the range; else twice the extremes."
    from colordim.engine import ranges
    current = ranges.first(10, 0.0, 3.0)             # one-sided: [0, 4] on the grid
    assert current.limits == (0.0, 4.0) and current.grid == (2, 0)
    inside = np.zeros((2, 12), np.int64)
    inside[:, 3] = 5
    assert ranges.at_move(current, inside, np.array([-0.0, -1.0]), np.array([3.0, 2.0]), stats=True) is current
    over = inside.copy()
    over[1, -1] = 1                                  # something above 4: the max was 7, room for 14 -> [0, 16]
    assert ranges.at_move(current, over, np.array([-0.0, -1.0]), np.array([3.0, 7.0]), stats=True).limits == (0.0, 16.0)
    under = inside.copy()
    under[0, 0] = 1                                  # something under 0 (min -1): symmetric, room for -2 and 6
    assert ranges.at_move(current, under, np.array([1.0, -1.0]), np.array([3.0, 2.0]), stats=True).limits == (-8.0, 8.0)
    assert ranges.at_move(current, under, np.array([np.nan] * 2), np.array([np.nan] * 2), stats=False).limits \
        == (-4.0, 4.0)                               # no statistics: one doubling, symmetric since something was under
    assert [ranges.move_early(n) for n in (1, 2, 5, 6, 1024, 1025)] == [True, True, False, True, True, False]
