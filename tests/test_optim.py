import math

import numpy as np
import pytest

from xpcnn.backend import asarray, to_numpy
from xpcnn.layers import Dense, Sequential
from xpcnn.optim import (
    SGD,
    Adam,
    AdamW,
    Constant,
    Cosine,
    OneCycle,
    StepDecay,
    Triangular,
    make_schedule,
)


def one_parameter_model(value=1.0, grad=0.5):
    """A Dense(1, 1) without bias whose weight is `value` and whose gradient is `grad`."""
    model = Sequential(Dense(1, 1, bias=False, dtype="float64"))
    model.load_state_dict({"0.weight": np.array([[value]])})
    model.layers[0].gradients["weight"] = asarray(np.array([[grad]]))
    return model


def weight(model):
    return float(to_numpy(model.state_dict()["0.weight"])[0, 0])


def steps(optimizer, model, grads):
    values = []
    for g in grads:
        model.layers[0].gradients["weight"] = asarray(np.array([[g]]))
        optimizer.step()
        values.append(weight(model))
    return values


def test_sgd_plain_step():
    model = one_parameter_model(1.0)
    assert steps(SGD(model, lr=0.1), model, [0.5]) == [pytest.approx(0.95)]


def test_sgd_momentum_and_weight_decay_by_hand():
    model = one_parameter_model(1.0)
    opt = SGD(model, lr=0.1, momentum=0.9, weight_decay=0.01)
    # step 1: g = 0.5 + 0.01·1 = 0.51, v = 0.51, θ = 1 − 0.051 = 0.949
    # step 2: g = 0.5 + 0.00949 = 0.50949, v = 0.9·0.51 + 0.50949 = 0.96849, θ = 0.949 − 0.096849
    assert steps(opt, model, [0.5, 0.5]) == [pytest.approx(0.949), pytest.approx(0.852151)]


def test_sgd_nesterov_by_hand():
    model = one_parameter_model(1.0)
    opt = SGD(model, lr=0.1, momentum=0.9, nesterov=True)
    # step 1: v = 0.5, update = g + μv = 0.95 → θ = 0.905
    # step 2: v = 0.45 + 0.5 = 0.95, update = 0.5 + 0.855 = 1.355 → θ = 0.7695
    assert steps(opt, model, [0.5, 0.5]) == [pytest.approx(0.905), pytest.approx(0.7695)]


def test_adam_first_steps_by_hand():
    model = one_parameter_model(1.0)
    opt = Adam(model, lr=0.1)
    # bias-corrected m̂ = g, v̂ = g² on step 1, so the step is lr·sign(g) (up to ε)
    first = steps(opt, model, [0.5])[0]
    assert first == pytest.approx(0.9, abs=1e-7)
    # step 2 with g = −1: m = 0.9·0.05 − 0.1 = −0.055, v = 0.999·0.00025 + 0.001 = 0.00124975
    m_hat, v_hat = -0.055 / (1 - 0.81), 0.00124975 / (1 - 0.998001)
    expected = first - 0.1 * m_hat / (math.sqrt(v_hat) + 1e-8)
    assert steps(opt, model, [-1.0])[0] == pytest.approx(expected, rel=1e-9)


def test_adamw_decouples_weight_decay():
    model = one_parameter_model(2.0)
    opt = AdamW(model, lr=0.1, weight_decay=0.5)
    # θ ← θ(1 − 0.05) = 1.9, then the Adam step of 0.1 down
    assert steps(opt, model, [0.5])[0] == pytest.approx(1.8, abs=1e-7)


def test_optimizer_state_round_trips():
    model = one_parameter_model(1.0)
    opt = SGD(model, lr=0.1, momentum=0.9)
    steps(opt, model, [0.5, 0.25])
    state = {k: (to_numpy(v) if k != "steps" else v) for k, v in opt.state_dict().items()}
    twin_model = one_parameter_model(weight(model))
    twin = SGD(twin_model, lr=0.1, momentum=0.9)
    twin.load_state_dict(state)
    assert steps(opt, model, [0.1]) == steps(twin, twin_model, [0.1])
    assert twin.steps == 3


def test_constant_and_step_schedules():
    assert Constant(0.1)(1000) == 0.1
    schedule = StepDecay(1.0, step_size=10, gamma=0.5)
    assert [schedule(s) for s in (0, 9, 10, 25)] == [1.0, 1.0, 0.5, 0.25]


def test_cosine_schedule_known_points():
    schedule = Cosine(1.0, total_steps=110, warmup_steps=10)
    assert schedule(0) == pytest.approx(0.1)
    assert schedule(9) == pytest.approx(1.0)
    assert schedule(10) == pytest.approx(1.0)
    assert schedule(60) == pytest.approx(0.5)
    assert schedule(110) == pytest.approx(0.0)


def test_onecycle_known_points():
    schedule = OneCycle(0.05, total_steps=101, pct_start=0.25, div_factor=25, final_div_factor=1e4)
    peak = 0.25 * 101 - 1
    assert schedule(0) == pytest.approx(0.002)
    assert schedule(peak) == pytest.approx(0.05)
    assert schedule(100) == pytest.approx(0.002 / 1e4)
    midway_down = peak + (100 - peak) / 2
    assert schedule(midway_down) == pytest.approx((0.05 + 0.002e-4) / 2)


def test_onecycle_matches_pytorch():
    torch = pytest.importorskip("torch", reason="PyTorch is the oracle here")
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=0.05)
    reference = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=200)
    ours = OneCycle(0.05, total_steps=200)
    for step in range(200):
        assert ours(step) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-9), step
        opt.step()
        reference.step()


def test_triangular_known_points():
    schedule = Triangular(2.0, total_steps=100)  # up from 0.4 to 2.0 by step 23, then to 0.14
    assert schedule(0) == pytest.approx(0.4)
    assert schedule(23) == pytest.approx(2.0)
    assert schedule(100) == pytest.approx(0.14)
    assert schedule(23 + 77 // 2) == pytest.approx(2.0 + (0.14 - 2.0) * (77 // 2) / 77)
    assert schedule(11) == pytest.approx(0.4 + 1.6 * 11 / 23)


def test_triangular_matches_airbench_interpolation():
    total = 317
    knots = ([0, int(0.23 * total), total], [0.2, 1.0, 0.07])
    schedule = Triangular(1.5, total_steps=total)
    for step in range(total + 1):
        assert schedule(step) == pytest.approx(1.5 * np.interp(step, *knots), rel=1e-12), step


def test_a_frozen_parameter_is_never_updated_and_keeps_no_state():
    model = one_parameter_model(value=1.0, grad=0.5)
    model.layers[0].frozen.add("weight")
    optimizer = SGD(model, lr=0.1, momentum=0.9, weight_decay=0.1)
    assert steps(optimizer, model, [0.5, 0.5]) == [1.0, 1.0]
    assert optimizer.state_dict() == {"steps": 2}


@pytest.mark.parametrize("kind", [SGD, AdamW])
def test_an_lr_scale_multiplies_the_step_but_not_the_weight_decay(kind):
    """A parameter with lr scale s moves like lr·s on its gradient; its decay step stays
    lr·λ·θ (SGD: λ/s added to the gradient; AdamW: θ(1 − lr·s·λ/s))."""
    plain, scaled = one_parameter_model(grad=0.0), one_parameter_model(grad=0.0)
    scaled.layers[0].lr_scales["weight"] = 8.0
    decay_only = [steps(kind(m, lr=0.1, weight_decay=0.1), m, [0.0]) for m in (plain, scaled)]
    assert decay_only[0] == pytest.approx(decay_only[1], rel=1e-12)
    plain, scaled = one_parameter_model(), one_parameter_model()
    scaled.layers[0].lr_scales["weight"] = 8.0
    moved = [1.0 - steps(SGD(m, lr=0.01), m, [0.5])[0] for m in (plain, scaled)]
    assert moved[1] == pytest.approx(8.0 * moved[0], rel=1e-12)


@pytest.mark.parametrize("name", ["constant", "step", "cosine", "onecycle", "triangular"])
def test_make_schedule_names(name):
    schedule = make_schedule(name, 0.1, total_steps=100, steps_per_epoch=10)
    assert 0.0 <= schedule(50) <= 0.1


def test_make_schedule_rejects_unknown_name():
    with pytest.raises(ValueError, match="schedule"):
        make_schedule("linear", 0.1, 100, 10)
