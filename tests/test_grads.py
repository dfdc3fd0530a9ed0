"""grads=True: histograms of each hooked layer's output gradient, against autograd captured by hand."""
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from torch import nn

import colordim
from colordim import ActivationHistogram, Recording
from conftest import make_learner, taps


def test_gradient_histograms_equal_numpy_on_hand_captured_gradients():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(inplace=True), nn.Linear(8, 3))   # in-place after layer 0
    captured = {"0": [], "2": []}
    def capture(name):
        def forward_hook(module, inputs, output):
            if output.requires_grad:
                output.register_hook(lambda grad: captured[name].append(grad.detach().clone()))
        return forward_hook
    handles = [model[int(name)].register_forward_hook(capture(name)) for name in captured]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with colordim.record(model, layers=[0, 2], grads=True, grad_range=(-0.05, 0.05), bins=25) as rec:
        for _ in range(3):
            loss = nn.functional.cross_entropy(model(torch.randn(16, 4)), torch.randint(0, 3, (16,)))
            optimizer.zero_grad(); loss.backward(); optimizer.step()
        model.eval()
        with torch.no_grad():
            model(torch.randn(16, 4))                       # no backward: an empty gradient column
    for handle in handles: handle.remove()
    grads = rec.recording.grads
    assert grads.phase.tolist() == ["train"] * 3 + ["valid"] and grads.range("0") == (-0.05, 0.05)
    for name in ("0", "2"):
        for column, gradient in enumerate(captured[name]):
            values = gradient.numpy().ravel()
            expected, _ = np.histogram(values, bins=25, range=(-0.05, 0.05))
            np.testing.assert_array_equal(rec.recording.hist(name, kind="grad")[column], expected)
            assert grads.underflow[name][column] == (values < -0.05).sum()
            assert grads.mean[name][column] == pytest.approx(values.mean(), abs=1e-7)
        assert grads.numel[name].tolist() == [16 * (8 if name == "0" else 3)] * 3 + [0]
    assert all(not taps(module) for module in model.modules())


def test_fastai_callback_records_gradients_with_an_auto_range_and_plots_them(tmp_path):
    learn = make_learner(cbs=ActivationHistogram(layers=["0", "3"], grads=True, save_to=tmp_path / "g.npz"))
    learn.fit(1)
    recording = learn.activation_histogram.recording
    grads = recording.grads
    assert len(grads) == len(recording) == 9
    assert grads.numel["3"].tolist() == [24] * 6 + [0] * 3                 # (8, 3) logits, training only
    low, high = grads.range("3")
    assert low == -high and 0 < high < 1                                  # "auto": readable, from the first backward
    total = grads.hist["3"].sum(1) + grads.underflow["3"] + grads.overflow["3"]
    assert total.tolist() == grads.numel["3"].tolist()
    ax = learn.color_dim("3", kind="grad")
    assert ax.get_ylabel() == "gradient" and ax.get_ylim() == (low, high)
    assert ax.get_title() == "3 Linear  (8, 3), gradient"                   # name, type, and which kind
    figure, axes = learn.color_dims(kind="grad")
    assert [ax.get_title() for ax in axes.flat[:2]] == ["0 Sequential  (8, 4, 8, 8), gradient", "3 Linear  (8, 3), gradient"]
    figure, (zero_ax, _) = learn.dead_chart(kind="grad")
    assert zero_ax.get_title() == "output gradients" and zero_ax.get_legend().get_title().get_text() == "layer, gradient"
    figure, _ = learn.plot_layer_stats("3", kind="grad")
    assert figure._suptitle.get_text().endswith(", gradient")
    assert Recording.load(tmp_path / "g.npz") == recording                 # gradients saved and read back too
    with pytest.raises(ValueError, match="kind: 'weights' is not a kind"):
        learn.color_dims(kind="weights")
    plt.close("all")


def test_asking_for_gradients_that_were_not_recorded():
    learn = make_learner(cbs=ActivationHistogram(layers=["0"]))
    learn.fit(1)
    with pytest.raises(ValueError, match="no gradients were recorded; record with grads=True"):
        learn.dead_chart(kind="grad")


def test_the_readme_loop_with_no_grad_validation_gives_both_kinds_the_same_columns(tmp_path):
    "15 training passes with backward and 2 without, per epoch: 17 columns of each kind, every figure draws."
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with colordim.record(model, layers=nn.ReLU, grads=True) as rec:
        for epoch in range(2):
            model.train()
            for _ in range(15):
                loss = nn.functional.cross_entropy(model(torch.randn(16, 4)), torch.randint(0, 3, (16,)))
                optimizer.zero_grad(); loss.backward(); optimizer.step()
            model.eval()
            with torch.no_grad():
                for _ in range(2):
                    model(torch.randn(16, 4))
            rec.epoch()
    recording = rec.recording
    assert len(recording) == len(recording.grads) == 34
    assert recording.grads.phase.tolist() == recording.phase.tolist() == (["train"] * 15 + ["valid"] * 2) * 2
    assert recording.grads.numel["1"].tolist() == ([16 * 8] * 15 + [0] * 2) * 2
    for kind in ("activation", "grad"):
        assert colordim.color_dim(recording, 0, kind=kind).get_images()[0].get_array().shape[1] == 30  # train
        colordim.color_dims(recording, kind=kind)
    recording.to_html(tmp_path / "run.html")
    assert (tmp_path / "run.html").stat().st_size > 10_000
    plt.close("all")
