"""Every figure of issue 4, rendered to PNG with Agg: panels, titles, scales, marks and the numbers drawn."""
import matplotlib.image as mpimg
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from torch import nn

from colordim import ActivationHistogram
from colordim.views.plot import color_dim, color_dim_epochs, color_dims, dead_chart, plot_layer_stats
from colordim.engine.recorder import HistogramRecorder
from conftest import make_learner


class Scale(nn.Module):
    def __init__(self, factor): super().__init__(); self.factor = factor
    def forward(self, x): return x * self.factor


class Branches(nn.Module):
    "Three layers that see the same input: all zeros, unit scale, and far beyond the range."
    def __init__(self):
        super().__init__()
        self.zero, self.unit, self.big = Scale(0.0), Scale(1.0), Scale(30.0)
    def forward(self, x): return [self.zero(x), self.unit(x), self.big(x)]


@pytest.fixture(scope="module")
def recording():
    "2 epochs of 3 training and 1 validation batch; a NaN in training batch 1 of epoch 1."
    model = Branches()
    generator = torch.Generator().manual_seed(0)
    with HistogramRecorder({"zero": model.zero, "unit": model.unit, "big": model.big}, bins=20,
                           range=(-10, 10)) as engine:
        for epoch in range(2):
            for iteration in range(3):
                x = torch.randn(8, 4, 3, generator=generator)
                if (epoch, iteration) == (1, 1):
                    x[0, 0, 0] = float("nan")
                engine.begin_column("train", epoch=epoch, iteration=iteration)
                model(x)
                engine.end_column()
            engine.begin_column("valid", epoch=epoch)
            model(torch.randn(8, 4, 3, generator=generator))
            engine.end_column()
    return engine.recording


def png(figure, path):
    "Save, read back, close; the pixels as (height, width, 3)."
    figure.savefig(path, dpi=60)
    plt.close(figure)
    return mpimg.imread(path)[..., :3]


def not_blank(pixels):
    return pixels.std() > 0.05 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 20


def vertical_lines(ax):
    return [line for line in ax.lines if len(set(line.get_xdata())) == 1 and len(line.get_xdata()) == 2]


def test_color_dim_overlay_bands_and_nan_marks(recording, tmp_path):
    ax = color_dim(recording, "big", overlay="mean_std", figsize=(6, 3))
    assert ax.get_ylim() == (-10.0, 10.0)
    assert len(ax.images) == 3                      # the image and both edge bands
    assert {text.get_text() for text in ax.texts} >= {"above range", "below range", "epoch 0", "epoch 1"}
    mean_line = [line for line in ax.lines if line.get_label() == "mean"][0]
    np.testing.assert_allclose(mean_line.get_ydata(), recording.select_phase("train").mean["big"])
    assert len([line for line in ax.lines if line.get_linestyle() == ":"]) == 2      # mean +- std
    nan_marks = [line for line in ax.lines if line.get_label() == "NaN"][0]
    assert nan_marks.get_xdata().tolist() == [4]    # epoch 1, batch 1 = the 5th training column
    assert [line.get_xdata()[0] for line in vertical_lines(ax)] == [2.5]
    assert not_blank(png(ax.figure, tmp_path / "big.png"))
    ax = color_dim(recording, "unit")
    assert len(ax.images) == 1 and "above range" not in {text.get_text() for text in ax.texts}
    plt.close("all")


def test_color_dims_grid_shares_one_scale(recording, tmp_path):
    figure, axes = color_dims(recording, cols=2)
    assert axes.shape == (2, 2)
    assert [ax.get_title() for ax in axes.flat[:3]] == ["zero Scale  (8, 4, 3)", "unit Scale  (8, 4, 3)",
                                                          "big Scale  (8, 4, 3)"]
    assert not axes.flat[3].axison                   # the spare panel is hidden
    norms = {(ax.images[0].norm.vmin, ax.images[0].norm.vmax) for ax in axes.flat[:3]}
    assert norms == {(0, 96)}                        # one scale: the zero layer's 96 values in one bin
    assert len(figure.axes) == 5                     # 4 panels + 1 colour bar
    assert figure.axes[-1].get_ylabel() == "count (log scale)"
    pixels = png(figure, tmp_path / "grid.png")
    assert pixels.shape[:2] == (2 * 2.6 * 60, 2 * 4.2 * 60) and not_blank(pixels)
    figure, axes = color_dims(recording, layers=["big", 0], phase="valid", cols=3)
    assert axes.shape == (1, 2) and [ax.get_title() for ax in axes.flat] == ["big Scale  (8, 4, 3)",
                                                                              "zero Scale  (8, 4, 3)"]
    plt.close("all")


def test_color_dim_epochs_one_panel_per_epoch(recording, tmp_path):
    figure, axes = color_dim_epochs(recording, "unit")
    assert axes.shape == (1, 2)
    assert [ax.get_title() for ax in axes.flat] == ["epoch 0", "epoch 1"]
    assert [ax.get_xlim() for ax in axes.flat] == [(-0.5, 2.5), (-0.5, 2.5)]
    assert figure._suptitle.get_text() == "unit Scale  (8, 4, 3)"
    assert not_blank(png(figure, tmp_path / "epochs.png"))


def test_dead_chart_draws_zero_share_and_dead_rate(recording, tmp_path):
    figure, (zero_ax, dead_ax) = dead_chart(recording)
    train = recording.select_phase("train")
    labels = [line.get_label() for line in zero_ax.lines if line.get_label().split()[0] in train.layer_names]
    assert labels == ["zero Scale", "unit Scale", "big Scale"]  # name and module type
    lines = {line.get_label().split()[0]: line.get_ydata() for line in zero_ax.lines}
    # every value of the zero layer is in the bins at 0, but for the NaN (0 * NaN) of training column 4
    assert lines["zero"].tolist() == [1.0] * 4 + [95 / 96, 1.0]
    np.testing.assert_allclose(lines["unit"], train.zero_bin_share()["unit"])
    dead = {line.get_label().split()[0]: line.get_ydata() for line in dead_ax.lines if line.get_label()[0] != "_"}
    # every unit outputs 0 <= 0: dead; but the unit with a NaN is not "dead", it is broken
    assert dead["zero"].tolist() == [1.0] * 4 + [0.75, 1.0]
    # the signed layers have no dead units (as in the report): not drawn, and the panel says why
    assert list(dead) == ["zero"]
    notes = [text.get_text() for text in dead_ax.texts]
    assert notes == ["not drawn (they output negative values, so none is dead): unit Scale, big Scale"]
    assert dead_ax.get_ylabel() == "share of units\nthat never fire" and zero_ax.get_ylabel() == "share of values\nat 0"
    assert len(vertical_lines(dead_ax)) == 1 and dead_ax.get_ylim() == (-0.02, 1.02)
    assert not_blank(png(figure, tmp_path / "dead.png"))


def test_plot_layer_stats_panels_and_values(recording, tmp_path):
    figure, axes = plot_layer_stats(recording, "unit")
    train = recording.select_phase("train")
    assert [ax.get_title() for ax in axes.flat] == [
        "mean (band: +-1 std)", "std", "share with |x| <= 0.05", "dead-unit rate"]
    np.testing.assert_allclose(axes[0, 0].lines[0].get_ydata(), train.mean["unit"])
    np.testing.assert_allclose(axes[0, 1].lines[0].get_ydata(), train.std["unit"])
    np.testing.assert_allclose(axes[1, 0].lines[0].get_ydata(), train.near_zero["unit"])
    np.testing.assert_allclose(axes[1, 1].lines[0].get_ydata(), train.dead_rate["unit"])
    assert all(len(vertical_lines(ax)) == 1 for ax in axes.flat)
    assert not_blank(png(figure, tmp_path / "stats.png"))


def test_a_skipped_layer_says_why_its_panel_is_empty():
    class Words(nn.Module):
        def forward(self, x): return "not numbers"
    words, linear = Words(), nn.Linear(2, 2)
    with HistogramRecorder({"words": words, "fc": linear}) as engine:
        engine.begin_column()
        words(linear(torch.randn(3, 2)))
        engine.end_column()
    figure, axes = color_dims(engine.recording)
    assert [text.get_text() for text in axes[0, 0].texts] == ["nothing recorded:\noutput is a str, not a tensor"]
    assert len(axes[0, 1].texts) == 0
    plt.close(figure)


def test_multi_panel_figures_draw_into_given_axes(recording):
    figure, given = plt.subplots(1, 6)
    _, (zero_ax, dead_ax) = dead_chart(recording, axes=given[:2])
    assert (zero_ax, dead_ax) == tuple(given[:2]) and len(zero_ax.lines) >= 3
    _, axes = plot_layer_stats(recording, "unit", axes=given[2:])
    assert list(axes.flat) == list(given[2:]) and axes[0, 1].get_title() == "std"
    with pytest.raises(ValueError, match="axes: expected 4 matplotlib Axes, got 2"):
        plot_layer_stats(recording, "unit", axes=given[:2])
    plt.close(figure)


def test_zero_bin_share_finds_the_bins_at_zero(recording):
    share = recording.zero_bin_share()
    unit = recording.hist["unit"]                    # 20 bins over (-10, 10): 0 is edge 10
    np.testing.assert_allclose(share["unit"], unit[:, 9:11].sum(1) / recording.numel["unit"])
    shifted = recording.select(layers=["unit"])
    shifted.edges["unit"] = np.linspace(-9.5, 10.5, 21)  # 0 inside bin 9
    np.testing.assert_allclose(shifted.zero_bin_share()["unit"], unit[:, 9] / recording.numel["unit"])
    shifted.edges["unit"] = np.linspace(1, 21, 21)       # 0 outside the range
    assert np.isnan(shifted.zero_bin_share()["unit"]).all()


def test_bad_arguments_name_what_is_available(recording):
    with pytest.raises(ValueError, match=r"layer: 'conv' was not recorded; recorded layers: \['zero', 'unit', 'big'\]"):
        color_dims(recording, layers=["conv"])
    with pytest.raises(ValueError, match=r"epoch: 7 has no 'train' batches; recorded epochs: \[0, 1\]"):
        color_dim(recording, "unit", epoch=7)
    only_train = recording.select_phase("train")
    with pytest.raises(ValueError, match=r"phase: no 'valid' batches were recorded; recorded phases: \['train'\]"):
        dead_chart(only_train, phase="valid")
    with pytest.raises(ValueError, match="recording: it has no columns"):
        plot_layer_stats(HistogramRecorder({"fc": nn.Linear(1, 1)}).recording)
    with pytest.raises(ValueError, match=r"overlay: 'median' is not an overlay; use one of \(None, 'mean', 'mean_std'\)"):
        color_dim(recording, overlay="median")
    with pytest.raises(ValueError, match="cols: expected an int >= 1, got 0"):
        color_dims(recording, cols=0)
    plt.close("all")


def test_learner_patches_draw_each_figure(tmp_path):
    learn = make_learner(cbs=ActivationHistogram(layers=["0", "1"], bins=30, range=(-4, 4)))
    learn.fit(2)
    ax = learn.color_dim(0, overlay="mean")
    assert ax.get_ylim() == (-4.0, 4.0)
    figure, axes = learn.color_dims(cols=2, fname=tmp_path / "grid.png")
    assert axes.shape == (1, 2) and (tmp_path / "grid.png").stat().st_size > 5000
    figure, axes = learn.color_dim_epochs("1")
    assert [ax.get_title() for ax in axes.flat] == ["epoch 0", "epoch 1"]
    figure, (zero_ax, dead_ax) = learn.dead_chart(["1"])
    assert [line.get_label() for line in dead_ax.lines][:1] == ["1 Sequential"]
    figure, axes = learn.plot_layer_stats("1", phase="valid")
    assert len(axes[0, 0].lines[0].get_ydata()) == 6   # 2 epochs x 3 validation batches
    plt.close("all")
