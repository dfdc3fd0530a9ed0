"""The GPU check, in one go: no sync, and the cost of recording on real models, side by side.

Run where a GPU is lent: `.venv/bin/python benchmarks/gpu.py` (a few minutes). Random weights and data made
on the device (nothing downloaded). It prints one table:

- training steps of resnet18 and resnet50 at batch 256 (SGD, forward and backward): bare, colordim exact
  (every leaf with parameters, `record()`), and `sample=4096`, timed with CUDA events over the same steps;
  peak memory of each;
- the same steps with colordim under `torch.cuda.set_sync_debug_mode("error")`: any host sync raises;
- resnet18 compiled (`torch.compile`, default and `mode="reduce-overhead"`), bare and recorded;
- which kernel ran (the Triton kernel, or the torch path if Triton is missing or failed its check).
"""
from __future__ import annotations

import argparse

import torch
from torch import nn

import colordim
from colordim.engine import gpu_kernel


def steps(model, batch, count, recording=None):
    "Median milliseconds per training step over `count` steps after 3 warm-up ones, and the peak memory (MiB)."
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    x = torch.randn(batch, 3, 224, 224, device="cuda")
    y = torch.randint(0, 1000, (batch,), device="cuda")
    times = []
    torch.cuda.reset_peak_memory_stats()
    for step in range(count + 3):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        end.record()
        if step >= 3:
            times.append((start, end))
    torch.cuda.synchronize()
    milliseconds = sorted(start.elapsed_time(end) for start, end in times)
    return milliseconds[len(milliseconds) // 2], torch.cuda.max_memory_allocated() / 2 ** 20


def measured(name, make, batch, count, **options):
    "Bare, then recorded with `options`, on a fresh model each (the same seed)."
    rows = []
    for label, recorded in (("bare", None), *options.items()):
        torch.manual_seed(0)
        model = make().cuda()
        if recorded is None:
            rows.append((name, label, *steps(model, batch, count)))
            continue
        with colordim.record(model, **recorded) as rec:
            rows.append((name, label, *steps(model, batch, count)))
        assert rec.recording.numel[rec.recording.layer_names[0]].sum() > 0
    return rows


def no_sync(make, batch):
    "Training steps with colordim while any host sync raises (set_sync_debug_mode('error'))."
    torch.manual_seed(0)
    model = make().cuda()
    with colordim.record(model) as rec:
        steps(model, batch, 1)  # plans, buffers and the kernel's one check on the device, first
        torch.cuda.set_sync_debug_mode("error")
        try:
            steps(model, batch, 3)
        finally:
            torch.cuda.set_sync_debug_mode(0)
    return len(rec.recording)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/gpu.py needs a CUDA GPU")
    from torchvision.models import resnet18, resnet50
    kernel = "Triton" if gpu_kernel.available() and gpu_kernel.verified(torch.device("cuda")) else "torch ops"
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, colordim's CUDA path: {kernel}")
    print(f"no sync: {no_sync(resnet18, args.batch)} recorded steps of resnet18 under set_sync_debug_mode('error')")
    options = {"exact": {}, "sample=4096": {"sample": 4096}}
    rows = measured("resnet18", resnet18, args.batch, args.steps, **options)
    rows += measured("resnet50", resnet50, args.batch, args.steps, **options)
    for mode in ("default", "reduce-overhead"):
        def compiled(mode=mode):
            return torch.compile(resnet18(), mode=None if mode == "default" else mode)
        rows += measured(f"resnet18 compiled ({mode})", compiled, args.batch, args.steps, exact={})
    print(f"{'model':<34} {'run':<12} {'ms/step':>9} {'x bare':>7} {'peak MiB':>9}")
    bare = {}
    for name, label, milliseconds, peak in rows:
        bare.setdefault(name, milliseconds)
        print(f"{name:<34} {label:<12} {milliseconds:9.2f} {milliseconds / bare[name]:7.3f} {peak:9.0f}")


if __name__ == "__main__":
    main()
