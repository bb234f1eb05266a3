"""What lets a training step be recorded once and replayed (a CUDA graph), checked on the CPU on
array_api_strict's device1, which stands in for an accelerator: after the first step, a step
moves nothing between host and device, issues the same operations with the same Python
arguments whatever its learning rate, and rebinds no state (the replay writes into the arrays
the recording saw)."""

import numpy as np
import pytest

from xpcnn.backend import asarray, manual_seed
from xpcnn.layers.flat import leaves
from xpcnn.models import build_model
from xpcnn.optim import SGD, Adam, Triangular
from xpcnn.train import TrainStep

pytest.importorskip("array_api_strict")
from xpcnn.opcount import count_strict  # noqa: E402


@pytest.fixture
def device1(monkeypatch):
    monkeypatch.setenv("XPCNN_BACKEND", "array_api_strict")
    monkeypatch.setenv("XPCNN_DEVICE", "device1")


def _setup(name, optimizer="sgd", steps=20):
    manual_seed(0)
    model = build_model(name, num_classes=10, image_size=16)
    if optimizer == "sgd":
        opt = SGD(model, lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    else:
        opt = Adam(model, lr=1e-3, weight_decay=1e-4)
    opt.set_schedule(Triangular(0.1, steps), steps)  # a different rate at every step
    rng = np.random.default_rng(0)
    x = asarray(rng.standard_normal((8, 3, 16, 16)), "float32")
    y = asarray(rng.integers(0, 10, 8), "int64")
    return model, opt, TrainStep(model, opt), x, y


def _counted_step(step, x, y):
    with count_strict() as counter:
        step(x, y)
    return counter


@pytest.mark.parametrize("name", ["seed", "fast"])
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_after_the_first_step_nothing_moves_between_host_and_device(device1, name, optimizer):
    _, _, step, x, y = _setup(name, optimizer)
    first = _counted_step(step, x, y)
    assert first.count("h2d") > 0  # the counter sees uploads: constants, the step index
    for _ in range(2):
        counter = _counted_step(step, x, y)
        assert (counter.count("h2d"), counter.count("d2h")) == (0, 0), [
            e for e in counter.events if e.kind in ("h2d", "d2h")
        ]


@pytest.mark.parametrize("name", ["seed", "fast"])
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_two_steps_with_different_learning_rates_issue_identical_traces(device1, name, optimizer):
    _, opt, step, x, y = _setup(name, optimizer)
    step(x, y)
    rates, traces = [], []
    for _ in range(2):
        rates.append(opt.lr)
        traces.append(_counted_step(step, x, y).trace())
    assert rates[0] != rates[1]
    assert len(traces[0]) > 100 and traces[0] == traces[1]


def test_a_python_learning_rate_would_show_in_the_trace(device1):
    """The trace records the Python numbers passed to operations: a step that multiplied by a
    host-side learning rate would differ between the two steps (so the test above can fail)."""
    _, opt, step, x, y = _setup("seed")
    step(x, y)
    with count_strict() as first:
        opt.model.layers[0].params["bias"] * 0.1
    with count_strict() as second:
        opt.model.layers[0].params["bias"] * 0.2
    assert first.trace() != second.trace()


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_a_step_rebinds_no_state(device1, optimizer):
    model, opt, step, x, y = _setup("fast", optimizer)
    step(x, y)

    def held():
        arrays = {**model.state_dict(), **opt.state_dict()}
        arrays.update({f"grad {prefix}{k}": v for prefix, layer in leaves(model)
                       for k, v in layer.gradients.items()})  # fmt: skip
        arrays["lr index"] = opt._step_index
        return {key: id(value) for key, value in arrays.items() if key != "steps"}

    before = held()
    step(x, y)
    assert held() == before
