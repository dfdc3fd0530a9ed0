"""`colordim.summary` and `learn.activation_summary()`: every module with what `layers=` takes, before training."""
import pytest
import torch
from torch import nn

import colordim
from colordim import find_layers
from conftest import make_learner, taps


def rows_by_name(table):
    return {row["name"]: row for row in table.rows}


def test_a_resnet_summary_lists_every_module_with_its_index_shape_and_parameters():
    from torchvision.models import resnet18
    torch.manual_seed(0)
    model = resnet18(num_classes=10)
    model.layer2.eval()  # one submodule in eval on its own: it stays so
    table = colordim.summary(model, torch.randn(2, 3, 64, 64))
    rows = rows_by_name(table)
    assert len(table.rows) == 1 + len(list(model.named_modules())) - 1  # the model, then every submodule
    assert rows["model"] == {"index": "", "name": "model", "type": "ResNet", "output shape": "(2, 10)",
                             "params": 11_181_642, "default": False}
    assert rows["conv1"] == {"index": 0, "name": "conv1", "type": "Conv2d", "output shape": "(2, 64, 32, 32)",
                             "params": 9408, "default": True}
    assert rows["layer1.0.relu"]["output shape"] == "(2, 64, 16, 16) (and more calls)"  # called twice a block
    assert rows["fc"]["output shape"] == "(2, 10)" and rows["fc"]["params"] == 5130 and rows["fc"]["default"]
    assert not rows["layer1.0.relu"]["default"] and not rows["layer1"]["default"]
    for row in table.rows[1:]:  # each index is what layers= takes for that name
        assert list(find_layers(model, [row["index"]])) == [row["name"]]
    assert model.training and not model.layer2.training and not model.layer2[0].bn1.training  # modes as before
    assert all(taps(module) == 0 for module in model.modules())  # no hook left
    assert sum(row["default"] for row in table.rows) == len(find_layers(model))


def test_keyword_inputs_and_container_outputs_of_a_hugging_face_model():
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=2, n_positions=32))
    table = colordim.summary(model, {"input_ids": torch.randint(0, 100, (2, 12))})
    rows = rows_by_name(table)
    assert rows["transformer.h.0.mlp"]["output shape"] == "(2, 12, 32)"
    assert "logits: (2, 12, 100)" in rows["model"]["output shape"]
    assert rows["lm_head"]["type"] == "Linear" and rows["transformer.wte"]["params"] == 3200


def test_the_table_prints_as_text_and_shows_as_html():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    table = colordim.summary(model, torch.zeros(3, 4))
    lines = str(table).splitlines()
    assert lines[0].split() == ["index", "name", "type", "output", "shape", "params", "default"]
    assert lines[2].split() == ["model", "Sequential", "(3,", "2)", "58"]
    assert lines[3].split() == ["0", "0", "Linear", "(3,", "8)", "40", "yes"]
    assert lines[4].split() == ["1", "1", "ReLU", "(3,", "8)", "0"]
    assert lines[-1].startswith("default: hooked when `layers=None` (2 modules")
    page = table._repr_html_()
    assert page.count("<tr>") == 1 + 4 and "<td>(3, 8)</td>" in page
    with pytest.raises(TypeError, match="model: expected a torch.nn.Module, got str"):
        colordim.summary("resnet", torch.zeros(1))


def test_a_module_that_does_not_run_says_so():
    class Unused(nn.Module):
        def __init__(self):
            super().__init__()
            self.used, self.spare = nn.Linear(2, 2), nn.Linear(2, 2)

        def forward(self, x):
            return self.used(x)
    assert rows_by_name(colordim.summary(Unused(), torch.zeros(1, 2)))["spare"]["output shape"] == "not run"


def test_the_learner_summary_takes_a_training_batch():
    "The `learn.` methods come with the fastai integration, as a user gets it: `from colordim import ActivationHistogram`."
    from colordim import ActivationHistogram  # noqa: F401  (loads colordim.integrations.fastai and its @patch)
    learn = make_learner()
    rows = rows_by_name(learn.activation_summary())
    assert rows["0.0"]["output shape"] == "(8, 4, 8, 8)" and rows["0.0"]["default"]
    assert rows["3"]["output shape"] == "(8, 3)" and learn.model.training
