"""xpcnn against PyTorch as an oracle: same weights in, same outputs and gradients out."""

import numpy as np
import pytest

from xpcnn.backend import asarray, to_numpy
from xpcnn.losses import cross_entropy
from xpcnn.models import build_model

torch = pytest.importorskip("torch", reason="PyTorch is the oracle here; pip install torch")
nn = torch.nn


def torch_seed():
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding="same"),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding="same"),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(4096, 128),
        nn.ReLU(),
        nn.Linear(128, 10),
    ).double()


def torch_fast_v1(width=4):
    stem, (w1, w2, w3) = 3 * width // 2, (3 * width, 8 * width, 8 * width)

    def gelu():
        return nn.GELU(approximate="tanh")

    def block(cin, cout):
        return [
            nn.Conv2d(cin, cout, 3, padding=1, bias=False),
            nn.MaxPool2d(2),
            nn.BatchNorm2d(cout),
            gelu(),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            gelu(),
        ]

    return nn.Sequential(
        nn.Conv2d(3, stem, 3, padding=1, bias=False),
        nn.BatchNorm2d(stem),
        gelu(),
        *block(stem, w1),
        *block(w1, w2),
        *block(w2, w3),
        nn.AdaptiveMaxPool2d(1),
        nn.Flatten(),
        nn.Linear(w3, 10, bias=False),
    ).double()


class Mul(nn.Module):
    def __init__(self, factor):
        super().__init__()
        self.factor = factor

    def forward(self, x):
        return x * self.factor


def torch_fast(width=4):
    """airbench94's network as airbench writes it (BatchNorm momentum 1 - 0.6, eps 1e-12), with
    a "same"-padded whitening conv."""
    w1, w2, w3 = width, 4 * width, 4 * width

    def block(cin, cout):
        return [
            nn.Conv2d(cin, cout, 3, padding="same", bias=False),
            nn.MaxPool2d(2),
            nn.BatchNorm2d(cout, eps=1e-12, momentum=1 - 0.6),
            nn.GELU(approximate="tanh"),
            nn.Conv2d(cout, cout, 3, padding="same", bias=False),
            nn.BatchNorm2d(cout, eps=1e-12, momentum=1 - 0.6),
            nn.GELU(approximate="tanh"),
        ]

    return nn.Sequential(
        nn.Conv2d(3, 24, 2, padding="same", bias=True),
        nn.GELU(approximate="tanh"),
        *block(24, w1),
        *block(w1, w2),
        *block(w2, w3),
        nn.AdaptiveMaxPool2d(1),
        nn.Flatten(),
        nn.Linear(w3, 10, bias=False),
        Mul(1 / 9),
    ).double()


@pytest.mark.parametrize(
    ("name", "reference", "kwargs"),
    [
        ("seed", torch_seed, {}),
        ("fast", torch_fast, {"width": 4}),
        ("fast-v1", torch_fast_v1, {"width": 4}),
    ],
)
def test_preset_matches_pytorch_forward_backward_and_running_stats(name, reference, kwargs):
    model = build_model(name, dtype="float64", **kwargs)
    twin = reference()
    twin.load_state_dict(
        {k: torch.from_numpy(to_numpy(v).copy()) for k, v in model.state_dict().items()}
    )
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((4, 3, 32, 32)), np.array([1, 2, 3, 9])
    logits = model(asarray(x))
    loss, grad = cross_entropy(logits, asarray(y), label_smoothing=0.1)
    model.zero_grad()
    dx = model.backward(grad)
    tx = torch.from_numpy(x).requires_grad_()
    tlogits = twin(tx)
    tloss = nn.functional.cross_entropy(tlogits, torch.from_numpy(y), label_smoothing=0.1)
    tloss.backward()
    assert np.allclose(to_numpy(logits), tlogits.detach().numpy(), rtol=1e-10, atol=1e-10)
    assert abs(float(loss) - tloss.item()) < 1e-12
    assert np.allclose(to_numpy(dx), tx.grad.numpy(), atol=1e-12)
    torch_grads = {k: p.grad.numpy() for k, p in twin.named_parameters()}
    trained = {key for key, scale in model.named_lr_scales() if scale > 0}
    for key, value in model.grads().items():
        if key in trained:  # a frozen parameter's gradient is not computed
            assert np.allclose(to_numpy(value), torch_grads[key], atol=1e-11), key
    torch_state = twin.state_dict()
    for key, value in model.state_dict().items():
        assert np.allclose(to_numpy(value), torch_state[key].numpy(), atol=1e-12), key


@pytest.mark.parametrize(("stride", "padding"), [(1, "same"), (2, 1), (2, 0), (1, 2)])
def test_conv2d_matches_pytorch_for_stride_and_padding(stride, padding):
    from xpcnn.layers import Conv2D, Sequential

    model = Sequential(Conv2D(3, 5, 3, stride=stride, padding=padding, dtype="float64"))
    twin = nn.Conv2d(3, 5, 3, stride=stride, padding=padding).double()
    twin.load_state_dict(
        {
            k.split(".", 1)[1]: torch.from_numpy(to_numpy(v).copy())
            for k, v in model.state_dict().items()
        }
    )
    x = np.random.default_rng(1).standard_normal((2, 3, 9, 9))
    assert np.allclose(to_numpy(model(asarray(x))), twin(torch.from_numpy(x)).detach().numpy())


def test_sgd_with_lr_scales_and_frozen_parameters_matches_pytorch_param_groups():
    """fast's BatchNorm biases at 64x the learning rate and weight decay / 64, its whitening
    weight and BatchNorm scales frozen: three steps equal PyTorch's SGD with airbench's param
    groups."""
    from xpcnn.optim import SGD
    from xpcnn.train import train_step

    model = build_model("fast", width=4, dtype="float64")
    twin = torch_fast(width=4)
    twin.load_state_dict(
        {k: torch.from_numpy(to_numpy(v).copy()) for k, v in model.state_dict().items()}
    )
    scales = dict(model.named_lr_scales())
    assert scales["0.weight"] == 0 and scales["4.weight"] == 0 and scales["4.bias"] == 64
    lr, wd = 0.3, 2e-3
    params = dict(twin.named_parameters())
    for key, scale in scales.items():
        params[key].requires_grad_(scale > 0)
    groups = [
        {"params": [params[k] for k, s in scales.items() if s == 64], "lr": lr * 64,
         "weight_decay": wd / 64},
        {"params": [params[k] for k, s in scales.items() if s == 1], "lr": lr,
         "weight_decay": wd},
    ]  # fmt: skip
    torch_opt = torch.optim.SGD(groups, momentum=0.85, nesterov=True)
    opt = SGD(model, lr=lr, momentum=0.85, nesterov=True, weight_decay=wd)
    rng = np.random.default_rng(3)
    for _ in range(3):
        x, y = rng.standard_normal((6, 3, 16, 16)), rng.integers(0, 10, 6)
        train_step(model, opt, asarray(x), asarray(y), label_smoothing=0.2)
        torch_opt.zero_grad()
        loss = nn.functional.cross_entropy(twin(torch.from_numpy(x)), torch.from_numpy(y),
                                           label_smoothing=0.2)  # fmt: skip
        loss.backward()
        torch_opt.step()
    torch_state = twin.state_dict()
    for key, value in model.state_dict().items():
        # float64; lr 0.3 (19.2 for the biases) over three steps amplifies rounding to ~1e-7
        assert np.allclose(to_numpy(value), torch_state[key].numpy(), atol=1e-6), key
    assert np.array_equal(to_numpy(model.state_dict()["0.weight"]),
                          torch_state["0.weight"].numpy())  # fmt: skip
