"""colordim.engine.hooks: torch forward hooks on every device, that copies of a model never carry along and
that torch.compile traces as one op that runs them eagerly (more in test_compiled.py)."""
import copy
import io
import pickle
import subprocess
import sys
import textwrap

import torch
from torch import nn

import colordim
from colordim.engine.hooks import Hook, Inert, hook_forward, ours
from conftest import taps, tiny_cnn


def batches(count=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(8, 1, 8, 8, generator=generator) for _ in range(count)]


def test_layers_get_torch_forward_hooks_that_come_off():
    model = tiny_cnn().eval()
    with colordim.record(model, layers=["0.0", "1.2", "3"], bins=20, range=(-3, 3)) as rec:
        hooked = [type(hook) for module in (model[0][0], model[1][2], model[3]) for hook in module._forward_hooks.values()]
        outputs = [model(x) for x in batches()]
    assert hooked == [Hook, Hook, Hook] and "forward" not in model[3].__dict__
    assert rec.recording.numel["3"].tolist() == [8 * 3] * 3 and rec.recording.numel["0.0"].tolist() == [8 * 256] * 3
    for output, x in zip(outputs, batches()):
        assert torch.equal(output, model(x))  # the model computes the same
    assert all(not taps(module) for module in model.modules())


def test_a_fused_transformer_layer_runs_its_real_submodules_when_they_are_recorded():
    "torch's fast path for TransformerEncoderLayer in eval skips its submodules unless one has a hook."
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, batch_first=True).eval()
    model, x = nn.Sequential(layer, nn.Linear(16, 2)).eval(), torch.randn(3, 5, 16)  # record()'s own hooks: on model
    with torch.no_grad():
        expected = model(x)
        with colordim.record(model, layers=["0.linear1", "0.norm2", "0.self_attn"]) as rec:
            got = model(x)
    recording = rec.recording
    assert recording.numel["0.linear1"].tolist() == [3 * 5 * 32] and recording.numel["0.norm2"].tolist() == [3 * 5 * 16]
    assert recording.numel["0.self_attn[0]"].tolist() == [3 * 5 * 16]
    assert torch.allclose(got, expected, atol=1e-5)  # the slow path computes what the fast one does


def test_a_deep_copy_made_while_recording_records_nothing_and_keeps_no_hook():
    torch.manual_seed(0)
    model, x = tiny_cnn().eval(), batches(1)[0]
    with colordim.record(model, layers=["0.0", "3"]) as rec:
        model(x)
        copied = copy.deepcopy(model)
        assert [type(hook) for hook in copied[3]._forward_hooks.values()] == [Inert]
        with torch.no_grad():
            copied[3].weight.mul_(2)  # the copy uses the copy's weights
        features = copied[:3](x)
        assert torch.allclose(copied(x), features @ copied[3].weight.T + copied[3].bias, atol=1e-5)
        model(x)
    assert rec.recording.numel["3"].tolist() == [8 * 3, 8 * 3]  # the model's two passes, none of the copy's
    assert all(not taps(module) for module in (*model.modules(), *copied.modules()))  # root hooks too


def test_a_pickled_or_saved_copy_records_nothing_and_drops_its_placeholders_at_its_first_call():
    torch.manual_seed(0)
    model, x = tiny_cnn().eval(), batches(1)[0]
    with colordim.record(model, layers=["0.0", "3"]) as rec:
        model(x)
        loaded = pickle.loads(pickle.dumps(model))
        buffer = io.BytesIO()
        torch.save(model, buffer)
        saved = torch.load(io.BytesIO(buffer.getvalue()), weights_only=False)
        for other in (loaded, saved):
            assert sum(len(ours(module)) for module in other.modules()) == 4  # 2 layers + the root's 2
            assert torch.equal(other(x), model(x))
            assert all(not taps(module) for module in other.modules())
    assert rec.recording.numel["3"].tolist() == [8 * 3] * 3  # the model's three passes only


def test_a_hook_never_replaces_an_output_and_comes_off_twice():
    module, seen = nn.Linear(2, 2), []
    hook = hook_forward(module, lambda m, inputs, output: seen.append(output.shape) or "not an output")
    assert module(torch.ones(3, 2)).shape == (3, 2) and seen == [torch.Size([3, 2])]
    hook.remove()
    hook.remove()
    assert taps(module) == 0


COMPILED = textwrap.dedent("""
    import torch, colordim, warnings
    from torch import nn
    from torch._dynamo.utils import counters
    torch.manual_seed(0)
    mlp = lambda: nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3))
    x = torch.randn(4, 8)
    m0 = mlp()
    with colordim.record(m0):   # an eager recording first: its plans were once traced by the next
        m0(x)
    m = mlp()
    with warnings.catch_warnings(record=True) as caught, colordim.record(m, layers=[0, 1, 2]) as compiled:
        warnings.simplefilter("always")
        c = torch.compile(m)
        for step in range(12):
            c(x + step).sum().backward()
    with colordim.record(m, layers=[0, 1, 2]) as eager:
        for step in range(12):
            m(x + step).sum().backward()
    frames = [str(key) for key in counters["frames"]] if "frames" in counters else []
    print("equal", compiled.recording == eager.recording, compiled.recording.numel["0"].tolist())
    print("limit", any("recompile_limit" in str(w.message) or "cache_size_limit" in str(w.message) for w in caught))
    print("hooks", sum(len(mod._forward_hooks) + len(mod._forward_pre_hooks) for mod in m.modules()))
""")


def test_a_compiled_model_records_what_eager_records_and_never_crashes(tmp_path):
    "The issue's crash: an eager recording, then a compiled one (a segfault once); run apart, so a crash fails only this."
    script = tmp_path / "compiled.py"
    script.write_text(COMPILED)
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600,
                            env={**__import__("os").environ, "TORCH_LOGS": "recompiles"})
    assert result.returncode == 0, result.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines())
    assert lines["equal"] == "True " + str([4 * 32] * 12)
    assert lines["limit"] == "False" and lines["hooks"] == "0"
    recompiled = [line for line in result.stderr.splitlines() if "Recompiling function" in line]
    assert not [line for line in recompiled if "colordim" in line]  # never our code
    assert len(recompiled) <= 1  # nn.Linear.forward once: its input requires grad in one layer, not the other


def test_deep_copies_made_every_batch_are_not_remembered_once_gone():
    model = nn.Sequential(nn.Linear(2, 2))
    with colordim.record(model, layers=[0]):
        for _ in range(50):
            model(torch.ones(1, 2))
            copy.deepcopy(model)  # dropped at once, as an EMA or "best model" copy may be
        hook = next(iter(model[0]._forward_hooks.values()))
        assert isinstance(hook, Hook) and len(hook.copies) <= 1
