"""colordim.hooks: a CPU module's forward is wrapped instead of hooked; it records the same, comes off
cleanly, and copies of a hooked model are models of their own."""
import copy
import pickle

import numpy as np
import torch
from torch import nn

import colordim
import colordim.hooks
from colordim.hooks import RecordedForward, hook_forward
from conftest import taps, tiny_cnn


def batches(count=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(8, 1, 8, 8, generator=generator) for _ in range(count)]


def recorded(model, use_wrapper, monkeypatch):
    monkeypatch.setattr(colordim.hooks, "USE_WRAPPER", use_wrapper)
    with colordim.record(model, layers=["0.0", "1.2", "3"], bins=20, range=(-3, 3)) as rec:
        outputs = [model(x) for x in batches()]
        kinds = {type(module.__dict__.get("forward")) for module in (model[0][0], model[1][2], model[3])}
    return rec.recording, outputs, kinds


def test_a_wrapped_forward_records_what_a_torch_hook_records(monkeypatch):
    torch.manual_seed(0)
    model = tiny_cnn().eval()
    wrapped, wrapped_outputs, wrapped_kinds = recorded(model, True, monkeypatch)
    hooked, hooked_outputs, hooked_kinds = recorded(model, False, monkeypatch)
    assert wrapped_kinds == {RecordedForward} and hooked_kinds == {type(None)}
    for name in ("0.0", "1.2", "3"):
        np.testing.assert_array_equal(wrapped.hist(name), hooked.hist(name))
        assert wrapped.numel[name].tolist() == hooked.numel[name].tolist() == [8 * model_width(name)] * 3
        np.testing.assert_array_equal(wrapped.mean[name], hooked.mean[name])
    for ours, theirs, x in zip(wrapped_outputs, hooked_outputs, batches()):
        assert torch.equal(ours, theirs) and torch.equal(ours, model(x))  # the model computes the same
    assert all(not taps(module) for module in model.modules())


def model_width(name):
    return {"0.0": 4 * 8 * 8, "1.2": 6 * 4 * 4, "3": 3}[name]


def test_a_deep_copy_or_a_pickle_of_a_hooked_model_is_its_own_model_and_records_nothing():
    torch.manual_seed(0)
    model, x = tiny_cnn().eval(), batches(1)[0]
    with colordim.record(model, layers=["0.0", "3"]) as rec:
        model(x)
        copied = copy.deepcopy(model)
        loaded = pickle.loads(pickle.dumps(model))
        with torch.no_grad():
            copied[3].weight.mul_(2)  # the copy's forward must use the copy's weights
            loaded[3].weight.mul_(3)
        for other, factor in ((copied, 2), (loaded, 3)):
            features = other[:3](x)
            expected = features @ (factor * model[3].weight).T + model[3].bias
            assert torch.allclose(other(x), expected, atol=1e-5)
            assert not isinstance(other[3].__dict__.get("forward"), RecordedForward)
        assert torch.allclose(model(x), model[:3](x) @ model[3].weight.T + model[3].bias, atol=1e-6)
    assert rec.recording.numel["3"].tolist() == [8 * 3, 8 * 3]  # the model's two passes, none of the copies'


def test_other_wrappers_of_forward_are_kept_under_and_over_ours():
    calls = []
    model = nn.Sequential(nn.Linear(2, 2))
    module = model[0]
    own = module.forward
    def under(x):
        calls.append("under")
        return own(x)
    module.forward = under  # a user's own wrapper, there before recording
    with colordim.record(model, layers=[0]) as rec:
        theirs = module.forward
        def over(x):
            calls.append("over")
            return theirs(x)
        module.forward = over  # another library's, put on while recording
        model(torch.ones(1, 2))
    assert calls == ["over", "under"] and rec.recording.numel["0"].tolist() == [2]
    assert module.forward is over  # left in place: only our recording stopped
    model(torch.ones(1, 2))
    assert calls == ["over", "under"] * 2 and rec.recording.numel["0"].tolist() == [2]
    module.forward = under
    assert calls == ["over", "under"] * 2


def test_modules_off_the_cpu_get_a_torch_forward_hook():
    on_meta, on_cpu, no_tensors = nn.Linear(2, 2, device="meta"), nn.Linear(2, 2), nn.ReLU()
    handles = [hook_forward(module, lambda *args: None) for module in (on_meta, on_cpu, no_tensors)]
    assert len(on_meta._forward_hooks) == 1 and "forward" not in on_meta.__dict__
    assert isinstance(on_cpu.forward, RecordedForward) and isinstance(no_tensors.forward, RecordedForward)
    assert not on_cpu._forward_hooks and not no_tensors._forward_hooks
    for handle in handles:
        handle.remove()
        handle.remove()  # twice is fine
    assert all(not taps(module) for module in (on_meta, on_cpu, no_tensors))


def test_two_wrappers_come_off_in_either_order():
    for first_off in (0, 1):
        module, seen = nn.Linear(2, 2), []
        handles = [hook_forward(module, lambda m, i, o, k=k: seen.append(k)) for k in range(2)]
        module(torch.ones(1, 2))
        assert seen == [0, 1]  # the first hooked runs first, as torch's hooks do
        handles[first_off].remove()
        module(torch.ones(1, 2))
        assert seen == [0, 1, 1 - first_off]
        handles[1 - first_off].remove()
        assert "forward" not in module.__dict__ and torch.equal(module(torch.ones(1, 2)), module.weight.sum(1)[None] + module.bias)


def test_a_module_that_refuses_a_new_forward_gets_a_torch_hook():
    class Fixed(nn.Linear):
        def __setattr__(self, name, value):
            if name == "forward":
                raise AttributeError("forward is fixed here")
            super().__setattr__(name, value)
    module, seen = Fixed(2, 2), []
    handle = hook_forward(module, lambda m, i, o: seen.append(o.shape))
    module(torch.ones(3, 2))
    assert seen == [torch.Size([3, 2])] and len(module._forward_hooks) == 1 and "forward" not in module.__dict__
    handle.remove()
    assert taps(module) == 0


def test_a_wrapped_forward_keeps_the_modules_signature():
    import inspect

    class Keywords(nn.Module):
        def forward(self, x, scale: float = 2.0):
            return x * scale
    module = Keywords()
    handle = hook_forward(module, lambda *args: None)
    assert isinstance(module.forward, RecordedForward)
    assert str(inspect.signature(module.forward)) == "(x, scale: float = 2.0)"
    assert module(torch.ones(2), scale=3.0).tolist() == [3.0, 3.0]
    handle.remove()
