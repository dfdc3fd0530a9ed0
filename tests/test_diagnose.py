"""colordim.diagnose: each finding on a small recording with a known answer, the demo's good and bad runs."""
import math

import pytest
import torch
from torch import nn

from colordim import Recording, diagnose
from colordim.engine.recorder import HistogramRecorder


def recorded(epochs, **options):
    "A Recording of layer 'x' from `epochs`: a list (per epoch) of lists of its outputs (training batches)."
    layer = nn.Identity()
    with HistogramRecorder({"x": layer}, **options) as engine:
        for epoch, outputs in enumerate(epochs):
            for iteration, output in enumerate(outputs):
                engine.begin_column("train", epoch=epoch, iteration=iteration)
                layer(output)
                engine.end_column()
    return engine.recording


def relu_batches(count, dead_channels=(), channels=8, seed=0):
    "ReLU-like (batch 16, channels, 4, 4) outputs; `dead_channels` output 0 everywhere."
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(count):
        values = torch.randn(16, channels, 4, 4, generator=generator).relu()
        values[:, list(dead_channels)] = 0
        batches.append(values)
    return batches


def checks(report, layer="x"):
    return [finding.check for finding in report.findings_for(layer)]


def test_dead_channels_over_the_last_tenth_are_found_with_their_share():
    # 20 batches: the last 2 (a tenth) have 6 of 8 channels dead, the first 18 none
    recording = recorded([relu_batches(18) + relu_batches(2, dead_channels=range(6))])
    report = diagnose(recording)
    assert report.rows[0]["dead"] == 0.75 and checks(report) == ["dead"]
    finding = report.findings[0]
    assert (finding.layer, finding.value, finding.threshold) == ("x", 0.75, 0.05)
    assert str(finding) == ("`x`: 75% of channels output nothing over the last 10% of training batches "
                            "(healthy: below 5%); lower the learning rate or add normalisation")
    assert diagnose(recording, tail=0.05).rows[0]["dead"] == 0.75      # the last batch alone
    assert diagnose(recording, tail=0.5).rows[0]["dead"] == 0.75 * 2 / 10
    assert diagnose(recording, dead=0.8).findings == []                 # the threshold is an argument


def test_a_healthy_layer_has_no_finding():
    report = diagnose(recorded([relu_batches(10), relu_batches(10, seed=1)]))
    assert report.healthy and report.findings == []
    row = report.rows[0]
    assert row["dead"] == 0 and row["below"] == row["above"] == 0 and row["nan_batches"] == 0
    assert 0.5 < row["near_zero"] < 0.6          # ReLU of a normal: half zeros, a little more near them
    assert "Findings: none" in str(report)


def test_dead_units_only_count_for_layers_that_never_go_negative():
    "A signed output with a unit <= 0 all batch is not 'dead' (a logit can be negative); ReLU-like ones are."
    signed = [torch.cat([torch.randn(16, 4), -torch.rand(16, 4) - 0.1], 1) for _ in range(10)]
    report = diagnose(recorded([signed]))
    assert report.rows[0]["dead"] == 0.5 and not report.rows[0]["relu_like"] and report.findings == []
    assert str(report).splitlines()[4].split()[3] == "-"   # the table shows no dead share for it, as the chart


def test_values_beyond_the_range_are_counted_and_found():
    # 100 values a batch, 12 above 10 and 3 below -10
    batch = torch.cat([torch.full((12,), 50.0), torch.full((3,), -20.0), torch.linspace(-5, 5, 85)])
    report = diagnose(recorded([[batch] * 5], range=(-10, 10)))
    assert report.rows[0]["above"] == pytest.approx(0.12) and report.rows[0]["below"] == pytest.approx(0.03)
    above, below = report.findings_for("x")[1], report.findings_for("x")[0]
    assert (below.check, above.check) == ("below", "above")
    assert above.message.startswith("12% of values above 10, the top of `range`")
    assert below.message.startswith("3.0% of values below -10, the bottom of `range`")
    assert 'use `range="auto"`' in above.advice
    assert diagnose(recorded([[batch] * 5], range=(-100, 100))).findings == []


def test_nan_and_inf_name_the_first_batch():
    clean = [torch.randn(4, 3) for _ in range(40)]
    with_nan = [b.clone() for b in clean]
    with_nan[31][0, 0] = math.nan
    with_nan[35][1, 1] = math.nan
    with_inf = [b.clone() for b in clean]
    with_inf[5][2, 2] = math.inf
    report = diagnose(recorded([clean, clean, with_nan, with_inf]))
    nan, inf = report.findings[:2]
    assert (nan.check, nan.value) == ("nan", 2) and "first at epoch 2, train batch 31" in nan.message
    assert (inf.check, inf.value) == ("inf", 1) and "first at epoch 3, train batch 5" in inf.message
    assert report.rows[0]["nan_batches"] == 2 and report.rows[0]["inf_batches"] == 1


def test_jitter_is_the_spread_of_batch_to_batch_changes_of_log_std():
    base = torch.randn(64, 8, generator=torch.Generator().manual_seed(0))
    base = (base - base.mean()) / base.std()
    # std alternates 1, e, 1, e ... over 12 batches: log(std) changes by +1, -1, ... (6 up, 5 down), whose
    # standard deviation is sqrt(1 - (1/11)^2)
    jumpy = [base * (math.e if i % 2 else 1.0) for i in range(12)]
    steady = [base * (1 + 0.001 * i) for i in range(12)]
    report = diagnose(recorded([steady, jumpy], range=(-100, 100)))
    assert report.rows[0]["jitter"] == pytest.approx(math.sqrt(1 - 1 / 121), rel=1e-5)   # the last epoch only
    assert checks(report) == ["jitter"] and report.findings[0].threshold == 0.25
    assert diagnose(recorded([jumpy, steady], range=(-100, 100))).findings == []


def test_near_zero_outputs_are_found_when_not_already_dead():
    tiny = [torch.randn(16, 8) * 0.001 for _ in range(10)]                # signed: not ReLU-like
    report = diagnose(recorded([tiny]))
    assert checks(report) == ["near_zero"] and report.rows[0]["near_zero"] == 1.0
    assert "100% of values within +-0.05 of zero" in report.findings[0].message


def test_bad_arguments_name_the_problem():
    recording = recorded([relu_batches(3)])
    with pytest.raises(ValueError, match=r"tail: 0 is not a threshold; use a share in \(0, 1\]"):
        diagnose(recording, tail=0)
    with pytest.raises(ValueError, match="dead: -1 is not a threshold; use a number >= 0"):
        diagnose(recording, dead=-1)
    with pytest.raises(TypeError, match="recording: expected a colordim Recording, got dict"):
        diagnose({})


def test_a_saved_run_gets_the_same_verdict(tmp_path):
    recording = recorded([relu_batches(18) + relu_batches(2, dead_channels=range(6))])
    recording.save(tmp_path / "run.npz")
    again = diagnose(Recording.load(tmp_path / "run.npz"))
    assert [str(f) for f in again.findings] == [str(f) for f in diagnose(recording).findings]
    assert str(again) == str(diagnose(recording))


def test_the_report_prints_a_table_and_shows_as_html():
    recording = recorded([relu_batches(18) + relu_batches(2, dead_channels=range(6))])
    report = diagnose(recording)
    lines = str(report).splitlines()
    assert lines[:2] == ["1 of 1 layer unhealthy: x has dead units", ""]  # the verdict first
    assert lines[2].split()[:5] == ["layer", "type", "shape", "dead", "units"]
    assert lines[4].split()[:4] == ["x", "Identity", "16x8x4x4", "75.0%"]
    page = report._repr_html_()
    assert page.count("<tr") == 2 and "<code>x</code>: 75% of channels" in page   # header + one layer
    assert '<tr class="finding"' in page and page.count('class="over"') == 1  # the dead-units cell


def test_stats_off_leaves_the_stat_figures_blank_and_finds_the_rest():
    batch = torch.cat([torch.full((20,), 50.0), torch.linspace(-5, 5, 80)])
    report = diagnose(recorded([[batch] * 4], stats=False))
    row = report.rows[0]
    assert math.isnan(row["dead"]) and math.isnan(row["jitter"]) and checks(report) == ["above"]
    assert str(report).splitlines()[4].split() == ["x", "Identity", "100", "-", "-", "0.0%", "20.0%", "0", "0", "-"]


def test_the_demo_runs_collapsed_and_healthy():
    "The seed CNN on MNIST digits, one epoch: collapsed without batch norm at lr 0.3, healthy with it."
    from colordim.demos.cnn import train
    collapsed = train(False, epochs=1, lr=0.3).activation_report()
    relu_blocks = ["0", "1", "2", "3"]           # block 4 is the logits (no ReLU)
    assert all(collapsed.findings_for(block) for block in relu_blocks)
    assert [c for b in ["1", "2", "3"] for c in checks(collapsed, b)] == ["dead"] * 3
    assert [row["dead"] for row in collapsed.rows[1:4]] == [1.0, 1.0, 1.0]
    assert checks(collapsed, "0") == ["above"]     # block 0 is alive but 10% of it is beyond the range
    healthy = train(True, epochs=1, lr=6e-2).activation_report()
    assert not [f for f in healthy.findings if f.check in ("dead", "near_zero", "nan", "inf", "jitter")]
    assert [row["dead"] for row in healthy.rows] == [0.0] * 5


def test_a_layer_that_never_ran_and_an_empty_recording():
    model, unused = nn.Sequential(nn.Linear(3, 4), nn.ReLU()), nn.Linear(2, 2)
    engine = HistogramRecorder({"0": model[0], "unused": unused})
    assert str(diagnose(engine.recording)).endswith("Findings: none, nothing was recorded yet.")
    with engine:
        for iteration in range(3):
            engine.begin_column("valid", iteration=iteration)   # validation only: read as it is
            model(torch.randn(5, 3))
            engine.end_column()
    report = diagnose(engine.recording)
    assert [(f.layer, f.check) for f in report.findings] == [("unused", "silent")]
    assert "never ran in a recorded batch" in report.findings[0].message
    assert report.rows[0]["near_zero"] >= 0 and math.isnan(report.rows[1]["dead"])


def test_where_the_first_nan_came_out_is_the_first_layer_in_the_model_to_output_one():
    import colordim

    class Log(nn.Module):
        def forward(self, x):
            return torch.log(x)

    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), Log(), nn.Linear(3, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.eye(3)), model[0].bias.zero_()
    batches = [torch.rand(4, 3) + 0.5 for _ in range(4)]
    batches[2][1, 0] = -1.0               # ReLU -> 0, log(0) = -inf, then NaN... in the last layer
    with colordim.record(model, layers="*", range="auto") as rec:
        for batch in batches:
            model(batch)
    report = diagnose(rec.recording)
    origin = report.findings[0]
    assert origin.check == "origin" and origin.layer == "2"
    assert "at epoch 0, train batch 2" in origin.message and "(1 later layer did too)" in origin.message
    assert [f.check for f in report.findings_for("3")][:1] in (["nan"], ["inf"])
    assert not [f for f in diagnose(recorded([[torch.randn(4, 3)] * 5])).findings if f.check == "origin"]
