"""Tick labels stay readable at the default sizes: no two labels of an axis overlap, on any figure."""
import itertools

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from torch import nn

import colordim
from colordim.views import plot


def symlog_run(layers=4, steps=12):
    "A GPT-like symlog recording: values from 1e-3 to 1e4 of both signs, an auto range, several layers."
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Identity() for _ in range(layers)])
    with torch.no_grad(), colordim.record(model, layers="*", range="auto", scale="symlog", bins=100) as rec:
        for step in range(steps):
            x = torch.randn(64, 32) * 10.0 ** torch.randint(-3, 5, (64, 32))
            model(x * (1 + step))
            if step == steps // 2:
                model.eval()
    return rec.recording


def figures(recording):
    names = recording.layer_names
    yield plot.color_dim(recording, 0).figure
    yield plot.color_dim(recording, 0, overlay="mean_std", figsize=(6, 3)).figure
    yield plot.color_dims(recording)[0]
    yield plot.color_dim_epochs(recording, 0)[0]
    yield plot.dead_chart(recording)[0]
    yield plot.plot_layer_stats(recording, 0)[0]
    yield plot.compare([recording, recording], names[0])[0]


def overlapping(figure):
    "Pairs of visible tick labels of one axis whose boxes overlap, as the figure renders."
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    found = []
    for ax in figure.axes:
        for axis in (ax.xaxis, ax.yaxis):
            boxes = [(label.get_text(), label.get_window_extent(renderer)) for label in axis.get_ticklabels()
                     if label.get_visible() and label.get_text()]
            found += [(ax.get_title() or ax.get_ylabel(), a, b) for (a, box_a), (b, box_b)
                      in itertools.combinations(boxes, 2) if box_a.overlaps(box_b)]
    return found


@pytest.mark.parametrize("scale", ["symlog", "linear"])
def test_no_two_tick_labels_of_an_axis_overlap(scale, tmp_path):
    from test_cli import saved_run
    recording = symlog_run() if scale == "symlog" else colordim.Recording.load(saved_run(tmp_path / "run.npz"))
    for figure in figures(recording):
        assert overlapping(figure) == []
        plt.close(figure)


def test_symlog_ticks_keep_zero_and_the_powers_of_ten_that_fit():
    figure = plot.color_dims(symlog_run(layers=1))[0]
    figure.canvas.draw()
    labels = [label.get_text() for label in figure.axes[0].get_yticklabels()]
    assert "0" in labels and "10000" in labels and "-10000" in labels
    values = [float(label) for label in labels]
    assert values == sorted(values) and all(abs(value) in (0, *[10.0 ** k for k in range(-6, 13)]) for value in values)
    plt.close(figure)
