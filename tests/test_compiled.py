"""Compiled models record inside the graph (`colordim.engine.in_graph`): no graph break, no recompile per batch,
the counts an eager model gives. Inductor compiles with the system's gcc, so these run on the CPU."""
import warnings

import numpy as np
import pytest
import torch
import torch._dynamo
from torch import nn
from torch.utils.data import TensorDataset

import colordim
from colordim.demos.cnn import BLOCKS, seed_cnn
from colordim.engine.in_graph import _layout, rebuild

BATCHES = 20


@pytest.fixture(autouse=True)
def fresh_dynamo():
    "Every test compiles from scratch, and counts its own recompiles."
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 3))


def batches():
    generator = torch.Generator().manual_seed(1)
    return [torch.randn(16, 8, generator=generator) * (1 + step) for step in range(BATCHES)]


def train_loop(model, step, **options):
    "20 training steps (forward, backward, SGD with lr 0: compiled and eager see the same weights) under record()."
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    with colordim.record(model, **options) as recorder:
        for index, x in enumerate(batches()):
            with torch._dynamo.config.patch(error_on_recompile=index > 0):  # one compile, at the first batch
                step(x).square().sum().backward()
            optimizer.step()
            optimizer.zero_grad()
    return recorder.recording


def test_a_fullgraph_mlp_records_in_its_graph_what_eager_records():
    model = mlp()
    compiled = torch.compile(model, fullgraph=True)  # a graph break would raise here
    recording = train_loop(model, compiled, grads=True, range="auto", layers=[0, 1, 2, 3, 4])
    eager_model = mlp()
    eager = train_loop(eager_model, eager_model, grads=True, range="auto", layers=[0, 1, 2, 3, 4])
    assert recording == eager and recording.grads == eager.grads  # every count, moment, edge and column
    assert recording.numel["0"].tolist() == [16 * 32] * BATCHES and list(recording.grads.counts) == list("01234")
    assert recording.grads.numel["4"].tolist() == [16 * 3] * BATCHES


def test_explain_finds_no_graph_break_while_recording():
    model = mlp()
    with colordim.record(model, grads=True):
        explained = torch._dynamo.explain(model)(torch.randn(4, 8))
    assert explained.graph_break_count == 0 and explained.graph_count == 1


def test_without_fullgraph_a_model_with_its_own_graph_break_records_the_same():
    class Printing(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = mlp()

        def forward(self, x):
            hidden = self.inner[:2](x)
            torch._dynamo.graph_break()  # the model's own break, not ours
            return self.inner[2:](hidden)
    model = Printing()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        recording = train_loop(model, torch.compile(model), layers=["inner.0", "inner.2", "inner.4"])
    assert not [str(warning.message) for warning in caught if "colordim" in str(warning.filename) + str(warning.message)]
    eager_model = Printing()
    eager = train_loop(eager_model, eager_model, layers=["inner.0", "inner.2", "inner.4"])
    assert recording == eager


class Branchy(nn.Module):
    "A dict output with a tensor, a pair and an int; one ReLU called twice (two layers); a tuple-returning part."
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b, self.act = nn.Linear(8, 16), nn.Linear(16, 4), nn.ReLU()
        self.pair = Pair()

    def forward(self, x):
        hidden = self.act(self.a(x))
        low, high = self.pair(hidden)
        return {"logits": self.act(self.b(low + high)), "steps": 3}


class Pair(nn.Module):
    def forward(self, x):
        return x * 0.5, (x - 1, None)[0]


def test_containers_shared_modules_and_their_gradients_record_as_in_eager():
    layers = ["a", "act", "pair", "b"]
    model = Branchy()
    compiled = torch.compile(model, fullgraph=True)
    recording = train_loop(model, lambda x: compiled(x)["logits"], grads=True, range="auto", layers=layers)
    eager_model = Branchy()
    eager = train_loop(eager_model, lambda x: eager_model(x)["logits"], grads=True, range="auto", layers=layers)
    assert list(recording.counts) == ["a", "b", "act", "act#2", "pair[0]", "pair[1]"] == list(eager.counts)
    assert recording == eager and recording.grads == eager.grads
    assert recording.grads.numel["act#2"].tolist() == [16 * 4] * BATCHES  # the second call's gradient, not the first's


def test_layouts_rebuild_the_output_around_the_real_tensors():
    a, b = torch.ones(2), torch.zeros(3)
    output = {"x": a, "rest": (b, None, [a, 3]), 7: "text"}
    tensors = []
    layout = _layout(output, tensors)
    rebuilt = rebuild(layout, [t + 1 for t in tensors])
    assert len(tensors) == 3 and list(rebuilt) == ["x", "rest", 7]
    assert rebuilt["x"].tolist() == [2.0, 2.0] and rebuilt["rest"][0].tolist() == [1.0] * 3
    assert rebuilt["rest"][1] is None and type(rebuilt["rest"][2][1]).__name__ == "int"
    assert type(rebuilt[7]).__name__ == "str" and rebuild(_layout(a, []), [b]) is b


def demo_learner(model, epochs_seen):
    "fastai on the demo CNN: 20 training batches of 16 digit-sized images, 4 validation batches, lr 0."
    from fastai.callback.core import Callback
    from fastai.data.core import DataLoaders
    from fastai.data.load import DataLoader
    from fastai.learner import Learner
    from fastcore.basics import noop

    class NoRecompileAfterFirstEpoch(Callback):
        def before_epoch(self):
            torch._dynamo.config.error_on_recompile = self.epoch > 0
            epochs_seen.append(self.epoch)

        def after_fit(self):
            torch._dynamo.config.error_on_recompile = False

    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(24 * 16, 1, 28, 28, generator=generator), torch.randint(0, 10, (24 * 16,), generator=generator)
    train, valid = TensorDataset(x[:320], y[:320]), TensorDataset(x[320:], y[320:])
    dls = DataLoaders(DataLoader(train, bs=16), DataLoader(valid, bs=16))
    learn = Learner(dls, model, loss_func=nn.functional.cross_entropy, lr=0.0,
                    cbs=[colordim.ActivationHistogram(layers=BLOCKS), NoRecompileAfterFirstEpoch()])
    learn.logger = noop
    return learn


@pytest.mark.parametrize("how", ["torch.compile", "module.compile"])
def test_the_callback_records_a_fullgraph_demo_cnn_as_eager_does(how):
    torch.manual_seed(0)
    model = seed_cnn()
    if how == "torch.compile":
        model = torch.compile(model, fullgraph=True)  # layers keep their eager names: "0", not "_orig_mod.0"
    else:
        model.compile(fullgraph=True)
    epochs = []
    learn = demo_learner(model, epochs)
    learn.fit(2, lr=0.0)
    torch.manual_seed(0)
    eager = demo_learner(seed_cnn(), [])
    eager.fit(2, lr=0.0)
    recording, expected = learn.activation_histogram.recording, eager.activation_histogram.recording
    assert epochs == [0, 1] and list(recording.counts) == BLOCKS
    assert recording.phase.tolist() == (["train"] * 20 + ["valid"] * 4) * 2
    for name in BLOCKS:  # inductor's convolutions round differently from eager ones, by ~1e-7
        assert np.array_equal(recording.counts[name], expected.counts[name]), name
        np.testing.assert_allclose(recording.moments[name], expected.moments[name], rtol=1e-5, atol=1e-6)
    assert recording.numel["3"].tolist() == [16 * 64 * 2 * 2] * 48


def test_a_second_recording_of_a_compiled_model_records_too():
    "New hooks, new graph: dynamo guards on the model's hooks, so the old graph's ops never run stale."
    model = mlp()
    compiled = torch.compile(model, fullgraph=True)
    for _ in range(2):
        with colordim.record(model, layers=[0]) as recorder:
            for _ in range(3):
                compiled(torch.ones(2, 8))
        assert recorder.recording.numel["0"].tolist() == [64] * 3
    compiled(torch.ones(2, 8))
    assert sum(len(module._forward_hooks) + len(module._forward_pre_hooks) for module in model.modules()) == 0


def test_a_model_called_with_keywords_only_compiles_and_records():
    "Hugging Face models are called as model(input_ids=...): the root's pre-hook sees no positional input."
    class Keywords(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.net = seed_cnn()

        def forward(self, *, pixels):
            return self.net(pixels)
    model = Keywords()
    model.compile(fullgraph=True)
    with colordim.record(model, layers=["net.0", "net.4"]) as recorder:
        for step in range(3):
            model(pixels=torch.randn(2, 1, 28, 28)).sum().backward()
    assert recorder.recording.numel["net.4"].tolist() == [20] * 3 and recorder.recording.iteration.tolist() == [0, 1, 2]


def test_checkpointed_blocks_in_a_compiled_model_count_each_value_and_gradient_once():
    from torch.utils.checkpoint import checkpoint

    class Checkpointed(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.block, self.head = nn.Sequential(nn.Linear(8, 16), nn.ReLU()), nn.Linear(16, 3)

        def forward(self, x):
            return self.head(checkpoint(self.block, x, use_reentrant=False))
    model, eager_model = Checkpointed(), Checkpointed()
    layers = ["block.0", "block.1", "head"]
    recording = train_loop(model, torch.compile(model, fullgraph=True), grads=True, layers=layers)
    eager = train_loop(eager_model, eager_model, grads=True, layers=layers)
    assert recording == eager and recording.grads == eager.grads
    assert recording.grads.numel["block.0"].tolist() == [16 * 16] * BATCHES


@pytest.mark.parametrize("sample", [None, 50])
def test_outputs_stored_channels_last_are_read_in_place_with_the_counts_of_logical_order(cpu_path, sample):
    "Inductor's convolutions (and models in channels_last) give (N, C, H, W) outputs stored (N, H, W, C)."
    from colordim.engine.plans import UnitsLast
    model = nn.Sequential(nn.Tanh(), nn.ReLU())
    generator = torch.Generator().manual_seed(0)
    images = [torch.randn(8, 6, 5, 5, generator=generator) * 3 for _ in range(3)]
    images[0][:, 2] = -1.0  # channel 2 dead after the ReLU
    recordings = {}
    for layout in (torch.contiguous_format, torch.channels_last):
        with colordim.record(model, layers=[0, 1], bins=16, range=(-2, 2), sample=sample) as recorder:
            for x in images:
                model(x.to(memory_format=layout))
        recordings[layout] = recorder.recording
        plan = next(iter(recorder.recorder.layers["activation"][1].plans.values()))
        read_in_place = isinstance(plan, UnitsLast) or getattr(plan, "stored_last", False)
        assert read_in_place == (layout is torch.channels_last)
    plain, stored_last = recordings.values()
    assert stored_last.shapes == plain.shapes and stored_last.shapes["1"] == (8, 6, 5, 5)
    for name in ("0", "1"):  # the same counts (a sample: of as many values); the sums in another order
        if sample is None:
            assert np.array_equal(stored_last.counts[name], plain.counts[name])
            np.testing.assert_allclose(stored_last.moments[name], plain.moments[name], rtol=1e-12)
        else:
            assert np.allclose(stored_last.counts[name].sum(1), plain.counts[name].sum(1))
    assert all(np.array_equal(stored_last.numel[name], plain.numel[name]) for name in ("0", "1"))
    if sample is None:  # a sample of 50 may miss the dead channel's values: only the exact rate is certain
        assert stored_last.dead_rate["1"].tolist()[0] == pytest.approx(1 / 6) and plain.dead_rate["1"][1] == 0


# --- a model compiled before recording starts ------------------------------------------------------------
# torch.compile's guards skip module hooks by default (torch._dynamo.config.skip_nnmodule_hook_guards): a
# model that ran compiled with no hook on it keeps its hookless graph when hooks are added later.

def test_lr_find_before_fit_keeps_the_hooks_in_the_compiled_graph(tmp_path):
    "lr_find compiles the model; the callback's hooks are on (recording nothing) so that the fit records."
    from conftest import make_learner, tiny_cnn
    from fastai.callback.schedule import lr_find  # noqa: F401  (Learner.lr_find)
    torch._dynamo.reset()
    callback = colordim.ActivationHistogram(layers=[0], valid=False)
    learn = make_learner(cbs=callback, model=tiny_cnn())
    learn.path = tmp_path  # lr_find saves the model into its models/ folder: not the working directory
    learn.model = torch.compile(learn.model)
    learn.lr_find(num_it=4, show_plot=False)
    learn.fit(1)
    recording = callback.recording
    assert len(recording) == 6 and recording.phase.tolist() == ["train"] * 6        # 48 images, batch 8
    assert recording.counts["0"].sum(1).tolist() == [8 * 4 * 8 * 8] * 6              # every value of each batch
    assert all(not module._forward_hooks for module in learn.model.modules())


def test_a_compiled_model_run_before_the_callback_stops_the_fit_saying_how_to_record():
    from conftest import make_learner, tiny_cnn
    torch._dynamo.reset()
    callback = colordim.ActivationHistogram(layers=[0], valid=False)
    learn = make_learner(cbs=callback, model=tiny_cnn())
    learn.model = torch.compile(learn.model)
    learn.remove_cb(callback)
    learn.fit(1)                                    # compiled without hooks
    learn.add_cb(callback)
    with pytest.raises(RuntimeError, match=r"no hooked layer ran.*compiled.*torch\.compiler\.reset\(\)"):
        learn.fit(1)
    assert all(not module._forward_hooks for module in learn.model.modules())   # the guard took them off
    torch.compiler.reset()                          # what the error says: then the fit records
    learn.fit(1)
    assert callback.recording.counts["0"].sum(1).tolist() == [8 * 4 * 8 * 8] * 6


def test_a_plain_loop_over_a_copy_compiled_before_the_block_warns_that_nothing_was_recorded():
    torch._dynamo.reset()
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    x = torch.randn(16, 4, generator=torch.Generator().manual_seed(0))
    compiled = torch.compile(model)
    compiled(x)
    with pytest.warns(RuntimeWarning, match=r"no forward pass.*torch\.compiler\.reset\(\)"):
        with colordim.record(model) as recorder:
            compiled(x)
    assert len(recorder.recording) == 0
    torch.compiler.reset()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        with colordim.record(model, layers=[0]) as recorder:
            compiled(x), compiled(x)
    assert recorder.recording.counts["0"].sum(1).tolist() == [16 * 8] * 2


def test_layers_that_never_run_in_an_eager_forward_pass_are_warned_of():
    "Not compiled: the chosen layers were not called (a branch not taken); a warning, and the fit goes on."
    from conftest import make_learner

    class Skips(nn.Module):
        def __init__(self):
            super().__init__()
            self.unused, self.head = nn.Linear(64, 3), nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
        def forward(self, x): return self.head(x)
    learn = make_learner(cbs=colordim.ActivationHistogram(layers=["unused"], valid=False), model=Skips())
    with pytest.warns(RuntimeWarning, match="no hooked layer ran"):
        learn.fit(1)
