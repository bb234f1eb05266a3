"""Residual blocks, named children and the ResNet presets: gradients by finite differences,
PyTorch as the oracle, torchvision's state-dict names."""

import numpy as np
import pytest
from gradcheck import gradient_error

from xpcnn.backend import asarray, to_numpy
from xpcnn.layers import (
    BatchNorm2D,
    Conv2D,
    Dense,
    Flatten,
    GlobalAvgPool2D,
    ReLU,
    Residual,
    Sequential,
)
from xpcnn.layers.flat import FlatState, leaves
from xpcnn.losses import cross_entropy
from xpcnn.models import MODELS, basic_block, build_model

SHORTCUTS = [("identity", 3, 3, 1), ("projection", 2, 3, 1), ("projection", 2, 3, 2)]


def block(cin, cout, stride):
    return basic_block(cin, cout, stride, dtype="float64")


@pytest.mark.parametrize(("kind", "cin", "cout", "stride"), SHORTCUTS)
def test_residual_gradients_match_finite_differences(kind, cin, cout, stride):
    layer = block(cin, cout, stride)
    assert (layer.shortcut is None) == (kind == "identity")
    assert gradient_error(layer, input_shape=(2, 5, 5, cin)) < 1e-6


def test_residual_without_activation_adds_the_input_and_its_gradient():
    layer = Residual(Conv2D(2, 2, 3, dtype="float64"))
    assert gradient_error(layer, input_shape=(2, 4, 4, 2)) < 1e-6
    x = asarray(np.ones((1, 4, 4, 2)))
    body = to_numpy(layer.body(x))
    assert np.allclose(to_numpy(layer(x)), body + 1.0, atol=1e-12)


def test_residual_frozen_parameters_get_no_gradient_and_input_grad_false_returns_none():
    layer = block(2, 3, 2)
    layer.shortcut[0].frozen.add("weight")
    layer.body["bn1"].frozen.add("bias")
    x = asarray(np.random.default_rng(0).standard_normal((2, 4, 4, 2)))
    y = layer(x)
    layer.zero_grad()
    assert layer.backward(y * 0 + 1, input_grad=False) is None
    scales = dict(layer.named_lr_scales())
    assert scales["downsample.0.weight"] == scales["bn1.bias"] == 0.0
    assert "weight" not in layer.shortcut[0].gradients and "bias" not in layer.body[1].gradients
    assert "weight" in layer.body["conv1"].gradients and layer.trains()


def test_residual_flops_are_its_branches_and_one_per_output_element_for_the_add():
    layer = block(16, 32, 2)
    shape = (8, 8, 16)
    branches = layer.body.flops(shape) + layer.shortcut.flops(shape)
    assert layer.output_shape(shape) == (4, 4, 32)
    assert layer.flops(shape) == branches + 4 * 4 * 32


def test_residual_keys_are_torchvision_basic_block_names():
    keys = list(block(2, 3, 2).state_dict())
    assert keys[:6] == [
        "conv1.weight",
        "bn1.weight",
        "bn1.bias",
        "bn1.running_mean",
        "bn1.running_var",
        "bn1.num_batches_tracked",
    ]
    assert "downsample.0.weight" in keys and "downsample.1.running_var" in keys
    assert len(keys) == 3 + 3 * 5  # three convs, three BatchNorms


def test_named_sequential_keys_and_indexing():
    conv, norm = Conv2D(3, 4, 3), BatchNorm2D(4)
    named = Sequential(("conv1", conv), ("bn1", norm))
    assert list(named.state_dict())[:2] == ["conv1.weight", "conv1.bias"]
    assert named[0] is conv and named["bn1"] is norm
    assert list(Sequential({"conv1": conv, "bn1": norm}).named_children())[1] == ("bn1", norm)
    assert list(Sequential(Conv2D(3, 4, 3)).state_dict()) == ["0.weight", "0.bias"]
    with pytest.raises(ValueError, match="unique"):
        Sequential(("a", ReLU()), ("a", ReLU()))


def test_named_sequential_round_trips_its_state_dict():
    model = build_model("resnet20", dtype="float64")
    state = {key: to_numpy(value) + 1.0 for key, value in model.state_dict().items()}
    model.load_state_dict(state)
    for key, value in model.state_dict().items():
        assert np.array_equal(to_numpy(value), state[key]), key


def test_eval_and_train_reach_every_layer_of_every_block():
    model = build_model("resnet20").eval()
    assert not any(layer.training for _, layer in leaves(model))
    assert model["layer2"][0].body.training is False
    model.train()
    assert all(layer.training for _, layer in leaves(model)) and model["layer2"][0].body.training


def test_flat_state_holds_every_residual_parameter():
    model = build_model("resnet20")
    flat = FlatState.of(model)
    names = {entry.name for group in flat.groups for entry in group.entries}
    floats = {key for key in model.state_dict() if not key.endswith("num_batches_tracked")}
    assert names == floats


@pytest.mark.parametrize(("name", "parameters"), [("resnet20", 272_474), ("resnet18", 11_173_962)])
def test_resnet_presets_have_the_papers_parameter_counts(name, parameters):
    assert name in MODELS
    assert build_model(name).num_parameters() == parameters


def test_resnet20_summary_counts_the_adds_and_names_its_stages():
    summary = build_model("resnet20").summary((3, 32, 32))
    adds = 3 * (16 * 32 * 32 + 32 * 16 * 16 + 64 * 8 * 8)  # one per output element of a block
    assert summary.flops - adds == 81_626_368  # 40.8 M multiply-adds, He et al.'s "41 M"
    assert summary.rows[3].layer == "layer1: Sequential(Residual, Residual, Residual)"
    assert summary.rows[3].output_shape == (16, 32, 32)


def test_resnet18_keys_are_torchvision_names():
    keys = set(build_model("resnet18").state_dict())
    expected = ["conv1.weight", "bn1.running_mean", "layer1.0.conv1.weight", "fc.bias",
                "layer2.0.downsample.0.weight", "layer4.1.bn2.bias", "fc.weight"]  # fmt: skip
    for key in expected:
        assert key in keys, key
    assert "layer1.0.downsample.0.weight" not in keys


def torch_cifar_resnet18():
    """torchvision's ResNet-18 and BasicBlock (torchvision is not a test dependency) with the
    CIFAR stem: 3x3 conv at stride 1, no max pool."""
    torch = pytest.importorskip("torch", reason="PyTorch is the oracle here; pip install torch")
    nn = torch.nn

    class BasicBlock(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.relu = nn.ReLU()
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.downsample = None
            if stride != 1 or cin != cout:
                self.downsample = nn.Sequential(
                    nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
                )

        def forward(self, x):
            y = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
            return self.relu(y + (x if self.downsample is None else self.downsample(x)))

    class ResNet18(nn.Module):
        def __init__(self, num_classes=10):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(64)
            self.relu = nn.ReLU()
            cin = 64
            for i, width in enumerate((64, 128, 256, 512)):
                stride = 1 if i == 0 else 2
                stage = nn.Sequential(BasicBlock(cin, width, stride), BasicBlock(width, width, 1))
                self.add_module(f"layer{i + 1}", stage)
                cin = width
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(512, num_classes)

        def forward(self, x):
            x = self.relu(self.bn1(self.conv1(x)))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.fc(torch.flatten(self.avgpool(x), 1))

    return ResNet18()


def test_pytorch_cifar_resnet18_state_dict_loads_with_the_same_logits():
    torch = pytest.importorskip("torch", reason="PyTorch is the oracle here; pip install torch")
    torch.manual_seed(0)
    reference = torch_cifar_resnet18()
    with torch.no_grad():  # running statistics that are not the initial 0 and 1
        for module in reference.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.1, 0.1)
    reference.eval()
    model = build_model("resnet18")
    model.load_state_dict(reference.state_dict())
    model.eval()
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    expected = reference(torch.from_numpy(x)).detach().numpy()
    assert np.abs(to_numpy(model(asarray(x))) - expected).max() < 1e-5


@pytest.mark.parametrize(("kind", "cin", "cout", "stride"), SHORTCUTS)
def test_residual_network_matches_pytorch_forward_loss_and_every_gradient(kind, cin, cout, stride):
    torch = pytest.importorskip("torch", reason="PyTorch is the oracle here; pip install torch")
    nn = torch.nn
    from xpcnn.twin import torch_twin

    model = Sequential(
        ("stem", Conv2D(3, cin, 3, padding=1, bias=False, dtype="float64")),
        ("block", block(cin, cout, stride)),
        ("pool", GlobalAvgPool2D()),
        ("flatten", Flatten()),
        ("fc", Dense(cout, 4, dtype="float64")),
    )
    twin = torch_twin(model).double()  # the twin is float32: load the float64 weights again
    twin.load_state_dict(
        {k: torch.from_numpy(to_numpy(v).copy()) for k, v in model.state_dict().items()}
    )
    assert isinstance(twin.block.downsample, nn.Sequential) == (kind == "projection")
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((4, 3, 6, 6)), np.array([0, 1, 2, 3])
    logits = model(asarray(x))
    loss, grad = cross_entropy(logits, asarray(y))
    model.zero_grad()
    dx = model.backward(grad)
    tx = torch.from_numpy(x).requires_grad_()
    tlogits = twin(tx)
    tloss = nn.functional.cross_entropy(tlogits, torch.from_numpy(y))
    tloss.backward()
    assert np.allclose(to_numpy(logits), tlogits.detach().numpy(), rtol=0, atol=1e-10)
    assert abs(float(loss) - tloss.item()) < 1e-12
    assert np.allclose(to_numpy(dx), tx.grad.numpy(), atol=1e-12)
    torch_grads = {key: p.grad.numpy() for key, p in twin.named_parameters()}
    grads = model.grads()
    assert set(grads) == set(torch_grads)
    for key, value in grads.items():
        assert np.allclose(to_numpy(value), torch_grads[key], atol=1e-11), key
    torch_state = twin.state_dict()
    for key, value in model.state_dict().items():  # the running statistics after one step
        assert np.allclose(to_numpy(value), torch_state[key].numpy(), atol=1e-12), key


@pytest.mark.parametrize("name", ["resnet20", "resnet18"])
def test_onnx_runtime_gives_the_resnet_presets_probabilities(name, tmp_path):
    ort = pytest.importorskip("onnxruntime", reason="ONNX Runtime verifies the export")
    from xpcnn.export import to_onnx

    mean, std, shape = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3), (3, 16, 16)
    model = build_model(name, num_classes=3, image_size=16)
    rng = np.random.default_rng(7)
    state = {}
    for key, value in model.state_dict().items():  # BatchNorm away from its initial 1s and 0s
        value = to_numpy(value)
        if key.endswith("running_var"):
            value = rng.uniform(0.5, 2.0, value.shape).astype(value.dtype)
        elif key.endswith(("running_mean", "bias")) or (key.endswith("weight") and value.ndim == 1):
            value = value + rng.normal(0.0, 0.3, value.shape).astype(value.dtype)
        state[key] = value
    model.load_state_dict(state)
    model.eval()
    path = tmp_path / "model.onnx"
    to_onnx(model, path, mean=mean, std=std, classes=["a", "b", "c"], input_shape=shape)
    pixels = rng.integers(0, 256, (5, *shape), dtype=np.uint8)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (probabilities,) = session.run(None, {"images": pixels})
    x = (pixels / 255.0 - np.reshape(mean, (3, 1, 1))) / np.reshape(std, (3, 1, 1))
    logits = to_numpy(model(asarray(x.astype(np.float32)))).astype(np.float64)
    expected = np.exp(logits - logits.max(axis=1, keepdims=True))
    expected /= expected.sum(axis=1, keepdims=True)
    assert np.abs(probabilities - expected).max() < 1e-5
