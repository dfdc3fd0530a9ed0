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
        assert set(rec.recorder.steps._before) == {"2.weight"}  # kept for the next step's update (no bias here)
    assert rec.recorder.steps._before == {}  # the block ended: the kept copy's memory goes back
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
    with pytest.raises(ValueError, match=r"'2\.wieght' is neither a parameter of the model nor a layer.*2\.weight"):
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
    # the weights' dead count is an output's: rows with no value above zero (a bias: each value its own row)
    assert recording.params.dead_rate["17.bias"][0] == pytest.approx((model[17].bias <= 0).double().mean().item())


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
            for iteration in range(3):
                engine.begin_column("train", iteration=iteration)
                model(torch.randn(8, 6, device="cuda"))
                for p in model.parameters():  # fake CUDA has no backward: gradients and a step by hand
                    p.grad = torch.randn_like(p)
                engine.steps.keep_weights()
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
    figure, ax = learn.update_ratio_chart()  # the Learner's figures take the new kinds
    lines = [line for line in ax.get_lines() if line.get_label() in ("17.weight Linear", "17.bias Linear")]
    assert [len(line.get_xdata()) for line in lines] == [4, 4]  # one point per step
    assert np.allclose(lines[0].get_ydata(), np.log10(recording.update_ratio["17.weight"][steps]))
    image = learn.color_dim("17.weight", kind="update").get_images()[0].get_array()
    assert image.shape == (100, 4) and ax.get_lines()[-1].get_ydata()[0] == -3  # the steps only; the guide


# --- the verdicts: diagnose's checks of steps and bounded activations, with known answers ----------------
def tanh_stack(gain: float) -> nn.Sequential:
    "makemore's MLP before batch norm: Linear + Tanh blocks, weights N(0, gain / sqrt(fan_in))."
    torch.manual_seed(0)
    layers, width = [nn.Embedding(VOCAB, EMBED), nn.Flatten()], CONTEXT * EMBED
    for _ in range(5):
        linear = nn.Linear(width, HIDDEN)
        nn.init.normal_(linear.weight, std=gain / width ** 0.5)
        nn.init.zeros_(linear.bias)
        layers += [linear, nn.Tanh()]
        width = HIDDEN
    return nn.Sequential(*layers, nn.Linear(HIDDEN, VOCAB))


def recorded_run(model, lr: float, batches: int = 20, **options):
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)  # frozen ones too, as fine-tuning often does
    with colordim.record(model, nn.Tanh, optimizer=optimizer, **options) as rec:
        train(model, optimizer, names_data(batches=batches))
    return rec.recording


def test_a_learning_rate_of_1_updates_too_fast_and_0_01_does_not():
    fast = recorded_run(makemore_mlp(), lr=1.0, params=nn.Linear, updates=True)
    report = colordim.diagnose(fast)
    found = {finding.layer: finding for finding in report.findings}
    assert [finding.check for finding in report.findings] == ["update_large"] * 7
    assert set(found) == {"2.weight", "5.weight", "8.weight", "11.weight", "14.weight", "17.weight", "17.bias"}
    tail = [column for column in range(len(fast)) if fast.phase[column] == "train"][-2:]  # 10% of 20 steps
    assert found["2.weight"].value == pytest.approx(float(np.median(fast.update_ratio["2.weight"][tail])))
    assert found["2.weight"].value > 1e-2 and found["2.weight"].threshold == 1e-2
    assert report.verdict.startswith("All 5 layers healthy; 7 of 7 parameters: 2.weight, ")
    assert report.verdict.endswith(" update too fast")
    assert colordim.diagnose(fast, update_high=1.0).findings == []  # the threshold is an argument
    calm = recorded_run(makemore_mlp(), lr=0.01, params=nn.Linear, updates=True)
    assert colordim.diagnose(calm).healthy
    assert 3e-4 < np.nanmedian(calm.update_ratio["2.weight"]) < 3e-3  # about makemore's 1e-3


def test_a_tiny_learning_rate_updates_too_slowly_and_a_frozen_layer_is_not_a_finding():
    model = makemore_mlp()
    model[2].weight.requires_grad_(False)  # frozen: it never moves
    slow = recorded_run(model, lr=1e-6, batches=5, params=["2.weight", "5.weight"], updates=True)
    findings = colordim.diagnose(slow).findings
    assert [(finding.layer, finding.check) for finding in findings] == [("5.weight", "update_small")]
    assert findings[0].value < 1e-5 and "too low" in findings[0].advice and "bias=False" in findings[0].advice
    assert slow.update_ratio["2.weight"][:5].tolist() == [0.0] * 5  # a step that left it as it was


def test_a_saturated_tanh_stack_against_a_well_initialised_one():
    saturated = recorded_run(tanh_stack(5.0), lr=0.01, batches=5)
    report = colordim.diagnose(saturated)
    assert [finding.check for finding in report.findings] == ["saturated"] * 5
    assert report.verdict == "5 of 5 layers unhealthy: 3, 5, 7, 9 and 11 saturate"
    assert colordim.diagnose(recorded_run(tanh_stack(5 / 3), lr=0.01, batches=5)).healthy
    assert "read from bins 0.2 wide" in report.findings[0].message  # the default range (-10, 10): coarse
    # the share is read from the histogram: every value of the tap beyond 0.97, up to the bins' resolution
    model = tanh_stack(5.0)
    taps = []
    model[3].register_forward_hook(lambda module, inputs, output: taps.append(output.detach()))
    recording = recorded_run(model, lr=0.01, batches=5, range="auto")
    from colordim.health.step_checks import saturation
    for column, tapped in enumerate(taps[:5]):
        exact = (tapped.abs() > 0.97).double().mean().item()
        assert saturation(recording, "3")[column] == pytest.approx(exact, abs=0.01)


def test_saturation_shares_a_straddling_bin_in_proportion():
    edges = np.linspace(-1, 1, 21)  # bins 0.1 wide: 0.97 is 70% into [0.9, 1.0]
    counts = np.zeros((1, 22), np.int64)
    counts[0, 10], counts[0, 20], counts[0, 21], counts[0, 1] = 90, 10, 5, 20  # middle, top bin, overflow, bottom bin
    recording = Recording(counts={"t": counts}, numel={"t": np.array([125])}, edges={"t": edges}, shapes={"t": (5, 25)},
                          fit=np.zeros(1, int), epoch=np.zeros(1, int), phase=np.array(["train"]),
                          iteration=np.zeros(1, int), types={"t": "Tanh"})
    from colordim.health.step_checks import saturation
    assert saturation(recording, "t")[0] == pytest.approx((5 + 10 * 0.3 + 20 * 0.3) / 125)
    recording.types["t"] = "ReLU"  # not bounded: no share
    assert np.isnan(saturation(recording, "t")[0])


def test_units_whose_weights_get_no_gradient_are_found_by_their_rows():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(VOCAB, EMBED), nn.Flatten(), nn.Linear(CONTEXT * EMBED, HIDDEN), nn.ReLU(),
                          nn.Linear(HIDDEN, VOCAB))
    with torch.no_grad():
        model[2].bias[:8] = -30  # 8 of 32 units never fire: their rows of weights get no gradient at all
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    with colordim.record(model, [3, 4], optimizer=optimizer, params=nn.Linear, param_grads=True) as rec:
        train(model, optimizer, names_data(batches=10))
    recording = rec.recording
    assert recording.param_grads.dead_rate["2.weight"][:10].tolist() == [0.25] * 10
    report = colordim.diagnose(recording)
    dead = [finding for finding in report.findings if finding.check == "grad_dead"]
    assert [(finding.layer, finding.value) for finding in dead] == [("2.weight", 0.25)]
    assert report.verdict == "1 of 2 layers unhealthy: 3 has dead units; 1 of 4 parameters: 2.weight has units " \
        "with no gradient"
    # embeddings (rows of unused tokens) and biases are not read: 0.weight is not recorded here, 2.bias is 1-d
    assert colordim.diagnose(recording, grad_dead=0.3).findings == [f for f in report.findings if f.check != "grad_dead"]


# --- the exports: TensorBoard, W&B, the HTML page ---------------------------------------------------------
def stepped_run(tmp_path=None, batches: int = 4):
    model = makemore_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with colordim.record(model, ["2", "4"], optimizer=optimizer, params=True, param_grads=True, updates=True) as rec:
        train(model, optimizer, names_data(batches=batches))
    return rec.recording


def test_tensorboard_gets_a_series_per_parameter_and_stream_at_each_step(tmp_path):
    from test_tensorboard import read_histograms
    recording = stepped_run()
    tags = colordim.to_tensorboard(recording, tmp_path / "logs")
    assert tags == ["activation/2/train", "activation/2/valid", "activation/4/train", "activation/4/valid",
                    "param/2.weight/train", "param_grad/2.weight/train", "update/2.weight/train"]
    histograms = read_histograms(tmp_path / "logs")
    update = histograms["update/2.weight/train"]
    assert [event.step for event in update] == [0, 1, 2, 3]  # the steps; no validation series of a parameter
    for event in update:
        assert list(event.histogram_value.bucket) == recording.updates.counts["2.weight"][event.step].tolist()


def test_the_html_page_has_the_parameters_table_ratio_chart_and_images(tmp_path):
    import html
    import re
    model = makemore_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)  # too fast: findings link to the table's rows
    with colordim.record(model, nn.Tanh, optimizer=optimizer, params=nn.Linear, updates=True) as rec:
        train(model, optimizer, names_data(batches=10))
    page = rec.recording.to_html(tmp_path / "run.html").read_text()
    assert "<dt>per optimizer step</dt><dd>weights, update</dd>" in page
    assert '<tr id="layer-2_weight"><td><code>2.weight</code></td><td>Linear</td><td>32x30</td>' in page
    assert '<a href="#layer-2_weight"><code>2.weight</code></a>' in page  # the finding links to its row
    images = [html.unescape(alt) for alt in re.findall(r'<img [^>]*alt="([^"]*)"', page)]
    assert "update-to-weight ratio per parameter and step" in images
    assert "colour-dim images of every parameter's update, per step" in images


def test_wandb_gets_parameters_gradients_and_updates_under_the_names_watch_users_know(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    from test_wandb import history, offline_run
    from colordim.integrations.wandb_log import WandbLog
    run = offline_run(tmp_path, monkeypatch)
    try:
        recording = stepped_run()
        WandbLog().write([recording])
        wandb.log({}, commit=True)
        run_dir = run.dir.rsplit("/files", 1)[0]
    finally:
        wandb.finish()
    row = next(row for row in history(run_dir) if "colordim/updates/2.weight" in row)
    assert {"colordim/parameters/2.weight", "colordim/gradients/2.weight", "colordim/activation/2/train"} <= set(row)
    assert row["colordim/updates/2.weight"]["values"] == recording.updates.counts["2.weight"].sum(0)[1:-1].tolist()


def test_sampled_parameters_and_moves_every_2_steps_stand_for_the_whole_tensors():
    model = makemore_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    taps = Taps(model, optimizer, ["17.bias"])
    with colordim.record(model, "17", optimizer=optimizer, params=True, param_grads=True, updates=True, sample=64,
                         move_every=2) as rec:
        train(model, optimizer, names_data(batches=5))
    recording = rec.recording
    weights = VOCAB * HIDDEN  # 864 values: 64 of them histogrammed, the counts scaled to stand for all
    for part in (recording.params, recording.param_grads, recording.updates):
        assert part.numel["17.weight"].tolist() == [weights] * 5 + [0]
        assert np.allclose(part.counts["17.weight"][:5].sum(1), weights)
    assert_columns_equal_taps(recording.select(layers="17"), taps, range(5))  # 27 biases: fewer than 64, exact


def test_symlog_and_fixed_ranges_for_the_parameters_streams():
    model = makemore_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    taps = Taps(model, optimizer, ["17.weight", "17.bias"])
    with colordim.record(model, "17", optimizer=optimizer, params=True, param_grads=True, updates=True,
                         param_scale="symlog", linthresh=1e-3, param_range=(-1, 1)) as rec:
        train(model, optimizer, names_data(batches=3))
    recording = rec.recording
    edges = recording.updates.edges["17.weight"]
    assert recording.updates.linthresh["17.weight"] == 1e-3 and (edges[0], edges[-1]) == (-1, 1)
    assert np.diff(edges)[50] < 1e-3 < np.diff(edges)[-1]  # fine bins near zero, coarse far out
    for column, (grads, before, after) in enumerate(taps.steps):
        for part, values in ((recording.params, after), (recording.param_grads, grads),
                             (recording.updates, {n: after[n] - before[n] for n in after})):
            tapped = values["17.weight"]
            inside = tapped[(tapped >= -1) & (tapped <= 1)]  # any beyond the range are in the edge bins
            assert (part.hist["17.weight"][column] == histogram(inside, part.edges["17.weight"])).all()
    with pytest.raises(ValueError, match="scale: expected 'linear' or 'symlog'"):
        colordim.record(model, "17", optimizer=optimizer, params=True, param_scale="log").__enter__()


def test_an_optimizer_with_a_closure_records_the_gradients_it_computed():
    "LBFGS (and every Lightning step) computes the gradients inside step(), after its pre-hooks."
    model = makemore_mlp()
    optimizer = torch.optim.LBFGS(model.parameters(), lr=0.1, max_iter=2)
    taps, data = [], names_data(batches=3)
    with colordim.record(model, "17", optimizer=optimizer, params=True, param_grads=True, updates=True) as rec:
        for x, y in data:
            def closure():
                optimizer.zero_grad()
                loss = nn.functional.cross_entropy(model(x), y)
                loss.backward()
                return loss
            before = model[17].weight.detach().clone()
            optimizer.step(closure)
            taps.append((model[17].weight.grad.clone(), before, model[17].weight.detach().clone()))
    recording = rec.recording
    steps = np.flatnonzero(recording.params.numel["17.weight"] > 0)
    assert len(steps) == 3  # the closure's forward passes are columns; the step lands in the last one's
    for column, (grads, before, after) in zip(steps, taps):
        for part, values in ((recording.param_grads, grads), (recording.params, after),
                             (recording.updates, after - before)):
            assert (part.hist["17.weight"][column] == histogram(values, part.edges["17.weight"])).all()
