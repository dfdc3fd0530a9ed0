"""No host-device synchronisation per batch: watched op by op, on the CPU and on fake CUDA tensors."""
import pytest
import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

from colordim.engine.find_layers import find_layers
from colordim.engine.recorder import HistogramRecorder
from conftest import make_learner

SYNC_OPS = {"aten._local_scalar_dense.default", "aten.item.default", "aten.nonzero.default"}


class WatchOps(TorchDispatchMode):
    "Count every op, and note each copy to the CPU."
    def __init__(self):
        super().__init__()
        self.ops, self.to_host = [], []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.ops.append(str(func))
        device = kwargs.get("device")
        if str(func).startswith("aten._to_copy") and device is not None and torch.device(device).type == "cpu":
            self.to_host.append(str(func))
        return func(*args, **kwargs)


def syncs(ops):
    return [op for op in ops if op in SYNC_OPS]


@pytest.mark.parametrize("batch,counting_op", [(8, "aten.histc.default"), (1024, "aten.bincount.default")])
def test_engine_batches_run_no_sync_op_until_flush(batch, counting_op, torch_path):
    "Torch path: small outputs are counted with histc, big ones (on the CPU) with bincount: neither syncs."
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    engine = HistogramRecorder(find_layers(model, [0, 1, 3]), bins=20, range=(-3, 3)).attach()
    engine.reserve(4)
    with WatchOps() as watch:
        for iteration in range(4):
            engine.begin_column("train", iteration=iteration)
            model(torch.randn(batch, 1, 8, 8))
            engine.end_column()
    # our hooks ran, statistics on
    assert {counting_op, "aten.aminmax.default", "aten.sum.default"} <= set(watch.ops)
    assert syncs(watch.ops) == [] and watch.to_host == []
    with WatchOps() as watch:
        engine.flush()                           # the one move to the host, at the epoch's end
    assert watch.to_host == []                   # CPU rows are read in place into the host's columns: no copy op
    recording = engine.recording
    assert len(recording) == 4 and recording.numel["3"].tolist() == [batch * 3] * 4
    assert (recording.counts["3"].sum(1) == batch * 3).all()
    engine.detach()


def test_a_fastai_fit_with_the_callback_syncs_no_more_than_without():
    from colordim import ActivationHistogram
    counts = []
    for cbs in ([], [ActivationHistogram()]):
        learn = make_learner(cbs=cbs)
        with WatchOps() as watch:
            learn.fit(1)
        counts.append((len(syncs(watch.ops)), len(watch.ops)))
    (syncs_without, ops_without), (syncs_with, ops_with) = counts
    assert syncs_with == syncs_without           # fastai's own (loss logging) and nothing of ours
    assert ops_with > ops_without                # while our hooks did run


@pytest.fixture
def cuda_torch_path(monkeypatch):
    "CUDA outputs take the torch path (the fallback without Triton), not the Triton kernel."
    from colordim.engine import plans
    monkeypatch.setattr(plans, "USE_TRITON", False)


@pytest.mark.parametrize("deterministic", [False, True])
def test_fake_cuda_forward_passes_never_wait_for_the_gpu(deterministic, cuda_torch_path):
    "Under FakeTensorMode any op that reads a CUDA value back raises; a copy to the host is counted."
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(deterministic)
    try:
        with FakeTensorMode(allow_non_fake_inputs=True):
            model = nn.Sequential(nn.Conv2d(1, 4, 3, device="cuda"), nn.ReLU(), nn.Flatten(),
                                  nn.Linear(4 * 6 * 6, 3, device="cuda"))
            engine = HistogramRecorder(find_layers(model, [0, 1, 3]), bins=20, range=(-3, 3)).attach()
            with WatchOps() as watch:
                for iteration in range(3):
                    engine.begin_column("train", iteration=iteration)
                    model(torch.randn(8, 1, 8, 8, device="cuda"))
                    engine.end_column()
            with WatchOps() as control:
                buffers = [layer.buffer for layer in engine.layers["activation"]]
                buffers[0].counts.to("cpu")   # what flush does: the watch must see it
            assert len(control.to_host) == 1
            assert all(buffer.counts.device.type == buffer.moments.device.type == "cuda" for buffer in buffers)
            for hook in engine._hooks:         # not detach(): its flush would read fake values
                hook.remove()
            engine._hooks = []
            engine.columns.reset()
    finally:
        torch.use_deterministic_algorithms(previous)
    histogram_op = "aten.index_put_.default" if deterministic else "aten.histc.default"
    assert {histogram_op, "aten.aminmax.default", "aten.amax.default"} <= set(watch.ops)
    assert syncs(watch.ops) == [] and watch.to_host == []


def test_gradient_batches_run_no_sync_op_either(torch_path):
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    engine = HistogramRecorder(find_layers(model, [0, 2]), grads=True, grad_range=(-1, 1)).attach()
    engine.reserve(3)
    with WatchOps() as watch:
        for iteration in range(3):
            engine.begin_column("train", iteration=iteration)
            model(torch.randn(4096, 6)).square().mean().backward()
            engine.end_column()
    assert watch.ops.count("aten.bincount.default") >= 3     # the gradient of layer 0, (4096, 16), each batch
    assert syncs(watch.ops) == [] and watch.to_host == []
    engine.detach()
    assert engine.recording.grads.numel["0"].tolist() == [4096 * 16] * 3


VIEWS = {"aten.detach.default", "aten.view.default", "aten.select.int", "aten._unsafe_view.default", "aten.alias.default",
         "aten.t.default", "aten.transpose.int", "aten.permute.default", "aten.slice.Tensor", "aten.unsqueeze.default",
         "aten.squeeze.dim", "aten.expand.default", "aten.movedim.int", "aten.reshape.default"}


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "features", "sampled"])
def test_with_triton_a_hooked_cuda_output_is_one_op_and_no_wait(layout):
    "The Triton kernel is one op per output (`colordim::summarise`), counted over fake CUDA tensors; no sync."
    pytest.importorskip("triton")
    from colordim.engine import plans
    assert plans.USE_TRITON
    computing = []
    with FakeTensorMode(allow_non_fake_inputs=True):
        model = nn.Sequential(nn.Conv2d(3, 8, 3, device="cuda"), nn.ReLU(), nn.Flatten(1, 2),
                              nn.Linear(6, 5, device="cuda"), nn.GELU())
        x = torch.randn(16, 3, 8, 8, device="cuda")
        if layout == "channels_last":  # the convolution's output is stored channels last too
            x = x.to(memory_format=torch.channels_last)
        options = dict(units="features") if layout == "features" else dict(sample=64) if layout == "sampled" else {}
        for hooked in (False, True):
            engine = HistogramRecorder(find_layers(model, [0, 1, 3, 4]), bins=20, range=(-3, 3), **options)
            if hooked:
                engine.attach()
            engine.reserve(4)
            for iteration in range(3):  # the first makes the buffers and plans; then only the batches are watched
                if iteration == 1:
                    watch = WatchOps().__enter__()
                engine.begin_column("train", iteration=iteration)
                model(x)
                engine.end_column()
            watch.__exit__(None, None, None)
            computing.append([op for op in watch.ops if op not in VIEWS and not op.startswith("prim.")])  # metadata
            assert syncs(watch.ops) == [] and watch.to_host == []
            for hook in engine._hooks:
                hook.remove()
    plain, recorded = computing
    ours = len(recorded) - len(plain)
    assert recorded.count("colordim.summarise.default") == 2 * 4
    assert ours == 2 * 4, recorded       # one op that computes per hooked output (the bound: 3; before: 29)


def test_without_triton_cuda_outputs_take_the_torch_path(monkeypatch):
    "Triton is optional: without it a CUDA output's plan is the torch path's, and nothing else changes."
    from colordim.engine import gpu_kernel
    from colordim.engine import plans
    monkeypatch.setattr(gpu_kernel, "triton", None)
    assert not gpu_kernel.available()
    with FakeTensorMode(allow_non_fake_inputs=True):
        plan = plans.make_plan(torch.randn(4, 8, 5, device="cuda"), None, 0, 10, (-1.0, 1.0), None, 0.05, True, None)
    assert isinstance(plan, plans.TorchPlan)
