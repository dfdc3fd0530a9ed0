"""The findings large-model research measures (`colordim.health.scale_checks`): each on a small recording with a
known answer, then on the GPT demo's stable and spiking runs."""
import numpy as np
import pytest
import torch
from torch import nn

from colordim import diagnose
from colordim.engine.recorder import HistogramRecorder
from colordim.health.scale_checks import median_size, stacks

SCALE_CHECKS = {"massive", "outliers", "growth", "blowup", "origin"}


def recorded(outputs: dict, **options):
    "A Recording of layers {name: [one output per training batch]}, all layers in each batch."
    layers = {name: nn.Identity() for name in outputs}
    with HistogramRecorder(layers, **options) as engine:
        for batch in range(len(next(iter(outputs.values())))):
            engine.begin_column("train", iteration=batch)
            for name, layer in layers.items():
                layer(outputs[name][batch])
            engine.end_column()
    return engine.recording


def normal(count, size=4000, scale=1.0, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(size, generator=generator) * scale for _ in range(count)]


def found(report, check):
    return [finding for finding in report.findings if finding.check == check]


def test_massive_activations_name_their_first_batch_and_ratio_to_the_median():
    batches = normal(20)
    batches[12][:3] = 5000.0  # three huge values; the median |x| stays ~0.67
    recording = recorded({"x": batches}, range="auto", scale="symlog")
    medians = median_size(recording, "x")
    assert ((medians >= 0.6745) & (medians <= 0.9)).all()  # an upper bound from the bin the median is in
    (finding,) = found(diagnose(recording), "massive")
    assert finding.layer == "x" and finding.value > 5000 / 0.9 - 1 and "first at epoch 0, train batch 12" in finding.message
    assert "values up to 5e+03" in finding.message
    assert not found(diagnose(recording, massive=10_000), "massive")       # the thresholds are arguments
    assert not found(diagnose(recording, massive_ratio=10_000), "massive")
    batches[12][:3] = 150.0  # past 100, but only ~200 times the median: not massive
    assert not found(diagnose(recorded({"x": batches}, range="auto", scale="symlog")), "massive")


def test_heavy_tails_are_the_share_beyond_six_standard_deviations():
    batches = normal(20)
    for batch in batches:
        batch[:40] = 20.0 * torch.tensor([1.0, -1.0]).repeat(20)  # 1% at +-20; the std is ~2.2, 6 std ~13.4
    (finding,) = found(diagnose(recorded({"x": batches}, range="auto")), "outliers")
    assert finding.value == pytest.approx(0.01) and "1.0% of values lie beyond 6 standard deviations" in finding.message
    assert "first above at epoch 0, train batch 0" in finding.message
    assert not found(diagnose(recorded({"x": normal(20)}, range="auto")), "outliers")  # a normal layer: none
    assert not found(diagnose(recorded({"x": batches}, range="auto"), outliers=0.02), "outliers")


def test_growth_with_depth_compares_each_block_of_a_stack_with_the_first():
    names = {"blocks.0": 1.0, "blocks.1": 3.0, "blocks.2": 20.0, "blocks.3": 40.0, "blocks.0.mlp": 1.0,
             "blocks.1.mlp": 50.0, "head": 100.0}
    outputs = {name: normal(20, scale=scale, seed=index) for index, (name, scale) in enumerate(names.items())}
    outputs["blocks.1.mlp"] = [batch.reshape(40, 100) for batch in outputs["blocks.1.mlp"]]  # another shape
    recording = recorded(outputs, range="auto")
    assert stacks(recording) == [["blocks.0", "blocks.1", "blocks.2", "blocks.3"]]  # the MLPs' shapes differ
    (finding,) = found(diagnose(recording), "growth")  # the first block past 10x says where; 3 follows from it
    assert finding.layer == "blocks.2" and finding.value == pytest.approx(20, rel=0.05)
    assert f"RMS {finding.value:.1f} times `blocks.0`'s over the last 10% of training batches" in finding.message
    assert not found(diagnose(recording, growth=50), "growth")


def test_a_blow_up_names_the_first_batch_and_the_first_layer_then():
    a, b = normal(40, seed=1), normal(40, seed=2)
    for batch in range(30, 40):
        b[batch] = b[batch] * 1000  # b blows up at batch 30, a two batches later
    for batch in range(32, 40):
        a[batch] = a[batch] * 1000
    report = diagnose(recorded({"a": a, "b": b}))
    (finding,) = found(report, "blowup")
    assert finding.layer == "b" and "at epoch 0, train batch 30" in finding.message
    assert "(1 other layer did later or then)" in finding.message and finding.value == pytest.approx(1000, rel=0.1)
    for batch in range(30, 32):
        a[batch] = a[batch] * 1000  # both at batch 30: the first in the model's order
    assert found(diagnose(recorded({"a": a, "b": b})), "blowup")[0].layer == "a"
    assert not found(diagnose(recorded({"a": a, "b": b}), blowup=2000), "blowup")
    assert not found(diagnose(recorded({"a": normal(40), "b": normal(40, scale=5)})), "blowup")


@pytest.fixture(scope="module")
def gpt_runs():
    "The GPT demo's two runs, shortened: 150 steps each, the spike from step 60 to 75."
    from colordim.demos.gpt import train_gpt
    return {label: train_gpt(spike=spike, steps=150) for label, spike in (("stable", None), ("spiking", 0.3))}


def test_the_gpt_demo_learns_and_its_stable_run_has_no_scale_finding(gpt_runs):
    _, recording, losses = gpt_runs["stable"]
    assert np.mean(losses[:5]) > 4 and np.mean(losses[-10:]) < 2.8  # 96 characters: ln 96 = 4.6 at the start
    assert recording.layer_names[:3] == ["blocks.0", "blocks.0.attn", "blocks.0.mlp"] and len(recording) == 150
    report = diagnose(recording)
    assert not [finding for finding in report.findings if finding.check in SCALE_CHECKS], report


def test_diagnose_names_where_the_spiking_run_went_wrong(gpt_runs):
    _, recording, losses = gpt_runs["spiking"]
    assert np.mean(losses[-10:]) > 2 * np.mean(gpt_runs["stable"][2][-10:])  # it diverged
    (finding,) = found(diagnose(recording), "blowup")
    batch = int(finding.message.split("train batch ")[1].split(" ")[0])
    assert 60 <= batch <= 66 and finding.layer.startswith("blocks.")  # within a few steps of the spike
