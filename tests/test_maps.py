"""Activation maps of one input: equal to the output captured by hand, panel counts, clear errors."""
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from torch import nn

from colordim.probes.maps import activation_maps, show_activation_maps, show_heatmap
from conftest import make_learner, tiny_cnn


def test_maps_equal_the_layer_output_captured_by_hand_and_the_model_is_left_as_it_was():
    torch.manual_seed(0)
    model = tiny_cnn()
    model.train()
    x = torch.randn(1, 8, 8)
    maps = activation_maps(model, x, "1.2")                 # a ReLU inside the second block
    captured = []
    handle = model[1][2].register_forward_hook(lambda m, i, o: captured.append(o))
    model.eval()
    with torch.no_grad():
        model(x[None])
    handle.remove()
    assert torch.equal(maps, captured[0][0]) and maps.shape == (6, 4, 4)
    model.train()
    activation_maps(model, x, "0.0")
    assert model.training and all(not m._forward_hooks for m in model.modules())
    assert torch.equal(activation_maps(model, x[None], 1), activation_maps(model, x, "0.0"))  # a batch of one


def test_grid_has_one_titled_panel_per_map_and_ranks_by_mean():
    torch.manual_seed(0)
    model = tiny_cnn()
    x = torch.randn(1, 8, 8)
    figure, axes = show_activation_maps(model, x, "1.2", cols=4, max_maps=5)
    drawn = [ax for ax in axes.flat if ax.images]
    assert axes.shape == (2, 4) and len(drawn) == 5
    assert [ax.get_title() for ax in drawn] == ["0", "1", "2", "3", "4"]
    figure, axes = show_activation_maps(model, x, "1.2", rank=True)
    means = activation_maps(model, x, "1.2").mean((1, 2))
    titles = [int(ax.get_title()) for ax in axes.flat if ax.images]
    assert titles == means.argsort(descending=True).tolist()
    plt.close("all")


def test_heatmap_overlays_the_resized_channel_mean_on_the_image(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten())
    image = torch.rand(3, 16, 16)
    ax = show_heatmap(model, image, nn.ReLU, fname=tmp_path / "heat.png")
    background, heat = ax.images
    assert background.get_array().shape == (16, 16, 3) and heat.get_array().shape == (16, 16)
    assert float(heat.get_array().max()) == pytest.approx(1.0) and (tmp_path / "heat.png").exists()
    plt.close("all")


def test_bad_input_says_what_would_work():
    model = tiny_cnn()
    with pytest.raises(ValueError, match=r"x: got a batch of 2 inputs \(2, 1, 8, 8\); pass one input, e.g. x\[0\]"):
        activation_maps(model, torch.randn(2, 1, 8, 8), "0.0")
    with pytest.raises(ValueError, match=r"layer: '3' outputs shape \(3,\) per input, not \(channels, height, width\)"):
        show_heatmap(model, torch.randn(1, 8, 8), "3")
    with pytest.raises(ValueError, match="matches 2 modules"):
        activation_maps(model, torch.randn(1, 8, 8), nn.Conv2d)
    with pytest.raises(ValueError, match="no module named 'conv9'"):
        activation_maps(model, torch.randn(1, 8, 8), "conv9")


def test_learner_patches():
    import colordim.integrations.fastai  # noqa: F401  (the Learner patches come with the fastai side)
    learn = make_learner()
    x = torch.randn(1, 8, 8)
    assert learn.activation_maps(x, "0.0").shape == (4, 8, 8)
    assert len(learn.show_heatmap(x, "1.2").images) == 2
    plt.close("all")
