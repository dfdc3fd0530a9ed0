"""The colour-dim image: axes in activation units, colour bar, epoch marks, pixels of the rendered PNG."""
import matplotlib.pyplot as plt
import matplotlib.image as mpimg
import numpy as np
import pytest
from matplotlib.colors import SymLogNorm, Normalize

from colordim import ActivationHistogram
from colordim.views.plot import color_dim
from colordim.data.recording import Recording
from conftest import make_learner


def synthetic(columns=6, bins=4, epochs=2, hot_bin=2):
    "Every value of every column in `hot_bin` of range (0, 4); half the columns valid."
    counts = np.zeros((columns, bins + 2), dtype=np.int64)
    counts[:, hot_bin + 1] = 100
    per_epoch = columns // epochs
    phase = np.array((["train"] * (per_epoch - 1) + ["valid"]) * epochs)
    return Recording(
        counts={"fc": counts}, numel={"fc": counts.sum(1)}, edges={"fc": np.linspace(0, 4, bins + 1)},
        shapes={"fc": (10, 10)}, fit=np.zeros(columns, np.int64),
        epoch=np.repeat(np.arange(epochs), per_epoch), phase=phase,
        iteration=np.array((list(range(per_epoch - 1)) + [0]) * epochs))


def test_axes_colour_bar_and_epoch_marks():
    ax = color_dim(synthetic(), "fc")
    assert ax.get_ylim() == (0.0, 4.0)
    assert ax.get_xlim() == (-0.5, 3.5)                    # 4 training columns
    image = ax.images[0]
    assert image.colorbar is not None and image.colorbar.ax.get_ylabel() == "count (log scale)"
    assert isinstance(image.norm, SymLogNorm)
    np.testing.assert_array_equal(image.get_array(), synthetic().select(phase="train").hist["fc"].T)
    assert [line.get_xdata()[0] for line in ax.lines] == [1.5]   # epoch 1 starts at training column 2
    assert [text.get_text() for text in ax.texts] == ["epoch 0", "epoch 1"]
    assert ax.get_title() == "fc  (10, 10)"
    plt.close("all")


def test_rendered_png_pixels_follow_the_counts(tmp_path):
    figure, ax = plt.subplots(figsize=(4, 3), dpi=100)
    color_dim(synthetic(hot_bin=2), 0, ax=ax, cmap="gray")
    path = tmp_path / "fc.png"
    figure.savefig(path, dpi=100)
    pixels = mpimg.imread(path)                            # (height, width, 4), rows from the top
    height = pixels.shape[0]
    def pixel(column, value):
        x, y = ax.transData.transform((column, value))
        return pixels[int(round(height - y)), int(round(x)), :3]
    for column in range(4):
        np.testing.assert_allclose(pixel(column, 2.5), [1, 1, 1], atol=0.02)   # the hot bin is white
        np.testing.assert_allclose(pixel(column, 0.5), [0, 0, 0], atol=0.02)   # empty bins are black
        np.testing.assert_allclose(pixel(column, 3.5), [0, 0, 0], atol=0.02)
    plt.close(figure)


def test_phase_epoch_linear_and_saving(tmp_path):
    ax = color_dim(synthetic(), "fc", phase="valid", log=False, fname=tmp_path / "valid.png")
    assert ax.get_xlim() == (-0.5, 1.5) and type(ax.images[0].norm) is Normalize
    assert ax.images[0].colorbar.ax.get_ylabel() == "count"
    assert (tmp_path / "valid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ax = color_dim(synthetic(), "fc", epoch=1)
    assert ax.get_xlim() == (-0.5, 1.5) and len(ax.lines) == 0
    plt.close("all")


def test_bad_requests_name_what_is_valid():
    with pytest.raises(ValueError, match=r"layer: 'conv' was not recorded; recorded layers: \['fc'\]"):
        color_dim(synthetic(), "conv")
    with pytest.raises(ValueError, match=r"layer: index 3 out of range"):
        color_dim(synthetic(), 3)
    with pytest.raises(ValueError, match=r"phase: 'test' is not a phase"):
        color_dim(synthetic(), phase="test")
    with pytest.raises(ValueError, match=r"epoch: 5 has no .train. batches; recorded epochs: \[0, 1\]"):
        color_dim(synthetic(), epoch=5)


def test_learner_color_dim_by_index_and_name():
    learn = make_learner(cbs=ActivationHistogram(layers=["0", "1"], range=(-5, 5)))
    learn.fit(2)
    ax = learn.color_dim(1, figsize=(6, 3))
    assert ax.get_title().startswith("1 Sequential  (") and ax.get_ylim() == (-5.0, 5.0)
    assert ax.images[0].colorbar is not None
    assert len(ax.lines) == 1                                  # one epoch boundary
    assert tuple(ax.figure.get_size_inches()) == (6.0, 3.0)
    ax = learn.color_dim("0", phase="valid")
    assert ax.get_xlim() == (-0.5, 5.5)                        # 2 epochs x 3 validation batches
    plt.close("all")
