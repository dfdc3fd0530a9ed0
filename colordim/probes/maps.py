"""Activation maps of one input: a layer's output for a single forward pass, drawn channel by channel."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..engine.find_layers import find_layers

__all__ = ["activation_maps", "show_activation_maps", "show_heatmap"]


def activation_maps(model: nn.Module, x: torch.Tensor, layer) -> torch.Tensor:
    "The output of `layer` (index, name, pattern, type or module) for the one input `x`, on the CPU."
    name, module = _one_layer(model, layer)
    batch = _as_batch_of_one(x).to(_device(model))
    captured = []
    handle = module.register_forward_hook(lambda m, i, output: captured.append(output))
    was_training = model.training
    try:
        model.eval()  # one input: batch norm uses its running statistics, dropout is off
        with torch.no_grad():
            model(batch)
    finally:
        handle.remove()
        model.train(was_training)
    if not captured:
        raise ValueError(f"layer: {name!r} did not run in the forward pass of {type(model).__name__}")
    output = captured[-1]
    if not isinstance(output, torch.Tensor):
        raise TypeError(f"layer: {name!r} returns a {type(output).__name__}, not a tensor; pick a layer inside it")
    return output[0].detach().float().cpu()


def show_activation_maps(model: nn.Module, x: torch.Tensor, layer, cols: int = 16, max_maps: int = 64,
                         rank: bool = False, figsize=None, cmap="viridis", fname=None):
    "Each channel's 2-D map of `layer` for input `x`, in a grid titled by channel; returns (figure, axes)."
    import matplotlib.pyplot as plt
    maps = _spatial(activation_maps(model, x, layer), layer)  # (C, H, W)
    order = maps.mean((1, 2)).argsort(descending=True).tolist() if rank else list(range(len(maps)))
    shown = order[:max_maps]
    cols = min(cols, len(shown))
    rows = math.ceil(len(shown) / cols)
    figure, axes = plt.subplots(rows, cols, figsize=figsize or (1.2 * cols, 1.3 * rows), squeeze=False,
                                constrained_layout=True)
    for ax in axes.flat:
        ax.set_axis_off()
    for ax, channel in zip(axes.flat, shown):
        ax.imshow(maps[channel].numpy(), cmap=cmap)
        ax.set_title(str(channel), fontsize=8)
    if fname is not None:
        figure.savefig(fname, dpi=100, bbox_inches="tight")
    return figure, axes


def show_heatmap(model: nn.Module, x: torch.Tensor, layer, alpha: float = 0.5, ax=None, figsize=None,
                 cmap="jet", fname=None):
    "The channel-mean map of `layer`, resized to the input, over the input image; returns the Axes."
    import matplotlib.pyplot as plt
    image = _as_batch_of_one(x)[0].detach().float().cpu()
    if image.dim() != 3:
        raise ValueError(f"x: show_heatmap needs one image (channels, height, width), got shape {tuple(image.shape)}")
    heat = _spatial(activation_maps(model, x, layer), layer).mean(0)
    heat = F.interpolate(heat[None, None], size=image.shape[1:], mode="bilinear", align_corners=False)[0, 0]
    if ax is None:
        _, ax = plt.subplots(figsize=figsize or (4, 4))
    ax.imshow(_displayable(image), cmap="gray" if image.shape[0] != 3 else None)
    ax.imshow(_unit(heat).numpy(), cmap=cmap, alpha=alpha)
    ax.set_axis_off()
    if fname is not None:
        ax.figure.savefig(fname, dpi=100, bbox_inches="tight")
    return ax


def _one_layer(model, layer) -> tuple[str, nn.Module]:
    found = find_layers(model, layer)
    if len(found) != 1:
        raise ValueError(f"layer: {layer!r} matches {len(found)} modules ({list(found)[:10]}); give one")
    return next(iter(found.items()))


def _as_batch_of_one(x) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x: expected a tensor (one input), got {type(x).__name__}")
    if x.dim() == 4 and x.shape[0] != 1:
        raise ValueError(f"x: got a batch of {x.shape[0]} inputs {tuple(x.shape)}; pass one input, e.g. x[0]")
    return x if x.dim() == 4 else x.unsqueeze(0)


def _device(model) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def _spatial(maps: torch.Tensor, layer) -> torch.Tensor:
    if maps.dim() != 3:
        raise ValueError(f"layer: {layer!r} outputs shape {tuple(maps.shape)} per input, not (channels, height, "
                         "width) maps; pick a convolutional layer")
    return maps


def _unit(values: torch.Tensor) -> torch.Tensor:
    low, high = values.min(), values.max()
    return (values - low) / (high - low) if high > low else torch.zeros_like(values)


def _displayable(image: torch.Tensor):
    "An RGB (H, W, 3) or grey (H, W) array in 0..1 from a (C, H, W) tensor of any scale."
    if image.shape[0] == 3:
        return _unit(image).permute(1, 2, 0).numpy()
    return _unit(image.mean(0)).numpy()
