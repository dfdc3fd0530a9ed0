"""Tiny models and learners shared by the tests; everything runs on the CPU in seconds."""
import matplotlib

matplotlib.use("Agg")

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset


def tiny_cnn():
    "Two conv blocks and a linear head: 8x8 single-channel images -> 3 classes."
    return nn.Sequential(
        nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU()),     # (B, 4, 8, 8)
        nn.Sequential(nn.Conv2d(4, 6, 3, stride=2, padding=1), nn.BatchNorm2d(6), nn.ReLU()),  # (B, 6, 4, 4)
        nn.Flatten(), nn.Linear(6 * 4 * 4, 3))                        # (B, 3)


def make_dls(n_train=48, n_valid=20, bs=8, seed=0):
    "fastai DataLoaders of random 8x8 images: 6 training batches of 8, 3 validation batches (8, 8, 4)."
    from fastai.data.core import DataLoaders
    from fastai.data.load import DataLoader
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n_train + n_valid, 1, 8, 8, generator=generator)
    y = torch.randint(0, 3, (n_train + n_valid,), generator=generator)
    train = TensorDataset(x[:n_train], y[:n_train])
    valid = TensorDataset(x[n_train:], y[n_train:])
    return DataLoaders(DataLoader(train, bs=bs, shuffle=False), DataLoader(valid, bs=bs))


def make_learner(cbs=None, model=None, seed=0):
    "A fastai Learner on `tiny_cnn` and `make_dls`, without progress bars."
    from fastai.learner import Learner
    from fastai.torch_core import set_seed
    from fastcore.basics import noop
    set_seed(seed, reproducible=True)
    learn = Learner(make_dls(seed=seed), model or tiny_cnn(), loss_func=nn.functional.cross_entropy,
                    cbs=cbs, lr=1e-2)
    from fastai.callback.progress import ProgressCallback
    learn.remove_cbs([cb for cb in learn.cbs if isinstance(cb, ProgressCallback)])
    learn.logger = noop  # a module-level function, so the learner still pickles
    return learn


def taps(module) -> int:
    "Hooks on `module`: its torch forward and forward-pre hooks, anyone's."
    return len(module._forward_hooks) + len(module._forward_pre_hooks)


@pytest.fixture
def learner_factory():
    return make_learner


@pytest.fixture(params=["fused", "torch"])
def cpu_path(request, monkeypatch):
    "Run a test on both CPU paths: the compiled one-pass kernel and the torch ops (the GPU's path)."
    import colordim.engine.plans
    monkeypatch.setattr(colordim.engine.plans, "USE_FUSED", request.param == "fused")
    return request.param


@pytest.fixture
def torch_path(monkeypatch):
    "The torch-ops path on the CPU (what runs on a GPU), instead of the compiled kernel."
    import colordim.engine.plans
    monkeypatch.setattr(colordim.engine.plans, "USE_FUSED", False)
