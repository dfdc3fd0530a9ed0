"""Real architectures and training calls: vision_learner, an LSTM, bf16 autocast, two callbacks."""
import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset
from fastai.callback.core import Callback
from fastai.data.core import DataLoaders
from fastai.data.load import DataLoader
from fastai.learner import Learner

import colordim
from colordim import ActivationHistogram
from conftest import make_learner, taps


def loaders(x, y, split, bs=16):
    return DataLoaders(DataLoader(TensorDataset(x[:split], y[:split]), bs=bs, shuffle=True),
                       DataLoader(TensorDataset(x[split:], y[split:]), bs=bs))


def test_vision_learner_resnet18_by_name_pattern_and_type_through_fine_tune():
    import fastai.callback.schedule  # noqa: F401  (fine_tune)
    from fastai.vision.learner import vision_learner
    from torchvision.models import resnet18
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 3, 32, 32, generator=generator), torch.randint(0, 3, (64,), generator=generator)
    callback = ActivationHistogram(layers=["0.4.*.conv1", nn.ReLU, "1.8"], bins=30)
    learn = vision_learner(loaders(x, y, 48), resnet18, pretrained=False, n_out=3,
                           loss_func=nn.functional.cross_entropy, cbs=callback)
    learn.fine_tune(1, freeze_epochs=1)                       # two fits: frozen, then unfrozen
    recording = callback.recording
    assert recording.layer_names[:4] == ["0.2", "0.4.0.conv1", "0.4.0.relu", "0.4.0.relu#2"]
    assert recording.layer_names[-1] == "1.8" and recording.shapes["1.8"] == (16, 3)
    assert recording.fit.tolist() == [0] * 4 + [1] * 4 and recording.phase.tolist() == (["train"] * 3 + ["valid"]) * 2
    # a BasicBlock runs its one ReLU twice per forward: after bn1, then after the residual sum
    assert recording.numel["0.4.0.relu"][0] == recording.numel["0.4.0.relu#2"][0] == 16 * 64 * 8 * 8
    assert recording.label("0.4.0.relu#2") == "0.4.0.relu#2 ReLU"
    assert all(not taps(module) for module in learn.model.modules())


def test_an_lstm_model_records_each_tensor_of_its_tuple_output():
    class Tagger(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed, self.rnn, self.head = nn.Embedding(20, 6), nn.LSTM(6, 8, batch_first=True), nn.Linear(8, 3)
        def forward(self, tokens):
            output, _ = self.rnn(self.embed(tokens))
            return self.head(output[:, -1])
    tokens, labels = torch.randint(0, 20, (64, 7)), torch.randint(0, 3, (64,))
    learn = Learner(loaders(tokens, labels, 48), Tagger(), loss_func=nn.functional.cross_entropy,
                    cbs=ActivationHistogram(grads=True))
    learn.fit(1)
    recording = learn.activation_histogram.recording
    assert recording.layer_names == ["embed", "rnn[0]", "rnn[1][0]", "rnn[1][1]", "head"]
    assert recording.numel["rnn[0]"].tolist() == [16 * 7 * 8] * 4
    assert recording.grads.numel["rnn[0]"].tolist() == [16 * 7 * 8] * 3 + [0]   # valid: no backward
    assert learn.color_dim("rnn[1][0]").get_title() == "rnn[1][0] LSTM  (1, 16, 8)"


def test_bf16_autocast_outputs_are_counted_exactly():
    class Autocast(Callback):
        def before_batch(self):
            self.context = torch.autocast("cpu", dtype=torch.bfloat16)
            self.context.__enter__()
        def after_loss(self):
            self.context.__exit__(None, None, None)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 3))
    captured = []
    model[1].register_forward_hook(lambda m, i, o: captured.append(o.detach().clone()))
    learn = make_learner(cbs=[ActivationHistogram(layers=[1], bins=16, range=(-2, 2), valid=False), Autocast()],
                         model=model)
    learn.fit(1)
    recording = learn.activation_histogram.recording
    assert captured[0].dtype == torch.bfloat16
    for column, output in enumerate(captured[:len(recording)]):      # the training batches come first
        expected, _ = np.histogram(output.float().numpy(), bins=16, range=(-2, 2))
        assert recording.hist["1"][column].tolist() == expected.tolist()


def test_two_callbacks_with_different_layers_on_one_learner():
    first, second = ActivationHistogram(), ActivationHistogram(layers=nn.ReLU, bins=20)
    learn = make_learner(cbs=[first, second])
    learn.fit(1)
    assert first.recording.layer_names == ["0.0", "1.0", "1.1", "3"]
    assert second.recording.layer_names == ["0.1", "1.2"] and second.recording.hist[0].shape == (9, 20)
    assert learn.color_dim("1.2").get_title().startswith("1.2")          # found in the second callback
    assert learn.color_dim("1.0").get_title().startswith("1.0")


def test_a_layer_that_gives_no_tensor_stops_the_fit_before_any_step():
    class Describe(nn.Module):
        def forward(self, x): return {"text": "not a tensor"}
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body, self.describe = nn.Sequential(nn.Flatten(), nn.Linear(64, 3)), Describe()
        def forward(self, x):
            self.describe(x)
            return self.body(x)
    model = Net()
    weights = model.body[1].weight.detach().clone()
    learn = make_learner(cbs=ActivationHistogram(layers=["describe", "body.1"]), model=model)
    import pytest
    with pytest.raises(TypeError, match=r"layers: \"describe\['text'\]\" cannot be recorded: its output is a str"):
        learn.fit(1)
    assert torch.equal(model.body[1].weight, weights)                 # no optimizer step was taken
    assert all(not taps(module) for module in model.modules())


def test_nan_and_inf_activations_never_crash_a_fit_and_are_counted():
    class Blowup(nn.Module):
        def forward(self, x):
            out = x.clone()
            out[0, 0] = float("nan")
            out[1, 0] = float("inf")
            return out
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 3), Blowup())
    learn = make_learner(cbs=ActivationHistogram(layers=[2], valid=False), model=model)
    learn.fit(1)
    recording = learn.activation_histogram.recording
    # batch 0: the NaN and the inf put there; later the NaN loss has spread into the weights, all counted
    assert recording.nan["2"][0] == 1 and recording.overflow["2"][0] == 1 and recording.nan["2"].min() >= 1
    assert (recording.numel["2"] == 8 * 3).all()
    ax = learn.color_dim("2")
    assert [line.get_xdata().tolist() for line in ax.lines if line.get_label() == "NaN"] == [[0, 1, 2, 3, 4, 5]]


def test_torch_compile_sees_hooks_attached_before_its_first_call():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    compiled = torch.compile(model, backend="eager")
    with colordim.record(model, layers=[0, 1]) as rec:
        for _ in range(2):
            compiled(torch.randn(5, 3))
    assert rec.recording.numel["0"].tolist() == [20, 20]


def test_tabular_learner_records_and_exports(tmp_path):
    import pandas as pd
    from fastai.learner import load_learner
    from fastai.losses import CrossEntropyLossFlat
    from fastai.tabular.all import Categorify, CategoryBlock, FillMissing, Normalize, TabularDataLoaders
    from fastai.tabular.learner import tabular_learner
    generator = np.random.default_rng(0)
    frame = pd.DataFrame({"a": generator.normal(size=200), "b": generator.normal(size=200),
                          "c": generator.choice(["x", "y", "z"], 200)})
    frame["y"] = (frame.a + frame.b > 0).astype(int)
    dls = TabularDataLoaders.from_df(frame, procs=[Categorify, FillMissing, Normalize], cat_names=["c"],
                                     cont_names=["a", "b"], y_names="y", y_block=CategoryBlock(), bs=32,
                                     valid_idx=list(range(150, 200)), path=tmp_path)
    learn = tabular_learner(dls, layers=[16, 8], n_out=2, loss_func=CrossEntropyLossFlat(),
                            cbs=ActivationHistogram(bins=12))
    learn.fit(1)
    recording = learn.activation_histogram.recording
    assert recording.layer_names == ["embeds.0", "bn_cont", "layers.0.0", "layers.0.2", "layers.1.0",
                                     "layers.1.2", "layers.2.0"]
    assert recording.numel["layers.0.0"].tolist() == [32 * 16] * 4 + [32 * 16, 18 * 16]
    learn.export(tmp_path / "tabular.pkl")
    loaded = load_learner(tmp_path / "tabular.pkl")
    assert loaded.activation_histogram.histogram_recorder is None and loaded.activation_histogram.bins == 12


def test_the_callback_records_a_container_with_a_part_that_is_no_tensor():
    "Hugging Face's LlamaModel returns {'last_hidden_state': tensor, 'past_key_values': DynamicCache}."
    import pytest
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                      num_key_value_heads=1, vocab_size=50, max_position_embeddings=16, use_cache=True)

    class Classifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.body, self.head = transformers.LlamaModel(config), nn.Linear(16, 3)
        def forward(self, tokens):
            return self.head(self.body(tokens).last_hidden_state[:, -1])
    torch.manual_seed(0)
    tokens, labels = torch.randint(0, 50, (64, 6)), torch.randint(0, 3, (64,))
    learn = Learner(loaders(tokens, labels, 48), Classifier(), loss_func=nn.functional.cross_entropy,
                    cbs=ActivationHistogram(layers=["body", "head"]))
    learn.fit(1)
    recording = learn.activation_histogram.recording
    assert recording.layer_names == ["body['last_hidden_state']", "body['cache']", "head"]
    assert recording.numel["body['last_hidden_state']"].tolist() == [16 * 6 * 16] * 4   # 3 training, 1 valid
    assert recording.numel["body['cache']"].tolist() == [0] * 4                          # an empty panel
    assert recording.skipped == {"body['cache']": "output is a DynamicCache, not a tensor"}
    assert all(not taps(module) for module in learn.model.modules())
