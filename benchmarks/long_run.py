"""A long step loop with a many-layer model: time per step and the recorder's memory, window by window.
Run: `.venv/bin/python benchmarks/long_run.py` (about 4 minutes on 2 cores). Prints, per window of
steps, the median time per step with and without recording, the recorder's device and host bytes at
most, and the ratio of the last window's recorded step time to the first's (flat: about 1)."""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

import colordim


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modules", type=int, default=300)
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--windows", type=int, default=10)
    parser.add_argument("--budget", type=int, default=2 ** 20, help="device_bytes and host_bytes")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Tanh() if i % 2 else nn.Linear(2, 2) for i in range(args.modules)])
    x, window = torch.randn(1, 2), args.steps // args.windows
    plain = []
    with torch.no_grad():
        for _ in range(window):
            started = time.perf_counter()
            model(x)
            plain.append(time.perf_counter() - started)
    rows = []
    with torch.no_grad(), colordim.record(model, layers="*", bins=8, range=(-2, 2), device_bytes=args.budget,
                                          host_bytes=args.budget) as rec:
        engine = rec.engine
        for first in range(0, args.steps, window):
            times, device, host = [], 0, 0
            for _ in range(window):
                started = time.perf_counter()
                model(x)
                times.append(time.perf_counter() - started)
                device, host = max(device, engine.device_nbytes), max(host, engine.host_nbytes)
            rows.append((first, statistics.median(times), statistics.mean(times), device, host))
    recording = rec.recording
    print(f"{args.modules} modules, {args.steps} steps, budgets {args.budget} bytes on the device and the host; "
          f"without recording {statistics.median(plain) * 1e3:.2f} ms/step")
    for first, median, mean, device, host in rows:
        print(f"  steps {first:>6}-{first + window - 1:<6} {median * 1e3:6.2f} ms/step (mean {mean * 1e3:6.2f}), "
              f"device {device:>9} B, host {host:>9} B")
    print(f"  last window / first: {rows[-1][1] / rows[0][1]:.2f} (median), {rows[-1][2] / rows[0][2]:.2f} (mean); "
          f"{len(recording)} columns for {int(recording.batches.sum())} steps")


if __name__ == "__main__":
    main()
