"""Real models colordim did not write: recording changes nothing they compute, every value they
output is counted once, and nothing of colordim is left on them afterwards."""
import copy

import pytest
import torch
from torch import nn

import colordim
from conftest import taps


def leaves(output) -> list:
    "The tensors in an output as colordim sees them: a container's parts, a NestedTensor's real values."
    if isinstance(output, torch.Tensor):
        return [torch.cat([part.reshape(-1) for part in output.unbind()]) if output.is_nested else output]
    if isinstance(output, dict):
        output = list(output.values())
    if isinstance(output, (tuple, list)):
        return [leaf for value in output for leaf in leaves(value)]
    return []


def run(model, inputs, loss, train: bool):
    "One forward (and backward in training) from a fixed seed: the output and each parameter's gradient."
    torch.manual_seed(1)  # dropout draws the same masks in both runs
    model.train(train)
    model.zero_grad(set_to_none=True)
    with torch.set_grad_enabled(train):
        output = model(*inputs)
        if train:
            loss(output).backward()
    grads = {name: None if p.grad is None else p.grad.clone() for name, p in model.named_parameters()}
    return output, grads


def check_faithful(model, inputs, loss, layers=None, train=True, atol=0.0):
    "Recorded or not, the same output and gradients; every value of every recorded layer counted; no trace left."
    plain = copy.deepcopy(model)
    expected, expected_grads = run(plain, inputs, loss, train)
    values = {}  # recorded module name -> real values it output, counted by a hook of our own
    modules = colordim.find_layers(model, layers)
    own = [module.register_forward_hook(
        lambda m, i, o, name=name: values.__setitem__(name, values.get(name, 0) + sum(t.numel() for t in leaves(o)
                                                                                      if t.is_floating_point())))
        for name, module in modules.items()]
    with colordim.record(model, layers=layers, bins=20, range="auto") as rec:
        output, grads = run(model, inputs, loss, train)
    for handle in own:
        handle.remove()
    for got, want in zip(leaves(output), leaves(expected)):
        assert torch.allclose(got, want, atol=atol, rtol=0) if atol else torch.equal(got, want)
    assert grads.keys() == expected_grads.keys()
    for name, grad in grads.items():
        assert (grad is None) == (expected_grads[name] is None), name
        assert grad is None or torch.equal(grad, expected_grads[name]), name
    recording = rec.recording
    assert len(recording) == 1
    for module_name, count in values.items():
        names = [name for name in recording.layer_names if name == module_name or name.startswith((module_name + "[", module_name + "#"))]
        assert names, module_name
        assert sum(int(recording.numel[name][0]) for name in names) == count, module_name
    for name in recording.layer_names:
        counts = recording.counts[name][0]
        assert counts.sum() + recording.nan[name][0] == recording.numel[name][0], name  # in range + under + over + NaN
        assert recording.underflow[name][0] == recording.overflow[name][0] == 0, name  # the auto range holds it all
    assert all(not taps(module) for module in model.modules())
    assert all(not hasattr(module, attribute) for module in model.modules() for attribute in ("forward_hooked",))
    assert not any("colordim" in type(value).__module__ for module in model.modules()
                   for value in vars(module).values() if not isinstance(value, (dict, nn.Module, torch.Tensor)))
    return recording


def cross_entropy(output):
    logits = output if isinstance(output, torch.Tensor) else output[0]
    return logits.float().square().mean()


# --- torchvision (random weights, tiny inputs) ------------------------------------------------------
@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small", "efficientnet_b0", "squeezenet1_1"])
def test_torchvision_classifiers(name):
    import torchvision.models as models
    torch.manual_seed(0)
    model = getattr(models, name)(weights=None, num_classes=5)
    x = torch.randn(2, 3, 64, 64)
    recording = check_faithful(model, (x,), cross_entropy, layers="*")  # every module, blocks and leaves
    assert len(recording.layer_names) >= 20


def test_a_small_vision_transformer_in_train_and_eval():
    from torchvision.models import VisionTransformer
    torch.manual_seed(0)
    model = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64,
                              num_classes=5)
    x = torch.randn(3, 3, 32, 32)
    check_faithful(model, (x,), cross_entropy)
    recording = check_faithful(model, (x,), cross_entropy, layers="encoder.layers.*.self_attention", train=False,
                               atol=1e-5)  # eval: torch's fused attention path is off while hooked
    assert recording.numel["encoder.layers.encoder_layer_0.self_attention[0]"].tolist() == [3 * 17 * 32]


# --- nn.TransformerEncoder, with a padding mask (NestedTensors between layers in eval) --------------
class PaddedEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        layer = nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, batch_first=True, dropout=0.1)
        self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=True)
        self.head = nn.Linear(16, 3)

    def forward(self, x, padding):
        return self.head(self.encoder(x, src_key_padding_mask=padding))


@pytest.mark.parametrize("train", [True, False])
def test_a_transformer_encoder_with_a_padding_mask(train):
    torch.manual_seed(0)
    model = PaddedEncoder()
    x, padding = torch.randn(4, 6, 16), torch.zeros(4, 6, dtype=torch.bool)
    padding[1, 4:], padding[2, 2:] = True, True  # 24 - 6 = 18 real tokens
    recording = check_faithful(model, (x, padding), lambda out: out.square().mean(),
                               layers=["encoder.layers.0", "encoder.layers.1", "encoder.layers.*.linear1",
                                       "encoder.layers.*.norm2", "head"], train=train, atol=0 if train else 1e-5)
    tokens = 24 if train else 18  # eval passes NestedTensors between layers: padding is not recorded
    assert recording.numel["encoder.layers.1"].tolist() == [tokens * 16]
    assert recording.numel["encoder.layers.0.linear1"].tolist() == [tokens * 32]
    assert recording.numel["encoder.layers.1.linear1"].tolist() == [tokens * 32]
    assert recording.shapes["encoder.layers.1"] == ((tokens, 16) if not train else (4, 6, 16))


# --- Hugging Face transformers, built from configs in code (nothing downloaded) ---------------------
transformers = pytest.importorskip("transformers")


def hf_model(kind):
    torch.manual_seed(0)
    if kind == "gpt2":
        config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=101, n_positions=16, use_cache=False)
        return transformers.GPT2LMHeadModel(config), "transformer.h.*"
    if kind == "bert":
        config = transformers.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                         intermediate_size=64, vocab_size=101, max_position_embeddings=16, num_labels=3)
        return transformers.BertForSequenceClassification(config), "bert.encoder.layer.*"
    config = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                      num_key_value_heads=1, vocab_size=101, max_position_embeddings=16, use_cache=False)
    return transformers.LlamaForCausalLM(config), "model.layers.*"


@pytest.mark.parametrize("kind", ["gpt2", "bert", "llama"])
def test_hugging_face_models_from_configs(kind):
    model, blocks = hf_model(kind)
    tokens = torch.randint(0, 101, (2, 12), generator=torch.Generator().manual_seed(0))
    loss = lambda output: output.logits.square().mean()
    recording = check_faithful(model, (tokens,), loss)  # every leaf with parameters
    assert len(recording.layer_names) >= 10
    check_faithful(model, (tokens,), loss, layers=blocks)  # blocks that return tuples or tensors
    check_faithful(model, (tokens,), loss, layers=blocks, train=False)


def test_an_output_that_is_a_container_in_training_and_a_tensor_in_eval_keeps_its_eval_values(tmp_path):
    "torchvision's googlenet(aux_logits=True): GoogLeNetOutputs(logits, aux2, aux1) in training, logits in eval."
    from torchvision.models import googlenet
    torch.manual_seed(0)
    model = googlenet(weights=None, aux_logits=True, init_weights=True, num_classes=5)
    x = torch.randn(2, 3, 64, 64)
    with colordim.record(model, layers=[model, "fc"]) as rec:
        model.train()
        model(x)
        model.eval()
        with torch.no_grad():
            logits = model(x)
    recording = rec.recording
    assert recording.layer_names == ["model[0]", "model[1]", "model[2]", "fc"]
    assert recording.numel["model[0]"].tolist() == [10, 10]   # the eval tensor is the logits: part 0
    assert recording.numel["model[1]"].tolist() == [10, 0] and recording.numel["fc"].tolist() == [10, 10]
    assert recording.max["model[0]"][1] == pytest.approx(logits.max().item())
    recording.save(tmp_path / "g.npz")
    assert colordim.Recording.load(tmp_path / "g.npz") == recording   # no stray shape of the container itself


# --- a module called at several places in one forward pass ------------------------------------------
def tabular_learner_on_a_frame(**callback):
    "fastai's tabular_learner (one ReLU instance shared by its hidden layers) on a frame made in code."
    import numpy as np
    import pandas as pd
    from fastai.tabular.all import Categorify, TabularDataLoaders, tabular_learner
    generator = np.random.default_rng(0)
    frame = pd.DataFrame({"colour": generator.choice(["red", "green", "blue"], 96), "x": generator.normal(size=96),
                          "y": generator.normal(size=96)})
    frame["target"] = (frame.x + frame.y > 0).astype(int)
    dls = TabularDataLoaders.from_df(frame, procs=[Categorify], cat_names=["colour"], cont_names=["x", "y"],
                                     y_names="target", y_block=None, bs=16, valid_idx=list(range(80, 96)),
                                     shuffle=False, num_workers=0)
    return tabular_learner(dls, layers=[64, 32], cbs=colordim.ActivationHistogram(**callback))


def test_fastais_tabular_model_shares_one_relu_and_each_call_is_a_layer_of_its_own():
    torch.manual_seed(0)
    learn = tabular_learner_on_a_frame(layers=nn.ReLU, valid=False)
    shared = learn.model.layers[0][1]
    assert shared is learn.model.layers[1][1]   # one instance at two places
    learn.fit(1)
    recording = learn.activation_histogram.recording
    assert recording.layer_names == ["layers.0.1", "layers.0.1#2"]
    assert recording.shapes == {"layers.0.1": (16, 64), "layers.0.1#2": (16, 32)}
    assert recording.numel["layers.0.1"].tolist() == [16 * 64] * 5   # 80 rows: 5 batches of 16
    assert recording.numel["layers.0.1#2"].tolist() == [16 * 32] * 5
    assert recording.label("layers.0.1#2") == "layers.0.1#2 ReLU"
    assert (recording.counts["layers.0.1#2"][:, :51] == 0).all()   # (-10, 10): a ReLU's values are >= 0


def test_a_cell_run_at_every_step_is_a_layer_per_step_up_to_32():
    torch.manual_seed(0)

    class Recurrent(nn.Module):
        def __init__(self):
            super().__init__()
            self.cell = nn.GRUCell(3, 5)

        def forward(self, x):
            state = torch.zeros(x.shape[1], 5)
            for step in x:
                state = self.cell(step, state)
            return state

    model = Recurrent()
    with colordim.record(model, layers="cell", range="auto") as rec:
        model(torch.randn(40, 2, 3))   # one forward pass, 40 calls of the cell
        model(torch.randn(3, 2, 3))    # the next pass starts again at the first call
    recording = rec.recording
    assert recording.layer_names == ["cell"] + [f"cell#{call}" for call in range(2, 32)] + ["cell#32+"]
    assert recording.numel["cell"].tolist() == [10, 10] and recording.numel["cell#3"].tolist() == [10, 10]
    assert recording.numel["cell#4"].tolist() == [10, 0]
    assert recording.numel["cell#32+"].tolist() == [9 * 10, 0]   # calls 32 to 40


@pytest.mark.parametrize("reentrant", [False, True])
def test_activation_checkpointing_records_each_value_once(reentrant):
    "A checkpointed block runs again during backward: that recomputation is not another call."
    from torch.utils.checkpoint import checkpoint

    class Checkpointed(nn.Module):
        def __init__(self):
            super().__init__()
            self.block, self.head = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8)), nn.Linear(8, 1)

        def forward(self, x):
            return self.head(checkpoint(self.block, x, use_reentrant=reentrant))

    torch.manual_seed(0)
    model, x = Checkpointed(), torch.randn(5, 4, requires_grad=True)
    with colordim.record(model, layers=["block.0", "block.2", "head"], grads=True) as rec:
        model(x).sum().backward()
    recording = rec.recording
    assert recording.layer_names == ["block.0", "block.2", "head"]
    assert recording.numel == {"block.0": [40], "block.2": [40], "head": [5]}
    assert recording.grads.numel["head"].tolist() == [5]
    assert recording.grads.numel["block.2"].tolist() == [40]   # the gradient of the recomputed output
