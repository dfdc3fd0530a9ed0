"""Activations that no hook sees: functional calls inside a module's forward, recorded with functional=True."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import colordim


class Block(nn.Module):
    "A block that applies its activations functionally, as many hand-written models do."
    def __init__(self, channels: int = 8):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, channels, 3, padding=1), nn.BatchNorm2d(channels)

    def forward(self, x):
        h = F.relu(self.bn(self.conv(x)))
        return F.relu(h - 0.5) + torch.tanh(x.mean(1, keepdim=True))  # relu twice: block:relu, block:relu#2


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.block, self.act, self.fc = Block(), nn.ReLU(), nn.Linear(8, 4)

    def forward(self, x):
        h = self.act(self.block(x))  # a module: hooked as `act`, its own F.relu not recorded again
        return self.fc(h.mean((2, 3))).softmax(-1)


def tapped_run(functional=True, batches: int = 3, **options):
    "A recorded run, and what F.relu, torch.tanh and softmax returned, tapped by the test."
    torch.manual_seed(0)
    model = Net()
    taps = {"block:relu": [], "block:relu#2": [], "block:tanh": [], "model:softmax": []}

    def tap(module, inputs, out):  # what the block's two F.relu calls return, from the BatchNorm's output
        taps["block:relu"].append(F.relu(out).detach())
        taps["block:relu#2"].append(F.relu(F.relu(out) - 0.5).detach())
    model.block.bn.register_forward_hook(tap)
    inputs = [torch.randn(4, 3, 8, 8) for _ in range(batches)]
    taps["block:tanh"] = [torch.tanh(x.mean(1, keepdim=True)) for x in inputs]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with colordim.record(model, ["block.bn", "act", "fc"], functional=functional, range=(-3, 3), **options) as rec:
        for x in inputs:
            out = model(x)
            taps["model:softmax"].append(out.detach())
            out.log().mean().backward()
            optimizer.step()
            optimizer.zero_grad()
    return rec.recording, taps


def test_functional_calls_are_layers_named_by_their_module_and_function_with_a_taps_counts():
    recording, taps = tapped_run()
    assert recording.layer_names == ["block.bn", "act", "fc", "block:relu", "block:relu#2", "block:tanh", "model:softmax"]
    assert recording.types["block:relu#2"] == "relu" and recording.types["model:softmax"] == "softmax"
    assert recording.units["block:relu"] == "channels" and recording.units["model:softmax"] == "features"
    for name in ("block:relu", "block:relu#2", "block:tanh", "model:softmax"):
        for column, tapped in enumerate(taps[name]):
            assert recording.numel[name][column] == tapped.numel()
            assert (recording.hist[name][column] == np.histogram(tapped.numpy(), recording.edges[name])[0]).all()
    # nn.ReLU's own F.relu is its module's output (`act`), not recorded twice
    assert not any(name.startswith("act:") for name in recording.layer_names)


def test_the_gradients_of_functional_outputs_are_recorded_too():
    recording, _ = tapped_run(grads=True)
    assert (recording.grads.numel["block:relu"] == 4 * 8 * 8 * 8).all()
    assert (recording.grads.numel["model:softmax"] == 16).all()
    assert (recording.grads.numel["block:tanh"] == 0).all()  # its input needs no gradient: none flows


def test_some_functions_only_and_a_bad_value_names_the_valid_ones():
    recording, _ = tapped_run(functional=["tanh"])
    assert recording.layer_names == ["block.bn", "act", "fc", "block:tanh"]
    recording, _ = tapped_run(functional=["block:relu", "model:softmax"])  # module:function specs
    assert recording.layer_names == ["block.bn", "act", "fc", "block:relu", "block:relu#2", "model:softmax"]
    recording, _ = tapped_run(functional="b*:tanh")  # a glob on the module's name
    assert recording.layer_names == ["block.bn", "act", "fc", "block:tanh"]
    for bad in ("gelu2", "block:gelu2", ":relu", ["relu", 3]):
        with pytest.raises(ValueError, match="functional: .* is not valid; use True .*'layer1.0:relu'.*'gelu'"):
            tapped_run(functional=bad)


def test_off_nothing_sees_torch_calls_and_on_the_mode_is_left_even_when_forward_raises():
    seen = []
    model = Net()
    model.block.register_forward_pre_hook(lambda m, i: seen.append(torch._C._is_torch_function_mode_enabled()))
    with colordim.record(model, "fc"):
        model(torch.randn(2, 3, 8, 8))
    with colordim.record(model, "fc", functional=True):
        model(torch.randn(2, 3, 8, 8))
        assert not torch._C._is_torch_function_mode_enabled()  # only during the forward pass
        with pytest.raises(RuntimeError):
            model(torch.randn(2, 5, 8, 8))  # wrong channels: the conv raises inside the forward
        assert not torch._C._is_torch_function_mode_enabled()
    assert seen == [False, True, True]


def test_a_compiled_model_is_refused_at_once():
    model = torch.compile(Net())
    with pytest.raises(ValueError, match="functional: a torch.compile'd model"):
        with colordim.record(model, "fc", functional=True):
            pass


def test_a_hugging_face_gpt2_records_its_eager_attention_softmax():
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=16, vocab_size=50,
                                     attn_implementation="eager")
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config).eval()
    with colordim.record(model, functional=True) as rec:
        with torch.no_grad():
            model(torch.randint(0, 50, (2, 12)))
    recording = rec.recording
    softmax = [name for name in recording.layer_names if name.endswith(":softmax")]
    assert softmax == ["transformer.h.0.attn:softmax", "transformer.h.1.attn:softmax"]
    assert recording.numel[softmax[0]][0] == 2 * 2 * 12 * 12  # (batch, heads, query, key)
    probabilities = recording.counts[softmax[0]][0]
    assert probabilities[0] == probabilities[-1] == 0  # every value in [0, 1]
    # most of a causal attention's probabilities are near zero (half are masked): that is no finding
    assert not [finding for finding in colordim.diagnose(recording).findings if finding.layer in softmax]
    # the tanh inside NewGELUActivation's forward is that module's own working: not recorded
    assert not any(name.endswith(":tanh") for name in recording.layer_names)
