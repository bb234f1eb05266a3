"""Muon: the Newton–Schulz iteration against a float64 SVD, one step against the rule written
out by hand, resume, frozen filters, the schedule."""

import numpy as np
import pytest

from xpcnn.backend import asarray, to_numpy
from xpcnn.layers import Conv2D, Dense, Sequential
from xpcnn.muon import QUINTIC, Muon, newton_schulz
from xpcnn.optim import SGD


def quintic_of_singular_values(g, steps=3):
    """U·f^steps(Σ/(‖g‖_F + ε))·Vᵀ of g = U·Σ·Vᵀ, in float64: what the iteration computes."""
    a, b, c = QUINTIC
    u, s, vt = np.linalg.svd(np.asarray(g, np.float64), full_matrices=False)
    s = s / (np.sqrt(np.sum(s * s)) + 1e-7)
    for _ in range(steps):
        s = a * s + b * s**3 + c * s**5
    return (u * s) @ vt


def with_spectrum(shape, rng, low=1.0, high=5.0):
    """A float32 matrix with random singular vectors and singular values spread over [low, high]."""
    k = min(shape)
    u = np.linalg.qr(rng.standard_normal((shape[0], k)))[0]
    v = np.linalg.qr(rng.standard_normal((shape[1], k)))[0]
    return ((u * np.linspace(low, high, k)) @ v.T).astype(np.float32)


@pytest.mark.parametrize("shape", [(32, 32), (16, 144), (144, 16)])
def test_newton_schulz_applies_the_quintic_to_each_singular_value(shape):
    g = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    result = to_numpy(newton_schulz(asarray(g), steps=3))
    assert result.dtype == np.float32
    assert np.max(np.abs(result - quintic_of_singular_values(g))) < 3e-6


@pytest.mark.parametrize("kind", ["square", "wide", "tall", "filter bank"])
def test_newton_schulz_lands_in_the_band_around_u_vt(kind):
    """3 steps take singular values from 0.02·‖g‖_F up into [0.68, 1.21] (the quintic's band),
    so the result points along U·Vᵀ."""
    rng = np.random.default_rng(1)
    g = {
        "square": with_spectrum((32, 32), rng),
        "wide": with_spectrum((16, 144), rng),
        "tall": with_spectrum((144, 16), rng),
        "filter bank": rng.standard_normal((64, 576)).astype(np.float32),  # 64 × 64·3·3
    }[kind]
    u, s, vt = np.linalg.svd(g.astype(np.float64), full_matrices=False)
    assert s.min() / np.sqrt(np.sum(s * s)) > 0.02
    result = to_numpy(newton_schulz(asarray(g), steps=3)).astype(np.float64)
    values = np.linalg.svd(result, compute_uv=False)
    assert 0.68 < values.min() and values.max() < 1.21
    polar = u @ vt
    cosine = np.sum(result * polar) / (np.linalg.norm(result) * np.linalg.norm(polar))
    assert cosine > 0.97


def conv_model():
    """A wide filter bank (3 × 2·3·3) with a bias, a tall one (4 × 3·1·1) and a dense head."""
    return Sequential(Conv2D(2, 3, 3), Conv2D(3, 4, 1, bias=False), Dense(4, 2))


GRADS = {"0.weight": (3, 2, 3, 3), "0.bias": (3,), "1.weight": (4, 3, 1, 1),
         "2.weight": (2, 4), "2.bias": (2,)}  # fmt: skip


def gradients(seed):
    rng = np.random.default_rng(seed)
    return {name: rng.standard_normal(shape).astype(np.float32) for name, shape in GRADS.items()}


def step(optimizer, model, grads):
    layers = model.layers
    for name, grad in grads.items():
        index, key = name.split(".")
        layers[int(index)].gradients[key] = asarray(grad)
    optimizer.step()
    return snapshot(model)


def snapshot(model):
    """The model's state as host copies (NumPy's to_numpy shares the live buffers)."""
    return {name: np.array(to_numpy(value)) for name, value in model.state_dict().items()}


def test_two_steps_match_the_rule_written_out_by_hand():
    lr, mu, decay, filter_lr, mu_f = 0.1, 0.85, 0.01, 0.24, 0.6
    model = conv_model()
    theta = {k: v.astype(np.float64) for k, v in snapshot(model).items()}
    optimizer = Muon(model, lr=lr, momentum=mu, weight_decay=decay, filter_lr=filter_lr,
                     filter_momentum=mu_f)  # fmt: skip
    velocity = {name: np.zeros(shape) for name, shape in GRADS.items()}
    for seed in (1, 2):
        grads = gradients(seed)
        got = step(optimizer, model, grads)
        for name, grad in grads.items():
            grad = grad.astype(np.float64)
            if theta[name].ndim == 4:  # no decay; W·√r/‖W‖, then W − η_f·k·NS(g + μ_f·v)
                velocity[name] = mu_f * velocity[name] + grad
                rows = theta[name].shape[0]
                matrix = (grad + mu_f * velocity[name]).reshape(rows, -1)
                k = np.sqrt(max(1.0, rows / matrix.shape[1]))  # 1 for 3 × 18, √(4/3) for 4 × 3
                w = theta[name] * np.sqrt(rows) / (np.linalg.norm(theta[name]) + 1e-7)
                update = quintic_of_singular_values(matrix).reshape(w.shape)
                theta[name] = w - filter_lr * k * update
            else:  # Nesterov SGD with L2 weight decay
                grad = grad + decay * theta[name]
                velocity[name] = mu * velocity[name] + grad
                theta[name] = theta[name] - lr * (grad + mu * velocity[name])
            np.testing.assert_allclose(got[name], theta[name], rtol=1e-5, atol=1e-6)


def test_without_filters_muon_is_nesterov_sgd_bit_for_bit():
    models = [Sequential(Dense(4, 3), Dense(3, 2)) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    optimizers = [SGD(models[0], lr=0.1, momentum=0.85, nesterov=True, weight_decay=0.01),
                  Muon(models[1], lr=0.1, momentum=0.85, weight_decay=0.01)]  # fmt: skip
    rng = np.random.default_rng(3)
    shapes = {name: value.shape for name, value in models[0].state_dict().items()}
    for _ in range(3):
        grads = {name: rng.standard_normal(shape).astype(np.float32)
                 for name, shape in shapes.items()}  # fmt: skip
        sgd, muon = (step(o, m, grads) for o, m in zip(optimizers, models, strict=True))
    assert all(np.array_equal(sgd[name], muon[name]) for name in sgd)


def schedule(step):
    return 0.1 * (1 - step / 10)


def test_resume_from_the_state_dict_continues_bit_for_bit():
    model = conv_model()
    optimizer = Muon(model, lr=0.1, weight_decay=0.01)
    optimizer.set_schedule(schedule, 10)
    for seed in (1, 2):
        step(optimizer, model, gradients(seed))
    state = {k: (to_numpy(v) if k != "steps" else v) for k, v in optimizer.state_dict().items()}
    assert sorted(state) == sorted(["steps", *(f"momentum.{name}" for name in GRADS)])
    twin_model = conv_model()
    twin_model.load_state_dict(model.state_dict())
    twin = Muon(twin_model, lr=0.1, weight_decay=0.01)
    twin.set_schedule(schedule, 10)
    twin.load_state_dict(state)
    ahead, resumed = step(optimizer, model, gradients(3)), step(twin, twin_model, gradients(3))
    assert all(np.array_equal(ahead[name], resumed[name]) for name in ahead)


def test_a_frozen_filter_bank_never_moves_and_keeps_no_state():
    model = conv_model()
    model.layers[0].frozen.add("weight")
    optimizer = Muon(model, lr=0.1, weight_decay=0.01)
    before = snapshot(model)["0.weight"]
    grads = gradients(1)
    del grads["0.weight"]
    for _ in range(2):
        after = step(optimizer, model, grads)
    assert np.array_equal(after["0.weight"], before)
    assert "momentum.0.weight" not in optimizer.state_dict()
    assert "momentum.1.weight" in optimizer.state_dict()


def test_a_filter_bank_frozen_between_steps_stops_moving():
    model = conv_model()
    optimizer = Muon(model, lr=0.1)
    before = step(optimizer, model, gradients(1))["0.weight"]
    model.layers[0].frozen.add("weight")
    grads = gradients(2)
    del grads["0.weight"]
    assert np.array_equal(step(optimizer, model, grads)["0.weight"], before)


def test_the_schedule_scales_the_filter_rate_by_the_same_factor():
    """η_f = η·filter_lr/lr: at half the peak rate, a filter bank moves half as far."""
    moved = []
    for rate in (0.1, 0.05):
        model = conv_model()
        optimizer = Muon(model, lr=0.1, filter_lr=0.3, normalize_filters=False)
        before = snapshot(model)["0.weight"]
        optimizer.set_schedule(lambda step, rate=rate: rate, 1)
        moved.append(step(optimizer, model, gradients(1))["0.weight"] - before)
    np.testing.assert_allclose(moved[1], 0.5 * moved[0], rtol=1e-5, atol=1e-7)
    assert np.abs(moved[0]).max() > 0.01


@pytest.mark.parametrize(
    "settings",
    [{"lr": 0.0}, {"filter_momentum": 0.0}, {"momentum": -0.1, "nesterov": False},
     {"ns_steps": 0}],
)  # fmt: skip
def test_settings_it_cannot_use_are_rejected(settings):
    with pytest.raises(ValueError):
        Muon(conv_model(), **settings)
