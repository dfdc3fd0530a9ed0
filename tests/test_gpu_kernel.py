"""The Triton kernel's arithmetic, run on the CPU in Triton's interpreter, against the torch path and numpy.

Triton reads TRITON_INTERPRET when a kernel is defined, so the checks run in a process of their own with it
set, on CPU tensors, and report back as JSON; each test reads one case. Speed is measured on a GPU only
(`benchmarks/gpu.py`)."""
import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")

CHECKS = r'''
import json, math, os
import numpy as np, torch
from colordim.engine import gpu_kernel
from colordim.engine import plans
from colordim.engine.buffer import LayerBuffer
from colordim.engine.plans import TorchPlan, TritonPlan, draw_sample, units_last

def row(plan, values, bins):
    buffer = LayerBuffer(1, bins, "cpu")
    assert plan(values, buffer, 0) is False  # never outside: fixed ranges here
    per_unit = plan.unit_max
    return buffer.counts[0].tolist(), buffer.moments[0].tolist(), None if per_unit is None else per_unit.tolist()

def compare(name, values, bins=20, limits=(-4.0, 4.0), linthresh=None, sample=None, stats=True, near=0.05):
    shape, stored_last = tuple(values.shape), units_last(values)
    drawn = None if sample is None else draw_sample(shape, sample, 7)
    if stored_last:  # the torch path reads its (positions, units) matrix; the kernel the output in place
        torch_plan, view = TorchPlan(plans.as_units_last(values).shape, "cpu", None, bins, limits, linthresh, near, stats, None), plans.as_units_last(values)
    else:
        torch_plan, view = TorchPlan(shape, "cpu", drawn, bins, limits, linthresh, near, stats, None), values
    triton_plan = TritonPlan(shape, "cpu", drawn, bins, limits, linthresh, near, stats, stored_last=stored_last)
    assert triton_plan.fits(values)
    counts, moments, per_unit = row(triton_plan, values, bins)
    expected_counts, expected_moments, expected_unit = row(torch_plan, view, bins)
    result = dict(counts=counts, expected_counts=expected_counts, moments=moments, expected_moments=expected_moments)
    if per_unit is not None and expected_unit is not None:
        result.update(per_unit=per_unit, expected_unit=expected_unit)
    if values.dtype == torch.float32 and values.is_contiguous() and sample is None:  # the CPU kernel's counts
        result["fused"] = row(plans.FusedPlan(shape, None, bins, limits, linthresh, near, stats), values, bins)[0]
    if linthresh is None and sample is None:  # numpy's own histogram of the finite values in range
        flat = values.float().reshape(-1).numpy().astype(np.float64)
        inside = flat[np.isfinite(flat) & (flat >= limits[0]) & (flat <= limits[1])]
        result["numpy"] = np.histogram(inside, bins=np.linspace(*limits, bins + 1))[0].tolist()
    results[name] = result

results = {}
torch.manual_seed(0)
edges = torch.linspace(-4, 4, 21)
special = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.0, -0.0, 1e-40, -1e-40, 4.0, -4.0, 4.0001])
compare("edges", torch.cat([edges, special, edges[1:-1] + 1e-7]).reshape(1, -1))
random = torch.randn(3, 5, 67) * 2.5
random[1, 2] = -1.0  # a dead unit
compare("random", random)
for size in (1, 7, 1023, 1025, 3001):
    compare(f"size{size}", torch.randn(size) * 3)
compare("no_nan_stats", torch.randn(4, 6, 9, 9) * 2)
compare("symlog", torch.randn(4, 8, 33) * 10.0 ** torch.randint(-3, 4, (4, 8, 33)), bins=30, limits=(-8.0, 8.0), linthresh=1.0)
compare("sample_positions", torch.randn(16, 8, 32, 32), sample=500)
compare("sample_lines", torch.randn(4, 8, 16, 16), sample=256)
compare("channels_last", (torch.randn(4, 8, 6, 6) * 2).to(memory_format=torch.channels_last))
compare("float16", (torch.randn(4, 8, 50) * 3).half())
compare("bfloat16", (torch.randn(4, 8, 50) * 3).bfloat16())
compare("stats_off", torch.randn(4, 8, 50), stats=False)
counts = torch.zeros(22, dtype=torch.int64); moments = torch.zeros(6, dtype=torch.float64)
gpu_kernel.summarise(torch.empty(0), counts, moments, gpu_kernel.scratch_for(0, 1, "cpu"), None, None, None,
                     [-4.0, 4.0], [0.0, 0.05, 1.0], [1, 1, 0])
results["empty"] = dict(counts=counts.tolist(), expected_counts=[0] * 22, moments=moments.tolist(),
                        expected_moments=[0.0] * 6)  # nothing added: no dead unit, no extreme
print(json.dumps(results, allow_nan=True))
'''

CASES = ["edges", "random", "size1", "size7", "size1023", "size1025", "size3001", "no_nan_stats", "symlog",
         "sample_positions", "sample_lines", "channels_last", "float16", "bfloat16", "stats_off", "empty"]


@pytest.fixture(scope="module")
def checked():
    environment = dict(os.environ, TRITON_INTERPRET="1")
    result = subprocess.run([sys.executable, "-c", CHECKS], capture_output=True, text=True, env=environment,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("case", CASES)
def test_the_kernel_counts_and_sums_as_the_torch_path(checked, case):
    result = checked[case]
    if "fused" in result:  # the CPU kernel's float32 bin arithmetic, value for value
        assert result["counts"] == result["fused"]
    if case != "edges":
        # Values exactly on a bin edge: histc (the torch path of small outputs) rounds its own way and numpy
        # compares float32 values with float64 edges; there the CPU kernel is the reference, as above.
        assert result["counts"] == result["expected_counts"]
        if "numpy" in result:  # the bins (not the edge rows) as numpy counts the finite values in range
            assert result["counts"][1:-1] == result["numpy"]
    moments, expected = result["moments"], result["expected_moments"]
    if case == "stats_off":
        return
    for index, (got, want) in enumerate(zip(moments, expected)):
        if want != want:  # NaN: a NaN in the output makes the sums and the extremes NaN, as in torch
            assert got != got, (index, got)
        elif index in (0, 1):  # float64 sums, added in another order
            assert got == pytest.approx(want, rel=1e-10, abs=1e-9), (index, got, want)
        else:  # near-zero and dead counts, and the extremes: exact
            assert got == want, (index, got, want)
    if "per_unit" in result:  # each unit's maximum; a unit with a NaN: +inf here, NaN there (neither is dead)
        assert [got if want == want else float("inf") for got, want in zip(result["per_unit"], result["expected_unit"])] \
            == [want if want == want else float("inf") for want in result["expected_unit"]]
