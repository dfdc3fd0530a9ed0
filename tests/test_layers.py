"""Layer specs: every kind, the default, and errors that name the problem."""
import numpy as np
import pytest
import torch
from torch import nn

from colordim.engine.find_layers import find_layers


def resnet_like():
    "Nested modules named like torchvision's resnet: layer1.0.conv1 and so on."
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.bn1, self.relu = nn.Conv2d(2, 2, 3, padding=1), nn.BatchNorm2d(2), nn.ReLU()
            self.conv2 = nn.Conv2d(2, 2, 3, padding=1)

        def forward(self, x):
            return self.conv2(self.relu(self.bn1(self.conv1(x))))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(1, 2, 3, padding=1)
            self.layer1 = nn.Sequential(Block(), Block())
            self.layer2 = nn.Sequential(Block())
            self.head = nn.Linear(2, 3)

        def forward(self, x):
            return self.head(self.layer2(self.layer1(self.stem(x))).mean((2, 3)))
    return Net()


def test_default_is_leaf_modules_with_parameters():
    model = nn.Sequential(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU()), nn.Flatten(), nn.Linear(2, 3))
    assert list(find_layers(model)) == ["0.0", "2"]


def test_int_indexes_submodules_in_named_modules_order():
    model = nn.Sequential(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU()), nn.Flatten(), nn.Linear(2, 3))
    # named_modules without the root: '0', '0.0', '0.1', '1', '2'
    assert list(find_layers(model, 0)) == ["0"]
    assert list(find_layers(model, [1, 2])) == ["0.0", "0.1"]
    assert list(find_layers(model, -1)) == ["2"]


def test_dotted_name_pattern_class_and_module_object_mix():
    model = resnet_like()
    assert list(find_layers(model, "layer1.0.conv1")) == ["layer1.0.conv1"]
    assert list(find_layers(model, "layer*.conv*")) == [
        "layer1.0.conv1", "layer1.0.conv2", "layer1.1.conv1", "layer1.1.conv2", "layer2.0.conv1", "layer2.0.conv2"]
    assert list(find_layers(model, nn.ReLU)) == ["layer1.0.relu", "layer1.1.relu", "layer2.0.relu"]
    assert list(find_layers(model, model.head)) == ["head"]
    # a mix comes back once each, in the model's order, whatever order the specs were given in
    mixed = find_layers(model, [model.head, "stem", nn.BatchNorm2d, "layer2.0.bn1", 0])
    assert list(mixed) == ["stem", "layer1.0.bn1", "layer1.1.bn1", "layer2.0.bn1", "head"]
    assert mixed["head"] is model.head


def test_unknown_name_lists_close_and_available_names():
    model = resnet_like()
    with pytest.raises(ValueError, match=r"no module named 'layer1.0.conv3'.*close names: \[[^]]*'layer1.0.conv1'[^]]*\]; names are"):
        find_layers(model, "layer1.0.conv3")
    with pytest.raises(ValueError, match=r"names are: 'stem', 'layer1', 'layer1.0'"):
        find_layers(model, "nothing")


def test_errors_for_each_kind_of_bad_spec():
    model = resnet_like()
    with pytest.raises(ValueError, match=r"pattern 'block\*' matches no module"):
        find_layers(model, "block*")
    with pytest.raises(ValueError, match=r"index 99 is out of range; Net has 19 submodules \(0..18\)"):
        find_layers(model, 99)
    with pytest.raises(ValueError, match="no module of type LSTM; types present: BatchNorm2d, Block, Conv2d"):
        find_layers(model, nn.LSTM)
    with pytest.raises(ValueError, match="is not part of Net"):
        find_layers(model, nn.Linear(2, 3))
    with pytest.raises(ValueError, match="empty list"):
        find_layers(model, [])
    with pytest.raises(TypeError, match=r"3.5 \(float\) is not a layer spec"):
        find_layers(model, 3.5)
    with pytest.raises(TypeError, match="True is not a layer spec"):
        find_layers(model, True)
    with pytest.raises(TypeError, match="model: expected a torch.nn.Module"):
        find_layers("resnet", None)


def test_error_lists_at_most_twenty_names():
    model = nn.Sequential(*[nn.Linear(2, 2) for _ in range(30)])
    with pytest.raises(ValueError) as error:
        find_layers(model, "fc")
    message = str(error.value)
    assert "'19'" in message and "'20'" not in message and "(10 more;" in message


def test_model_without_parameterised_leaves_needs_layers():
    with pytest.raises(ValueError, match="no leaf module with parameters"):
        find_layers(nn.Sequential(nn.ReLU(), nn.Flatten()))
    with pytest.raises(ValueError, match=r"pass `layers=` \(names: none \(the model has no submodules\); 'model': "
                                         r"the model's own output\)"):
        find_layers(nn.ReLU())


def test_a_bare_layer_with_parameters_records_itself():
    "record(nn.Conv2d(3, 8, 3)): the first thing many try in a notebook."
    import colordim
    conv = nn.Conv2d(3, 8, 3)
    assert list(find_layers(conv)) == ["model"] and find_layers(conv)["model"] is conv
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad(), colordim.record(conv, range=(-5, 5)) as rec:
        conv(x)
        conv(x)
    recording = rec.recording
    assert recording.layer_names == ["model"] and recording.shapes["model"] == (2, 8, 4, 4)
    assert recording.numel["model"].tolist() == [256, 256] and recording.types["model"] == "Conv2d"
    expected = np.histogram(conv(x).detach().numpy(), bins=recording.edges["model"])[0]
    assert recording.hist["model"].tolist() == [expected.tolist()] * 2


def test_the_model_itself_can_be_hooked():
    model = nn.Sequential(nn.Linear(2, 2))
    assert list(find_layers(model, model)) == ["model"]
    assert list(find_layers(model, "model")) == ["model"]


def test_the_root_keeps_its_own_name_beside_a_submodule_called_model():
    "Every Hugging Face *ForCausalLM has a submodule `model`: the root is then '(model)'."
    class Causal(nn.Module):
        def __init__(self):
            super().__init__()
            self.model, self.lm_head = nn.Sequential(nn.Linear(4, 4)), nn.Linear(4, 2)
        def forward(self, x):
            return self.lm_head(self.model(x))
    wrapper = Causal()
    found = find_layers(wrapper, [wrapper, wrapper.model])
    assert list(found) == ["(model)", "model"] and found["(model)"] is wrapper and found["model"] is wrapper.model
    assert list(find_layers(wrapper, ["model", "(model)"])) == ["(model)", "model"]
    import colordim
    with colordim.record(wrapper, layers=[wrapper, "model"]) as rec:
        wrapper(torch.ones(3, 4))
    assert rec.recording.numel["(model)"].tolist() == [6] and rec.recording.numel["model"].tolist() == [12]
    plain = nn.Sequential(nn.Linear(4, 4))
    assert list(find_layers(plain, [plain, "model"])) == ["model"]  # no clash: the root is "model" as before
