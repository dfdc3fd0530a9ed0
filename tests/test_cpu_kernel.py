"""The compiled CPU kernel (`colordim.engine.cpu_kernel`) gives what the torch path (the GPU's) gives, value for value."""
import math

import numpy as np
import pytest
import torch
from torch import nn

import colordim.engine.plans
from colordim.engine import cpu_kernel as fused
from colordim.engine.buffer import LayerBuffer
from colordim.engine.recorder import HistogramRecorder

pytestmark = pytest.mark.skipif(fused.njit is None, reason="numba is not installed")


def test_the_kernel_compiles_and_runs_where_numba_is_installed():
    "A kernel that stops compiling would send every CPU output down the torch path: fail here, not skip."
    assert fused.available()


def outputs():
    "Outputs that probe every rule: signs, ReLU zeros, edges, NaN, inf, ranks, layouts, dtypes."
    generator = torch.Generator().manual_seed(0)
    normal = torch.randn(16, 8, 6, 6, generator=generator) * 3
    edges = torch.linspace(-5, 5, 41).repeat(7)  # every bin edge of bins=40 over (-5, 5), both ends included
    holes = normal.clone()
    holes[2, 3, 1, 1], holes[5, 0, 0, 0], holes[5, 1, 2, 2] = math.nan, math.inf, -math.inf
    dead = torch.randn(32, 10, generator=generator).relu()
    dead[:, 3] = 0  # unit 3 never fires
    wide = torch.randn(40, 48, generator=generator).relu()  # more units than a line holds
    wide[:, 20:23] = 0
    small_maps = torch.randn(16, 24, 2, 2, generator=generator)  # four units in every line
    zeros = torch.zeros(4, 3, 20)  # unit 0: only -0.0 (dead); unit 1: -0.0 and 0.0 (dead); unit 2: 0.0 and 1.0
    zeros[:, 0], zeros[:, 1, ::2], zeros[:, 2, 5] = -0.0, -0.0, 1.0
    return {
        "normal": normal, "relu": normal.relu(), "edges": edges, "nan and inf": holes,
        "(batch, features)": dead, "0-d": torch.tensor(2.5), "1-d": torch.randn(100, generator=generator),
        "transposed": normal.transpose(1, 3), "channels last": normal.contiguous(memory_format=torch.channels_last),
        "bfloat16": normal.bfloat16(), "constant": torch.full((4, 3, 5), 5.0), "huge": normal * 1e6,
        "all nan": torch.full((3, 2), math.nan), "(batch, 48 features)": wide, "2x2 maps": small_maps,
        "signed zeros": zeros, **{f"nan, {name}": with_nan(value) for name, value in
                                  [("channels last", normal.contiguous(memory_format=torch.channels_last)),
                                   ("(batch, features)", dead), ("2x2 maps", small_maps)]},
    }


def with_nan(output: torch.Tensor) -> torch.Tensor:
    "A copy of `output` in the same memory layout, with NaN of both signs at two places and an inf."
    output = output.clone()
    flat = output.view(-1) if output.is_contiguous() else output.permute(0, 2, 3, 1).view(-1)  # memory order
    flat[3], flat[-5], flat[7] = math.nan, -math.nan, math.inf
    return output


class Emit(nn.Module):
    "Returns what it is given: lets a test hand the recorder any output."
    def forward(self, x): return x


def recorded(path, monkeypatch, output, **options):
    monkeypatch.setattr(colordim.engine.plans, "USE_FUSED", path == "fused")
    emit = Emit()
    engine = HistogramRecorder({"out": emit}, **options).attach(root=emit)  # each call a forward pass: both go to one layer
    for iteration in range(2):
        engine.begin_column(iteration=iteration)
        emit(output)
        emit(output * -0.5)  # a second call into the same column
        engine.end_column()
    engine.detach()
    return engine.recording


def assert_same(fast, slow):
    assert (fast.counts["out"] == slow.counts["out"]).all(), fast.counts["out"] - slow.counts["out"]
    assert fast.numel["out"].tolist() == slow.numel["out"].tolist()
    got, want = fast.moments["out"], slow.moments["out"]
    np.testing.assert_allclose(got[:, :2], want[:, :2], rtol=2e-6, atol=1e-6)  # float32 sums, summed differently
    np.testing.assert_array_equal(got[:, 2:], want[:, 2:])                      # counts, min and max: exact


@pytest.mark.parametrize("name", list(outputs()))
def test_the_kernel_counts_and_summarises_like_torch(name, monkeypatch):
    output = outputs()[name]
    options = dict(bins=40, range=(-5, 5))
    assert_same(recorded("fused", monkeypatch, output, **options), recorded("torch", monkeypatch, output, **options))


@pytest.mark.parametrize("options", [dict(scale="symlog", linthresh=0.5, range=(-1e6, 1e6)), dict(stats=False),
                                     dict(sample=100), dict(sample=100, stats=False), dict(near_zero=1.0),
                                     dict(sample=40), dict(sample=40, scale="symlog"), dict(bins=300, range=(-5, 5)),
                                     dict(bins=300, range=(-5, 5), sample=100), dict(bins=253), dict(bins=254)])
def test_the_kernel_follows_every_option_like_torch(options, monkeypatch):
    """sample=100: in lines (outputs of at most 6,400 values here); sample=40: independent positions too;
    bins above 253 take int32 bin keys, up to it bytes."""
    for name in ("normal", "nan and inf", "(batch, features)", "huge", "(batch, 48 features)", "2x2 maps"):
        output = outputs()[name]
        fast, slow = recorded("fused", monkeypatch, output, **options), recorded("torch", monkeypatch, output, **options)
        if options.get("stats", True):
            assert_same(fast, slow)
        else:
            assert (fast.counts["out"] == slow.counts["out"]).all()
            assert np.isnan(fast.mean["out"]).all() and np.isnan(slow.mean["out"]).all()


@pytest.mark.parametrize("name", ["normal", "relu", "(batch, features)", "2x2 maps", "channels last", "signed zeros",
                                  "nan, channels last", "nan, (batch, features)", "nan, 2x2 maps", "nan and inf"])
def test_each_units_maximum_equals_torchs(name):
    """Each unit's maximum (what distributed runs merge dead units from) and the minimum, from every extremes
    path of the kernel (ordered integers for long units and units last, floats for short units; with and
    without NaN), equal torch's amax and amin exactly: NaN where a unit holds one, -0.0 and 0.0 alike."""
    output = outputs()[name]
    plan = colordim.engine.plans.make_plan(output, None, 0, 40, (-5.0, 5.0), None, 0.05, True, None)
    assert isinstance(plan, colordim.engine.plans.FusedPlan)
    rows = LayerBuffer(1, 40, "cpu")
    assert plan(output, rows, 0) is False  # nothing outside a fixed range
    unit_max = plan.unit_max.copy()
    logical = output.movedim(1, -1).reshape(-1, output.shape[1])
    nan_unit = logical.isnan().any(0)
    want = torch.where(nan_unit, math.nan, logical.nan_to_num(nan=-math.inf, posinf=math.inf, neginf=-math.inf).amax(0))
    np.testing.assert_array_equal(unit_max, want.numpy())
    minimum = -rows.moments[0, 4].item()
    assert (math.isnan(minimum) if output.isnan().any() else minimum == output.min().item())
    if name == "signed zeros":
        assert rows.moments[0, 3].item() == 2  # dead units: those whose maximum is <= 0, -0.0 included
        assert unit_max.tolist() == [0.0, 0.0, 1.0]


def test_known_answers_from_the_kernel(monkeypatch):
    "Independent of the torch path: numpy's histogram, and statistics worked out by hand."
    values = torch.tensor([[-7.0, -1.0, 0.0, 0.01], [0.5, 2.0, 3.0, 9.0], [math.nan, 1.0, 1.0, 1.0]])
    recording = recorded("fused", monkeypatch, values[:2], bins=3, range=(-3, 3), near_zero=0.05)
    finite = values[:2].numpy().ravel()
    both = np.concatenate([finite, finite * -0.5])
    inside = np.histogram(both, bins=3, range=(-3, 3))[0]
    assert recording.counts["out"][0].tolist() == [(both < -3).sum(), *inside, (both > 3).sum()]
    assert recording.mean["out"][0] == pytest.approx(both.mean())
    assert recording.near_zero["out"][0] == pytest.approx(4 / 16)
    assert (recording.min["out"][0], recording.max["out"][0]) == (-7.0, 9.0)
    # units are dim 1, 4 per call: the first call's maxima are 0.5, 2, 3, 9; the second's (x -0.5) are
    # 3.5, 0.5, -0.0, -0.005: two dead units out of 8
    assert recording.dead_rate["out"][0] == pytest.approx(2 / 8)
    with_nan = recorded("fused", monkeypatch, values, bins=3, range=(-3, 3))
    assert with_nan.nan["out"][0] == 2 and np.isnan(with_nan.mean["out"][0]) and np.isnan(with_nan.max["out"][0])


def test_a_kernel_that_fails_to_compile_falls_back_to_torch_with_a_warning(monkeypatch):
    from colordim.engine.plans import TorchPlan
    def broken(*args):
        raise RuntimeError("no LLVM here")
    monkeypatch.setattr(fused, "_WORKS", None)
    monkeypatch.setattr(fused, "run_exact", broken)
    with pytest.warns(RuntimeWarning, match="compiled CPU kernel is unavailable .RuntimeError: no LLVM here.; "
                                            "using torch ops"):
        assert not fused.available()
    emit = Emit()
    with HistogramRecorder({"out": emit}, bins=4, range=(-2, 2)) as engine:
        engine.begin_column()
        emit(torch.tensor([[-3.0, -1.0, 0.5, 1.5, 9.0]]))
        engine.end_column()
    assert isinstance(engine.layers["activation"][0].last, TorchPlan)
    assert engine.recording.counts["out"].tolist() == [[1, 0, 1, 1, 1, 1]]   # -1.0 opens bin [-1, 0)


def test_kernel_calls_take_arrays_and_refuse_sizes_their_loops_would_overrun():
    "The kernels run without bounds checks: each call checks the sizes first, and a plan its positions, once."
    counts, moments = np.zeros((2, 6), np.int64), np.zeros((2, 6))
    # 4 bins: lanes of 7 counters, then 8 keys (both rows at once), a byte each: one int64 word
    values, floats, ints = np.ones(8, np.float32), np.zeros(4, np.float32), np.zeros(fused.LANES * 7 + 1, np.int64)
    fixed = fused.params((-1.0, 1.0), 0.0, 0.05, True, batch=2, units=4)  # (2, 4) output: 4 units, 4 values a row
    fused.run_exact(values, counts, moments, 1, fixed, floats, ints)
    assert counts[1].tolist() == [0, 0, 0, 0, 8, 0] and moments[1, :2].tolist() == [8.0, 8.0]
    with pytest.raises(ValueError, match="row, params or scratch of the wrong size"):
        fused.run_exact(values, counts, moments, 2, fixed, floats, ints)         # no row 2
    with pytest.raises(ValueError, match="row, params or scratch of the wrong size"):
        fused.run_exact(values, counts, moments, 0, fixed, floats, ints[:-1])    # no room for the keys
    with pytest.raises(ValueError, match="an output of the wrong size"):
        fused.run_exact(values[:6], counts, moments, 0, fixed, floats, ints)     # 6 values are not (2, 4)
    sampled = fused.params((-1.0, 1.0), 0.0, 0.05, True, units=1, count=2)
    with pytest.raises(ValueError, match="sample positions"):
        index = np.array([1, 9, 0, 0], np.int32)  # 9 is past the output's 8 values
        fused.run_sample(values, counts, moments, 0, sampled, floats, ints, index)
    with pytest.raises(ValueError, match="sampled lines"):
        index = np.array([0, 16, 0, 0, 4, 20], np.int32)  # a line starting past the end
        fused.run_lines(values, counts, moments, 0, sampled, np.zeros(40, np.float32),
                        np.zeros(fused.LANES * 7 + 256, np.int64), index)
    plan = colordim.engine.plans.make_plan(torch.zeros(2, 4), None, 0, 4, (-1.0, 1.0), None, 0.05, True, None)
    with pytest.raises(TypeError, match=r"CPU outputs of shape \(2, 4\) got \(3, 4\) on cpu"):
        plan(torch.zeros(3, 4), None, 0)
    sampled_plan = colordim.engine.plans.make_plan(torch.zeros(64, 100), 50, 0, 4, (-1.0, 1.0), None, 0.05, True, None)
    assert not sampled_plan._index[0].flags.writeable  # the positions the kernel reads by: checked, then frozen


def test_a_growing_range_call_adds_nothing_when_finite_values_fall_outside():
    "range='auto': the kernel says so instead of counting; infinities go to the edge bins and never grow it."
    counts, moments = np.zeros((1, 6), np.int64), np.zeros((1, 6))
    # one unit's maximum, then each of the row's 4 positions' maxima (`table_size`)
    floats, ints = np.zeros(1 + 4, np.float32), np.zeros(fused.LANES * 7 + 4, np.int64)
    growing = fused.params((-1.0, 1.0), 0.0, 0.05, True, batch=1, units=1, grow=True)
    outside = np.array([0.5, 3.0, -0.5, 0.0], np.float32)
    assert fused.run_exact(outside, counts, moments, 0, growing, floats, ints) == 1
    assert counts.sum() == 0 and moments.sum() == 0 and ints[:fused.LANES * 7].sum() == 0   # lanes clean
    infinite = np.array([0.5, np.inf, -np.inf, np.nan], np.float32)
    assert fused.run_exact(infinite, counts, moments, 0, growing, floats, ints) == 0
    assert counts[0].tolist() == [1, 0, 0, 0, 1, 1]                  # -inf under, 0.5, +inf over; NaN in none
    fixed = fused.params((-1.0, 1.0), 0.0, 0.05, True, batch=1, units=1)
    assert fused.run_exact(outside, counts, moments, 0, fixed, floats, ints) == 0   # a fixed range counts it


def test_plans_sharing_scratch_take_it_again_when_it_grows():
    "A recorder's plans share the kernel's scratch; a bigger output grows it, and every plan takes it again."
    from colordim.engine.buffer import LayerBuffer as DeviceRows
    from colordim.engine.plans import SharedArrays
    generator = torch.Generator().manual_seed(0)
    small, big = torch.randn(4, 3, 2, 2, generator=generator), torch.randn(4, 8, 5, 5, generator=generator)
    shared = SharedArrays()
    plans = {name: colordim.engine.plans.make_plan(x, None, 0, 10, (-2.0, 2.0), None, 0.05, True, None, shared)
             for name, x in (("small", small), ("big", big))}
    rows = {name: DeviceRows(2, 10, "cpu") for name in plans}
    plans["small"](small, rows["small"], 0)       # scratch sized for `small`
    keys = shared.arrays["ints"]
    plans["big"](big, rows["big"], 0)             # grows it: `small` takes it again at its next call
    assert shared.arrays["ints"].size == fused.LANES * 13 + fused.key_words(4 * 8 * 5 * 5, 10) > keys.size
    assert plans["small"]._generation != shared.generation == plans["big"]._generation
    plans["small"](small, rows["small"], 1)
    for name, x in (("small", small), ("big", big)):
        alone = colordim.engine.plans.make_plan(x, None, 0, 10, (-2.0, 2.0), None, 0.05, True, None)  # its own scratch
        expected = DeviceRows(2, 10, "cpu")
        alone(x, expected, 0)
        assert rows[name].counts[0].tolist() == expected.counts[0].tolist()
        assert rows[name].moments[0].tolist() == expected.moments[0].tolist()
    assert rows["small"].counts[1].tolist() == rows["small"].counts[0].tolist()
    expected, _ = np.histogram(small.numpy(), bins=10, range=(-2, 2))
    assert rows["small"].counts[1, 1:-1].tolist() == expected.tolist()


def test_the_kernel_calls_keep_the_gil_because_plans_share_their_scratch():
    "Two threads recording through one recorder must not run its kernel at once (one SharedArrays)."
    for call in (fused.run_exact, fused.run_sample, fused.run_lines):
        assert call.targetoptions.get("nogil", False) is False, call
    assert fused.summarise.targetoptions["nogil"] is True  # the kernels themselves may run without it


def test_a_slow_first_compile_says_so_on_stderr_and_a_quick_one_says_nothing(capsys):
    import time
    from colordim.engine import cpu_kernel as fused
    assert fused._telling_if_slow(lambda: time.sleep(0.4) or True, after=0.05) is True
    told = capsys.readouterr().err
    assert told.count("colordim: compiling the CPU kernel (once after installing; cached on disk after that)") == 1
    assert "colordim: CPU kernel ready in 0 s" in told
    assert fused._telling_if_slow(lambda: 7, after=5.0) == 7 and capsys.readouterr().err == ""


@pytest.fixture
def split_everything(monkeypatch):
    "Every whole output of two rows or more is summarised in parts on two threads."
    from colordim.engine import cpu_threads
    monkeypatch.setattr(fused, "PARALLEL_FROM", 1)
    monkeypatch.setattr(cpu_threads, "PASSIVE", True)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", list(outputs()))
def test_an_output_in_parts_on_two_threads_counts_and_summarises_like_torch(name, monkeypatch, split_everything):
    from colordim.engine import cpu_threads
    output, calls, run = outputs()[name], [], cpu_threads.run
    monkeypatch.setattr(cpu_threads, "run", lambda tasks: calls.append(len(tasks)) or run(tasks))
    options = dict(bins=40, range=(-5, 5))
    assert_same(recorded("fused", monkeypatch, output, **options), recorded("torch", monkeypatch, output, **options))
    whole_rows = output.dim() >= 2 and output.shape[0] >= 2  # bfloat16 too: the kernel reads its float32 copy
    assert calls == ([2] * 4 if whole_rows else []), calls  # two calls a column, two columns; each in two parts


def test_parts_follow_every_option_and_a_growing_range(monkeypatch, split_everything):
    for options in [dict(scale="symlog", linthresh=0.5, range=(-1e6, 1e6)), dict(stats=False), dict(near_zero=1.0),
                    dict(range="auto")]:
        for name in ("normal", "nan and inf", "(batch, 48 features)", "channels last"):
            output = outputs()[name]
            fast, slow = recorded("fused", monkeypatch, output, **options), recorded("torch", monkeypatch, output, **options)
            assert (fast.counts["out"] == slow.counts["out"]).all(), (options, name)
            assert (fast.edges["out"] == slow.edges["out"]).all()
            if options.get("stats", True):
                assert_same(fast, slow)


def test_a_big_output_is_split_only_when_torch_has_threads_for_it(monkeypatch):
    """Split from PARALLEL_FROM values and two rows, into as many parts as torch has threads (here at most 2),
    where torch's threads sleep between ops."""
    from colordim.engine import cpu_threads
    monkeypatch.setattr(cpu_threads, "PASSIVE", True)
    big = torch.randn(4, 8, 96, 96)  # 294,912 values
    assert big.numel() >= fused.PARALLEL_FROM
    plan = colordim.engine.plans.make_plan(big, None, 0, 40, (-5.0, 5.0), None, 0.05, True, None)
    assert plan.split is not None and plan.split.most == min(4, torch.get_num_threads())
    assert plan.split.bounds(2) == [(0, 2 * 8 * 96 * 96), (2 * 8 * 96 * 96, 4 * 8 * 96 * 96)]
    assert colordim.engine.plans.make_plan(big[:1], None, 0, 40, (-5.0, 5.0), None, 0.05, True, None).split is None
    assert colordim.engine.plans.make_plan(big[:, :, :10], None, 0, 40, (-5.0, 5.0), None, 0.05, True, None).split is None
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)  # a user who gave torch one thread: one part, on the caller's thread
        one = LayerBuffer(1, 40, "cpu")
        plan(big, one, 0)
        torch.set_num_threads(2)
        two = LayerBuffer(1, 40, "cpu")
        plan(big, two, 0)
    finally:
        torch.set_num_threads(threads)
    assert (one.counts == two.counts).all()
    assert one.counts.sum().item() == big.numel()
    np.testing.assert_array_equal(one.moments[0, 2:].numpy(), two.moments[0, 2:].numpy())
    np.testing.assert_allclose(one.moments[0, :2].numpy(), two.moments[0, :2].numpy(), rtol=1e-12)


def test_an_error_in_a_helper_thread_is_raised_in_the_caller_after_every_part_ends():
    from colordim.engine import cpu_threads
    ended = []

    def part(name, fail):
        ended.append(name)
        if fail:
            raise ValueError(f"part {name} failed")
        return name
    assert cpu_threads.run([(part, ("a", False)), (part, ("b", False))]) == ["a", "b"]
    with pytest.raises(ValueError, match="part b failed"):
        cpu_threads.run([(part, ("c", False)), (part, ("b", True))])
    assert sorted(ended) == ["a", "b", "b", "c"]
    assert cpu_threads.run([(part, ("d", False))]) == ["d"]  # and the pool still works


def test_a_forked_child_splits_with_helpers_of_its_own():
    "A child forked while helpers exist has none of their threads: it must not wait on them forever."
    import multiprocessing
    from colordim.engine import cpu_threads
    cpu_threads.run([(abs, (-1,)), (abs, (-2,))])  # helpers exist in this process now
    context = multiprocessing.get_context("fork")
    with context.Pool(1) as pool:
        assert pool.apply_async(_split_in_child).get(timeout=60) == [1, 2]


def _split_in_child():
    from colordim.engine import cpu_threads
    return cpu_threads.run([(abs, (-1,)), (abs, (-2,))])


@pytest.mark.parametrize("environment, passive", [({}, False), ({"OMP_WAIT_POLICY": "PASSIVE"}, True),
                                                  ({"OMP_WAIT_POLICY": "active"}, False), ({"GOMP_SPINCOUNT": "0"}, True),
                                                  ({"KMP_BLOCKTIME": "0"}, True), ({"KMP_BLOCKTIME": "200"}, False)])
def test_outputs_split_only_where_torchs_openmp_threads_sleep_between_ops(environment, passive, monkeypatch):
    "Spinning OpenMP threads hold the cores while a hook runs: a split call would wait for its parts."
    from colordim.engine import cpu_threads
    for name in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(torch.backends.openmp, "is_available", lambda: True)
    assert cpu_threads.passive() is passive
    assert cpu_threads.threads() == (torch.get_num_threads() if passive else 1)
    big = torch.randn(4, 8, 96, 96)
    plan = colordim.engine.plans.make_plan(big, None, 0, 40, (-5.0, 5.0), None, 0.05, True, None)
    assert (plan.split is not None) is (passive and torch.get_num_threads() >= 2)
