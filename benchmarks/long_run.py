"""A long step loop with a many-layer model: time per step, the recorder's bytes and the process's resident memory.

Run: `.venv/bin/python benchmarks/long_run.py` (about 75 seconds on 2 cores). The default is what a user
meets: 150 `nn.Linear(8, 8)` + `nn.ReLU()` pairs, batch 4, 20,000 forward passes in
`colordim.record(model)` with the default budgets and no `rec.epoch()`. Prints, per window of steps,
the median time per step, the recorder's device and host bytes and the process's resident memory
(from /proc/self/statm, Linux), and at the end what the recording holds and the ratio of the last
window's time per step to the first's (flat: about 1). `--device-mib` and `--host-mib` set the budgets.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from torch import nn

import colordim

MiB = 2 ** 20


def resident() -> int:
    "This process's resident memory in bytes (0 where /proc is not there)."
    try:
        return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=150, help="Linear(8, 8) + ReLU pairs")
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--windows", type=int, default=10)
    parser.add_argument("--bins", type=int, default=100)
    parser.add_argument("--device-mib", type=float, default=None, help="device_bytes, in MiB (default: colordim's)")
    parser.add_argument("--host-mib", type=float, default=None, help="host_bytes, in MiB (default: colordim's)")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = nn.Sequential(*[module for _ in range(args.pairs) for module in (nn.Linear(8, 8), nn.ReLU())])
    x, window = torch.randn(4, 8), args.steps // args.windows
    budgets = {name: int(value * MiB) for name, value in (("device_bytes", args.device_mib), ("host_bytes", args.host_mib))
               if value is not None}
    with torch.no_grad():
        for _ in range(50):  # torch's own allocations, warmed up
            model(x)
        plain = []
        for _ in range(min(window, 1000)):
            started = time.perf_counter()
            model(x)
            plain.append(time.perf_counter() - started)
        with colordim.record(model, bins=args.bins, **budgets):  # the CPU kernel loaded (or compiled) once
            for _ in range(10):
                model(x)
    before = resident()
    rows = []
    with torch.no_grad(), colordim.record(model, bins=args.bins, **budgets) as rec:
        engine = rec.recorder  # the HistogramRecorder
        for first in range(0, args.steps, window):
            times, device, host = [], 0, 0
            for _ in range(window):
                started = time.perf_counter()
                model(x)
                times.append(time.perf_counter() - started)
            device, host = engine.device_nbytes, engine.host_nbytes
            rows.append((first, statistics.median(times), device, host, resident() - before))
    layers = len(engine.names)
    print(f"{layers} layers ({args.pairs} Linear + ReLU pairs, layers=None records the Linears), {args.bins} bins, "
          f"{args.steps} steps; budgets: device {engine.columns.device_bytes / MiB:.0f} MiB, host "
          f"{engine.columns.host_bytes / MiB:.0f} MiB (room for {engine.columns.max_columns} columns); "
          f"without recording {statistics.median(plain) * 1e3:.2f} ms/step; resident before recording "
          f"{before / MiB:.0f} MiB")
    print("  steps            ms/step   device MiB   host MiB   resident growth MiB")
    for first, median, device, host, grown in rows:
        print(f"  {first:>6}-{first + window - 1:<6} {median * 1e3:9.2f} {device / MiB:12.1f} {host / MiB:10.1f} "
              f"{grown / MiB:15.1f}")
    recording = rec.recording
    print(f"  held after {args.steps} steps: {engine.nbytes / MiB:.1f} MiB ({engine.device_nbytes / MiB:.1f} device, "
          f"{engine.host_nbytes / MiB:.1f} host); the recording: {len(recording)} columns of "
          f"{int(recording.batches.max())} steps each at most, {int(recording.batches.sum())} steps in all; "
          f"a copy of it (rec.recording) {recording.nbytes / MiB:.1f} MiB")
    print(f"  last window / first: {rows[-1][1] / rows[0][1]:.2f} (median time per step)")


if __name__ == "__main__":
    main()
