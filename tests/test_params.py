"""The streams of an optimizer step: weights, their gradients and updates, per step, equal to taps of them."""
import numpy as np
import pytest
import torch
from torch import nn

import colordim
from colordim.data.recording import Recording
from colordim.engine.find_layers import find_layers
from colordim.engine.recorder import HistogramRecorder
from colordim.engine.steps import find_params
from test_nosync import WatchOps, syncs

VOCAB, CONTEXT, EMBED, HIDDEN = 27, 3, 10, 32


def makemore_mlp(gain: float = 5 / 3, seed: int = 0) -> nn.Sequential:
    "Karpathy's makemore part 3 MLP: an embedding, five Linear + BatchNorm1d + Tanh blocks, a head."
    torch.manual_seed(seed)
    layers = [nn.Embedding(VOCAB, EMBED), nn.Flatten()]
    width = CONTEXT * EMBED
    for _ in range(5):
        layers += [nn.Linear(width, HIDDEN, bias=False), nn.BatchNorm1d(HIDDEN), nn.Tanh()]
        width = HIDDEN
    layers.append(nn.Linear(HIDDEN, VOCAB))
    model = nn.Sequential(*layers)
    with torch.no_grad():
        for module in model:
            if isinstance(module, nn.Linear) and module.out_features == HIDDEN:
                module.weight *= gain
    return model


def names_data(batches: int = 6, batch: int = 32, seed: int = 0):
    "Context windows of letters and the next letter, from the words of this module's docstrings (made in code)."
    generator = torch.Generator().manual_seed(seed)
    x = torch.randint(0, VOCAB, (batches, batch, CONTEXT), generator=generator)
    y = (x.sum(-1) * 7 + 3) % VOCAB  # a rule to learn
    return list(zip(x, y))


class Taps:
    "What each step saw, tapped by the test around the optimizer: gradients, weights before and after."
    def __init__(self, model, optimizer, names):
        self.params = {name: p for name, p in model.named_parameters() if name in names}
        self.steps = []
        optimizer.register_step_pre_hook(self._before)
        optimizer.register_step_post_hook(self._after)

    def _before(self, *_):
        self._grads = {n: p.grad.detach().clone() for n, p in self.params.items() if p.grad is not None}
        self._weights = {n: p.detach().clone() for n, p in self.params.items()}

    def _after(self, *_):
        self.steps.append((self._grads, self._weights, {n: p.detach().clone() for n, p in self.params.items()}))


def histogram(values: torch.Tensor, edges: np.ndarray) -> np.ndarray:
    return np.histogram(values.double().numpy(), edges)[0]


def assert_columns_equal_taps(recording: Recording, taps: Taps, step_columns):
    assert len(step_columns) == len(taps.steps)
    for column, (grads, before, after) in zip(step_columns, taps.steps):
        for name in taps.params:
            for part, values in ((recording.params, after[name]), (recording.param_grads, grads[name]),
                                 (recording.updates, after[name] - before[name])):
                edges = part.edges[name]
                # inside the range, and nothing outside: every value is in a bin (auto ranges hold them)
                assert part.numel[name][column] == values.numel()
                assert part.counts[name][column].sum() == values.numel()
                counted = part.hist[name][column]
                inside = (values.double().numpy() >= edges[0]) & (values.double().numpy() <= edges[-1])
                assert counted.sum() == inside.sum()
                assert (counted == histogram(values, edges)).all(), (name, column)


def train(model, optimizer, data, accumulate: int = 1, valid: bool = True):
    for index, (x, y) in enumerate(data):
        model.train()
        loss = nn.functional.cross_entropy(model(x), y) / accumulate
        loss.backward()
        if (index + 1) % accumulate == 0:
            optimizer.step()
            optimizer.zero_grad()
    if valid:
        model.eval()
        with torch.no_grad():
            model(data[0][0])


RECORDED = ["2", "3", "17"]  # the first Linear, its BatchNorm and the head


def test_a_plain_loop_records_weights_gradients_and_updates_per_step_as_tapped():
    model = makemore_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    names = ["2.weight", "3.weight", "3.bias", "17.weight", "17.bias"]
    taps = Taps(model, optimizer, names)
    with colordim.record(model, RECORDED, optimizer=optimizer, params=True, param_grads=True, updates=True) as rec:
        train(model, optimizer, names_data())
    recording = rec.recording
    assert recording.kinds == ["activation", "param", "param_grad", "update"]
    assert recording.params.layer_names == names  # the recorded layers' parameters, in the model's order
    assert recording.params.shapes["2.weight"] == (HIDDEN, CONTEXT * EMBED)
    assert recording.params.types == {"2.weight": "Linear", "3.weight": "BatchNorm1d", "3.bias": "BatchNorm1d",
                                      "17.weight": "Linear", "17.bias": "Linear"}
    assert recording.phase.tolist() == ["train"] * 6 + ["valid"]
    assert_columns_equal_taps(recording, taps, range(6))
    for part in (recording.params, recording.param_grads, recording.updates):  # validation: no step, nothing
        assert part.numel["2.weight"][6] == 0 and np.isnan(part.mean["2.weight"][6])
    # SGD: the update is -lr * grad, so the ratio is RMS(lr * grad) / RMS(weights after the step)
    for column, (grads, _, after) in enumerate(taps.steps):
        for name in names:
            expected = (0.1 * grads[name].double()).pow(2).mean().sqrt() / after[name].double().pow(2).mean().sqrt()
            assert recording.update_ratio[name][column] == pytest.approx(expected.item(), rel=1e-5)
    assert np.isnan(recording.update_ratio["2.weight"][6])


def test_adams_update_is_the_weights_after_minus_before():
    model = makemore_mlp()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    taps = Taps(model, optimizer, ["2.weight"])
    with colordim.record(model, "2", optimizer=optimizer, updates=True) as rec:
        train(model, optimizer, names_data(batches=4), valid=False)
    recording = rec.recording
    assert recording.kinds == ["activation", "param", "update"]  # updates=True records the weights too
    for column, (_, before, after) in enumerate(taps.steps):
        delta = (after["2.weight"] - before["2.weight"]).double()
        assert (recording.updates.hist["2.weight"][column] == histogram(delta, recording.updates.edges["2.weight"])).all()
        expected = delta.pow(2).mean().sqrt() / after["2.weight"].double().pow(2).mean().sqrt()
        assert recording.update_ratio["2.weight"][column] == pytest.approx(expected.item(), rel=1e-6)
        assert recording.updates.mean["2.weight"][column] == pytest.approx(delta.mean().item(), rel=1e-6, abs=1e-12)
    # Adam's first steps move every weight by about lr: the ratio is lr / RMS(weights)
    assert recording.update_ratio["2.weight"][0] == pytest.approx(1e-3 / taps.steps[0][2]["2.weight"].pow(2).mean().sqrt().item(),
                                                                  rel=0.05)


def test_accumulating_over_4_batches_gives_one_parameter_column_per_step():
    model = makemore_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    taps = Taps(model, optimizer, ["17.weight", "17.bias"])
    with colordim.record(model, "17", optimizer=optimizer, params=True, param_grads=True, updates=True) as rec:
        train(model, optimizer, names_data(batches=8), accumulate=4)
    recording = rec.recording
    assert len(recording) == 9  # every forward pass is a column
    stepped = (recording.params.numel["17.weight"] > 0).tolist()
    assert stepped == [False, False, False, True, False, False, False, True, False]
    assert (recording.param_grads.numel["17.weight"] > 0).tolist() == stepped
    assert (recording.updates.numel["17.weight"] > 0).tolist() == stepped
    assert_columns_equal_taps(recording, taps, [3, 7])  # the accumulated gradient, once per step


def test_a_step_the_grad_scaler_skips_records_no_parameter_stream():
    model = makemore_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=4.0)
    data = names_data(batches=3)
    with colordim.record(model, "17", optimizer=optimizer, params=True, param_grads=True, updates=True) as rec:
        for index, (x, y) in enumerate(data):
            loss = nn.functional.cross_entropy(model(x), y)
            scaler.scale(loss * (float("inf") if index == 1 else 1.0)).backward()  # batch 1: inf gradients
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad()
    recording = rec.recording
    assert (recording.params.numel["17.bias"] > 0).tolist() == [True, False, True]
    assert (recording.param_grads.numel["17.bias"] > 0).tolist() == [True, False, True]
    # the gradients as the step saw them: unscaled (the scaler divides by its scale before the step)
    assert np.isfinite(recording.param_grads.max["17.weight"][[0, 2]]).all()


def test_two_optimizers_each_step_their_own_parameters_once_per_column():
    model = makemore_mlp()
    head = list(model[17].parameters())
    body = [p for p in model.parameters() if all(p is not q for q in head)]
    optimizers = [torch.optim.SGD(body, lr=0.1), torch.optim.SGD(head, lr=0.1)]
    with colordim.record(model, ["2", "17"], optimizer=optimizers, params=True, updates=True) as rec:
        for x, y in names_data(batches=3):
            nn.functional.cross_entropy(model(x), y).backward()
            for optimizer in optimizers:
                optimizer.step()
            optimizers[0].step()  # a second step of the same parameters in one column: not counted twice
            for optimizer in optimizers:
                optimizer.zero_grad()
    recording = rec.recording
    for name in ("2.weight", "17.weight", "17.bias"):
        assert recording.params.numel[name].tolist() == [model.get_parameter(name).numel()] * 3


def test_without_an_optimizer_params_are_the_weights_each_training_pass_runs_with():
    model = makemore_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    weights = []
    with colordim.record(model, "17", params=True) as rec:
        for x, y in names_data(batches=3):
            weights.append(model[17].weight.detach().clone())
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
            optimizer.zero_grad()
    recording = rec.recording
    assert recording.kinds == ["activation", "param"]
    for column, tapped in enumerate(weights):
        assert (recording.params.hist["17.weight"][column] == histogram(tapped, recording.params.edges["17.weight"])).all()


def test_bad_options_say_what_is_valid():
    model = makemore_mlp()
    with pytest.raises(ValueError, match="need the optimizer"):
        with colordim.record(model, "2", param_grads=True):
            pass
    with pytest.raises(ValueError, match=r"'2\.wieght'.*not a parameter.*2\.weight"):
        with colordim.record(model, "2", params=["2.wieght"]):
            pass
    with pytest.raises(TypeError, match="torch.optim.Optimizer"):
        with colordim.record(model, "2", optimizer=object(), params=True):
            pass
    with pytest.raises(ValueError, match="updates: 'yes' is not valid"):
        with colordim.record(model, "2", updates="yes"):
            pass
    with pytest.raises(ValueError, match="no parameters"):
        with colordim.record(model, "4", params=True):  # a Tanh
            pass
    other = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1)
    with pytest.raises(ValueError, match="steps none of the parameters"):
        with colordim.record(model, "2", optimizer=other, params=True):
            pass
    with colordim.record(model, "2") as rec:  # and nothing was left hooked
        model(names_data(1)[0][0])
    with pytest.raises(ValueError, match=r"no weights were recorded; record with params=True"):
        rec.recording.kind("param")


def test_named_parameters_and_the_dead_count_of_gradient_rows():
    model = makemore_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with colordim.record(model, "2", optimizer=optimizer, params=["0.weight", "17.bias"], param_grads=True) as rec:
        x, y = names_data(batches=1)[0]
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    recording = rec.recording
    assert recording.params.layer_names == ["0.weight", "17.bias"]
    assert recording.params.types == {"0.weight": "Embedding", "17.bias": "Linear"}
    used = len(torch.unique(x))  # an embedding row gets a gradient only for the letters in the batch
    assert recording.param_grads.channels["0.weight"][0] == VOCAB
    assert recording.param_grads.dead_rate["0.weight"][0] == pytest.approx((VOCAB - used) / VOCAB)
    assert recording.params.dead_rate["17.bias"][0] == 0


def test_saved_and_selected_recordings_keep_every_stream(tmp_path):
    model = makemore_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with colordim.record(model, ["2", "17"], optimizer=optimizer, params=True, param_grads=True, updates=True) as rec:
        train(model, optimizer, names_data(batches=4))
    recording = rec.recording
    loaded = Recording.load(recording.save(tmp_path / "run.npz"))
    assert loaded == recording and loaded.kinds == recording.kinds
    assert np.array_equal(loaded.update_ratio["17.bias"], recording.update_ratio["17.bias"], equal_nan=True)
    head = recording.select(layers="17", phase="train")
    assert head.params.layer_names == ["17.weight", "17.bias"] and len(head.updates) == 4
    assert Recording.concat([recording, recording]).updates.numel["2.weight"].tolist() == \
        recording.updates.numel["2.weight"].tolist() * 2
    merged = recording.coarsen(2)  # two steps per column: their counts add up
    assert merged.params.numel["2.weight"].tolist() == [2 * HIDDEN * CONTEXT * EMBED] * 2 + [0]


def test_steps_run_no_sync_op(torch_path):
    """Torch path on the CPU, fixed ranges (an auto range on the CPU reads its CPU values to widen at once; on a
    GPU it widens at the moves to the host), after the first step made the buffers: no op reads a value back."""
    model = makemore_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with colordim.record(model, ["2", "17"], optimizer=optimizer, params=True, param_grads=True, updates=True,
                         range=(-5, 5), param_range=(-1, 1)) as rec:
        data = names_data(batches=4)
        train(model, optimizer, data[:1], valid=False)
        with WatchOps() as watch:
            train(model, optimizer, data[1:], valid=False)
    assert syncs(watch.ops) == [] and watch.to_host == []
    assert "aten.histc.default" in watch.ops and "aten.sub.out" in watch.ops
    assert rec.recording.updates.numel["17.bias"].tolist() == [VOCAB] * 4


def test_fake_cuda_steps_never_wait_for_the_gpu(monkeypatch):
    from torch._subclasses.fake_tensor import FakeTensorMode
    from colordim.engine import plans
    monkeypatch.setattr(plans, "USE_TRITON", False)
    with FakeTensorMode(allow_non_fake_inputs=True):
        model = nn.Sequential(nn.Linear(6, 16, device="cuda"), nn.ReLU(), nn.Linear(16, 3, device="cuda"))
        modules = find_layers(model, [0, 2])
        engine = HistogramRecorder(modules, bins=20, range=(-3, 3), params=find_params(model, modules),
                                   streams=("param", "param_grad", "update"), param_range=(-1, 1)).attach()
        with WatchOps() as watch:
            engine.steps.keep_weights()
            for iteration in range(3):
                engine.begin_column("train", iteration=iteration)
                model(torch.randn(8, 6, device="cuda"))
                for p in model.parameters():  # fake CUDA has no backward: gradients and a step by hand
                    p.grad = torch.randn_like(p)
                engine.steps.before_step()
                with torch.no_grad():
                    for p in model.parameters():
                        p -= 0.1 * p.grad
                engine.steps.after_step()
                engine.end_column()
        buffers = [layer.buffer for kind in ("param", "param_grad", "update") for layer in engine.layers[kind]]
        assert len(buffers) == 12 and all(buffer.counts.device.type == "cuda" for buffer in buffers)
        for hook in engine._hooks:  # not detach(): its flush would read fake values
            hook.remove()
        engine.columns.reset()
    assert syncs(watch.ops) == [] and watch.to_host == []
    assert "aten.histc.default" in watch.ops


def test_a_fastai_fit_records_each_step_with_accumulation_and_validation():
    from fastai.callback.core import Callback
    from fastai.callback.training import GradientAccumulation
    from fastai.data.core import DataLoaders
    from fastai.learner import Learner
    from fastai.optimizer import SGD
    from colordim.integrations.fastai import ActivationHistogram
    data = names_data(batches=8)
    x, y = torch.cat([x for x, _ in data]), torch.cat([y for _, y in data])
    dls = DataLoaders.from_dsets(list(zip(x, y)), list(zip(x[:64], y[:64])), bs=32, device="cpu", shuffle=False)
    model = makemore_mlp()
    taps = []

    class Tap(Callback):
        order = 50  # after the step's other callbacks, as the optimizer sees the gradients

        def before_step(self):
            self.grads, self.before = self.model[17].weight.grad.clone(), self.model[17].weight.detach().clone()

        def after_step(self):
            taps.append((self.grads, self.before, self.model[17].weight.detach().clone()))

    callback = ActivationHistogram(layers="17", params=True, param_grads=True, updates=True)
    learn = Learner(dls, model, loss_func=nn.functional.cross_entropy, opt_func=SGD, lr=0.1, cbs=[callback])
    learn.fit(1, cbs=[Tap(), GradientAccumulation(64)])  # a step every 2 batches of 32
    recording = callback.recording
    assert len(taps) == 4
    steps = np.flatnonzero(recording.params.numel["17.weight"] > 0)
    assert recording.phase[steps].tolist() == ["train"] * 4 and (recording.phase == "valid").sum() == 2
    for column, (grads, before, after) in zip(steps, taps):
        for part, values in ((recording.params, after), (recording.param_grads, grads),
                             (recording.updates, after - before)):
            assert (part.hist["17.weight"][column] == histogram(values, part.edges["17.weight"])).all()
        expected = (0.1 * grads.double()).pow(2).mean().sqrt() / after.double().pow(2).mean().sqrt()
        assert recording.update_ratio["17.weight"][column] == pytest.approx(expected.item(), rel=1e-5)
