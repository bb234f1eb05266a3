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
    Lookahead,
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


def test_lookahead_decay_follows_airbench_schedule():
    """d = 0.95^5 · (step / total)^3 at every 5th step, nothing between, 1 (fast ← slow) after
    the last step when it is not a 5th."""
    lookahead = Lookahead(total_steps=312)
    assert lookahead.decay(5) == pytest.approx(0.95**5 * (5 / 312) ** 3, rel=1e-12)
    assert lookahead.decay(310) == pytest.approx(0.95**5 * (310 / 312) ** 3, rel=1e-12)
    assert [lookahead.decay(s) for s in (1, 4, 6, 311)] == [None] * 4
    assert lookahead.decay(312) == 1.0
    assert Lookahead(total_steps=310).decay(310) == pytest.approx(0.95**5, rel=1e-12)
    with pytest.raises(ValueError, match="Lookahead"):
        Lookahead(total_steps=0)


def fast_model(seed=0):
    import xpcnn
    from xpcnn.models import build_model

    xpcnn.manual_seed(seed)
    return build_model("fast", width=4, image_size=8, dtype="float64")


def test_lookahead_matches_the_rule_applied_by_hand_to_weights_and_statistics():
    """SGD with Lookahead against plain SGD whose state dict is synced by hand with airbench's
    rule (slow copy of the initial state; every 5th step lerp and copy back; copy at the end)."""
    from xpcnn.train import train_step

    total = 12
    rng = np.random.default_rng(0)
    batches = [(rng.standard_normal((4, 3, 8, 8)), rng.integers(0, 10, 4)) for _ in range(total)]
    model, by_hand = fast_model(), fast_model()
    optimizer = SGD(model, lr=0.2, momentum=0.85, nesterov=True)
    Lookahead(total_steps=total).attach(optimizer)
    plain = SGD(by_hand, lr=0.2, momentum=0.85, nesterov=True)
    floats = [k for k, v in by_hand.state_dict().items() if to_numpy(v).dtype.kind == "f"]
    slow = {k: to_numpy(by_hand.state_dict()[k]).copy() for k in floats}
    for step, (x, y) in enumerate(batches, start=1):
        train_step(model, optimizer, asarray(x), asarray(y))
        train_step(by_hand, plain, asarray(x), asarray(y))
        if step % 5 and step < total:
            continue
        decay = 0.95**5 * (step / total) ** 3 if step % 5 == 0 else 1.0
        state = by_hand.state_dict()
        for k in floats:
            slow[k] = decay * slow[k] + (1 - decay) * to_numpy(state[k])
            state[k] = slow[k]
        by_hand.load_state_dict(state)
    moved = False
    for key, value in by_hand.state_dict().items():
        np.testing.assert_allclose(to_numpy(model.state_dict()[key]), to_numpy(value),
                                   rtol=1e-10, atol=1e-12, err_msg=key)  # fmt: skip
        moved |= not np.allclose(to_numpy(value), to_numpy(fast_model().state_dict()[key]))
    assert moved
    assert "slow.4.running_var" in optimizer.state_dict()
    assert "slow.4.num_batches_tracked" not in optimizer.state_dict()


def test_lookahead_state_round_trips_and_is_checked():
    from xpcnn.train import train_step

    model = fast_model()
    optimizer = SGD(model, lr=0.1, momentum=0.9)
    Lookahead(total_steps=10).attach(optimizer)
    x, y = asarray(np.ones((2, 3, 8, 8))), asarray(np.array([1, 2]))
    for _ in range(3):
        train_step(model, optimizer, x, y)
    state = {k: to_numpy(v) for k, v in optimizer.state_dict().items()}
    twin_model = fast_model()
    twin_model.load_state_dict(model.state_dict())
    twin = SGD(twin_model, lr=0.1, momentum=0.9)
    Lookahead(total_steps=10).attach(twin)
    twin.load_state_dict(state)
    for _ in range(3):  # through the sync at step 5, which uses the restored slow copy
        train_step(model, optimizer, x, y)
        train_step(twin_model, twin, x, y)
    for key, value in model.state_dict().items():
        assert np.array_equal(to_numpy(twin_model.state_dict()[key]), to_numpy(value)), key
    with pytest.raises(ValueError, match="no parameter '99.weight'"):
        twin.load_state_dict({**state, "slow.99.weight": state["slow.0.weight"]})
    without = SGD(fast_model(), lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match="keeps momentum"):
        without.load_state_dict(state)
