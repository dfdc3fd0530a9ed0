"""Dead units where the units are: channels (dim 1) of convolutions, features (the last dim) of sequences."""
import numpy as np
import pytest
import torch
from torch import nn

import colordim
from colordim.engine.units import CHANNELS, FEATURES, guess_units, resolve_units


def mlp_with_dead_features(dead=(2, 7, 11)):
    "Linear(8, 16) + ReLU whose features `dead` never fire (bias -100)."
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU())
    with torch.no_grad():
        model[0].bias[list(dead)] = -100.0
    return model


def test_a_sequence_mlps_dead_features_are_found(cpu_path):
    "(4, 10, 8) input: dim 1 is the tokens; the units are the 16 features of the last dim, 3 of them dead."
    model = mlp_with_dead_features()
    with torch.no_grad(), colordim.record(model, layers=[0, 1]) as rec:
        for _ in range(3):
            model(torch.randn(4, 10, 8))
    recording = rec.recording
    assert recording.units == {"0": FEATURES, "1": FEATURES}
    assert recording.channels["1"].tolist() == [16] * 3
    assert recording.dead_rate["1"].tolist() == [3 / 16] * 3
    report = colordim.diagnose(recording)
    assert [finding.check for finding in report.findings_for("1")] == ["dead"]
    assert "19% of features output nothing" in str(report.findings_for("1")[0])


def test_a_convolutions_dead_channels_are_counted_as_before(cpu_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU())
    with torch.no_grad():
        model[0].bias[:2] = -100.0
    with torch.no_grad(), colordim.record(model) as rec:   # layers=None: the conv; then the ReLU by name
        model(torch.randn(4, 3, 10, 10))
    with torch.no_grad(), colordim.record(model, layers=[1]) as relu:
        model(torch.randn(4, 3, 10, 10))
    assert rec.recording.units == {"0": CHANNELS} and relu.recording.units == {"1": CHANNELS}
    assert relu.recording.channels["1"].tolist() == [8] and relu.recording.dead_rate["1"].tolist() == [2 / 8]


def test_padded_and_nested_outputs_agree():
    "The same sequences as a jagged NestedTensor (recorded as (tokens, features)) and padded with zeros."
    model = mlp_with_dead_features()
    torch.manual_seed(1)
    sequences = [torch.randn(length, 8) for length in (3, 7, 5)]
    nested = torch.nested.nested_tensor(sequences, layout=torch.jagged)
    padded = torch.nn.utils.rnn.pad_sequence(sequences, batch_first=True)
    rates = []
    for inputs in (nested, padded):
        with torch.no_grad(), colordim.record(model, layers=[1]) as rec:
            model(inputs)
        rates.append(rec.recording.dead_rate["1"].tolist())
    assert rates == [[3 / 16], [3 / 16]]


def test_a_gpt_blocks_mlp_with_dead_neurons_gets_the_finding():
    "A GPT-2 block from a config, ReLU MLP: 32 of its 128 hidden neurons made dead on purpose."
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(n_layer=1, n_embd=32, n_head=4, n_positions=16, vocab_size=50,
                                     activation_function="relu", resid_pdrop=0, embd_pdrop=0, attn_pdrop=0)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        model.transformer.h[0].mlp.c_fc.bias[:32] = -100.0
    act = "transformer.h.0.mlp.act"
    with torch.no_grad(), colordim.record(model, layers=[act, "transformer.h.0.attn", "transformer.h.0"]) as rec:
        for _ in range(3):
            model(input_ids=torch.randint(0, 50, (2, 16)))
    recording = rec.recording
    assert recording.units[act] == FEATURES and recording.channels[act].tolist() == [128] * 3
    assert recording.dead_rate[act].tolist() == [0.25] * 3
    assert "dead" in [finding.check for finding in colordim.diagnose(recording).findings_for(act)]
    assert {recording.units[name] for name in recording.layer_names} == {FEATURES}


def test_the_guess_on_real_models():
    from torchvision.models import resnet18
    model = resnet18()
    names = dict(model.named_modules())
    guessed = guess_units(model, {name: names[name] for name in
                                  ("conv1", "relu", "layer1.0", "layer1.0.relu", "avgpool", "fc", "layer4")})
    assert guessed == {"conv1": CHANNELS, "relu": CHANNELS, "layer1.0": CHANNELS, "layer1.0.relu": CHANNELS,
                       "avgpool": CHANNELS, "fc": FEATURES, "layer4": CHANNELS}
    layer = nn.TransformerEncoderLayer(16, 2, 32, activation=nn.ReLU(), batch_first=True)
    encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
    names = dict(encoder.named_modules())
    assert set(guess_units(encoder, {name: names[name] for name in ("layers.0.activation", "layers.0.dropout",
                                                                     "layers.1", "layers.0.linear1")}).values()) \
        == {FEATURES}
    from torchvision.models import convnext_tiny
    model = convnext_tiny()
    names = dict(model.named_modules())
    assert guess_units(model, {name: names[name] for name in ("features.1.0", "features.1.0.block.4",
                                                              "features.1.0.block.2", "features.0")}) == {
        "features.1.0": CHANNELS, "features.1.0.block.4": FEATURES,   # a block, its GELU between Linears
        "features.1.0.block.2": FEATURES, "features.0": CHANNELS}     # its LayerNorm, in (N, H, W, C); the stem
    # a user's own block: the units of its last known layer
    block = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), nn.Tanh())
    names = dict(block.named_modules())
    assert guess_units(block, {"1": names["1"], "2": names["2"], "1.0": names["1.0"]}) == {
        "1": FEATURES, "2": FEATURES, "1.0": CHANNELS}


def test_the_user_says_where_the_units_are():
    model = mlp_with_dead_features()
    x = torch.randn(4, 10, 8)
    for units, expected in (("channels", 0.0), ({"1": "channels"}, 0.0), ({"[01]": "features"}, 3 / 16)):
        with torch.no_grad(), colordim.record(model, layers=[0, 1], units=units) as rec:
            model(x)
        assert rec.recording.dead_rate["1"].tolist() == [expected]  # channels: dim 1, the 10 tokens
        assert rec.recording.channels["1"].tolist() == [10 if expected == 0 else 16]
    with pytest.raises(ValueError, match=r"units: expected 'channels' \(units in dim 1, as a convolution's\) or "
                                         r"'features' \(units in the last dim, as a Linear's\), got 'last'"):
        colordim.record(model, units="last").__enter__()
    with pytest.raises(ValueError, match=r"units: 'fc' names no recorded layer; recorded layers: \['0'\]"):
        resolve_units(model, {"0": model[0]}, {"fc": "features"})
    with pytest.raises(ValueError, match=r"units: expected 'auto', 'channels', 'features' or a dict"):
        colordim.ActivationHistogram(units=2)


def test_the_unit_rule_is_saved_and_older_runs_read_as_channels(tmp_path):
    model = mlp_with_dead_features()
    with torch.no_grad(), colordim.record(model, layers=[1]) as rec:
        model(torch.randn(2, 5, 8))
    rec.recording.save(tmp_path / "run.npz")
    assert colordim.Recording.load(tmp_path / "run.npz").units == {"1": FEATURES}
    old = colordim.Recording(counts={"x": np.zeros((1, 4), np.int64)}, numel={"x": np.zeros(1, np.int64)},
                             edges={"x": np.linspace(0, 1, 3)}, shapes={"x": (2, 3)}, fit=np.zeros(1, np.int64),
                             epoch=np.zeros(1, np.int64), phase=np.array(["train"]), iteration=np.zeros(1, np.int64))
    assert old.units == {"x": CHANNELS}
