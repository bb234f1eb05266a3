"""The operation counter (`xpcnn.opcount`): exact counts of small known sequences, host traffic,
the scalars of a trace, and a training step attributed to its layers.

The array_api_strict counter is independent of XPCNN_BACKEND (it patches array_api_strict
itself); the tests that train set the backend they need."""

import numpy as np
import pytest

from xpcnn.layers import Sequential
from xpcnn.layers.base import Layer
from xpcnn.opcount import (
    count_strict,
    count_torch,
    counter_for,
    layer_labels,
    torch_step_scopes,
    xpcnn_step_scopes,
)

xp = pytest.importorskip("array_api_strict", reason="the counter counts array_api_strict")
DEVICE1 = xp.Device("device1")


@pytest.fixture
def a():
    return xp.reshape(xp.arange(12.0, device=DEVICE1), (3, 4))


@pytest.fixture
def b():
    return xp.ones((3, 4), device=DEVICE1)


def events(fn):
    with count_strict() as counter:
        fn()
    return [(event.kind, event.name) for event in counter.events]


def set_positive_to_zero(a, b):
    a[a > 0] = 0.0


@pytest.mark.parametrize(
    "code, expected",
    [
        (lambda a, b: a + b, [("op", "__add__")]),
        (lambda a, b: xp.matmul(a, b.T), [("op", "matmul")]),  # .T: a view, not a call
        (lambda a, b: a[1:3, :], [("view", "__getitem__")]),
        (lambda a, b: a[0, 0], [("view", "__getitem__")]),  # a 0-d view in CuPy and torch
        (lambda a, b: xp.reshape(a, (12,)), [("view", "reshape")]),
        (lambda a, b: xp.reshape(a.T, (12,)), [("op", "reshape")]),  # not contiguous: a copy
        (lambda a, b: a.__iadd__(b), [("op", "__iadd__")]),  # returns a itself, and wrote it
        (set_positive_to_zero, [("op", "__gt__"), ("op", "__setitem__")]),
        (lambda a, b: xp.empty((3,), device=DEVICE1), [("alloc", "empty")]),
        (lambda a, b: xp.unstack(a), [("view", "unstack")]),  # it indexes a 3 times inside
        (lambda a, b: xp.finfo(xp.float32), []),  # makes no array
        (lambda a, b: (a.shape, a.ndim, a.dtype, a.device, a.size), []),
    ],
)
def test_strict_counter_counts_each_call_by_what_it_did(a, b, code, expected):
    assert events(lambda: code(a, b)) == expected


def test_strict_counter_counts_host_traffic_on_device1(a):
    host = xp.__array_namespace_info__().default_device()

    def step():
        xp.asarray(np.ones(3), device=DEVICE1)  # host data → device
        xp.asarray([1.0, 2.0], device=DEVICE1)
        float(xp.sum(a))  # a reduction, then a read
        bool(a[0, 0] > 0)
        a.to_device(host)
        xp.zeros(3).to_device(DEVICE1)  # made on the host (an op there), then copied over

    with count_strict() as counter:
        step()
    assert [counter.count(kind) for kind in ("op", "h2d", "d2h")] == [3, 3, 3]


def test_strict_trace_keeps_the_python_scalars_of_each_call(a):
    lr_small, lr_large = xp.asarray(0.01, device=DEVICE1), xp.asarray(0.1, device=DEVICE1)
    traces = []
    for scale, lr in ((0.5, lr_small), (0.25, lr_large)):
        with count_strict() as counter:
            a * scale
            a * lr
            xp.sum(a[1:, :], axis=1)
        traces.append(counter.trace())
    assert traces[0][0] == ("op", "__mul__", (0.5,))
    assert traces[1][0] == ("op", "__mul__", (0.25,))
    assert traces[0][1:] == traces[1][1:]  # a value on the device is not baked into the trace
    assert traces[0][2] == ("view", "__getitem__", (1, None, None, None, None, None))
    assert traces[0][3] == ("op", "sum", ("axis", 1))


def test_strict_counter_restores_the_namespace_on_exit(a, b):
    from array_api_strict._array_object import Array

    add, operator = xp.add, Array.__add__
    with count_strict():
        assert xp.add is not add and Array.__add__ is not operator
    assert xp.add is add and Array.__add__ is operator
    assert "__add__" in vars(Array)


class Double(Layer):
    """y = 2x, the test's own layer: one operation forward, one backward."""

    def forward(self, x):
        return x * 2.0

    def backward(self, dy, input_grad=True):
        return dy * 2.0 if input_grad else None


def test_a_training_step_is_attributed_to_layers_loss_and_optimizer(monkeypatch):
    monkeypatch.setenv("XPCNN_BACKEND", "array_api_strict")
    monkeypatch.setenv("XPCNN_DEVICE", "device1")
    from xpcnn.backend import asarray
    from xpcnn.layers import Dense
    from xpcnn.optim import SGD
    from xpcnn.train import train_step

    model = Sequential(Dense(4, 4), Double(), Dense(4, 10))
    optimizer = SGD(model, lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    x = asarray(np.ones((2, 4), dtype=np.float32))
    y = asarray(np.array([0, 3]), "int64")
    train_step(model, optimizer, x, y)
    with count_strict() as counter, xpcnn_step_scopes(counter, model, optimizer):
        train_step(model, optimizer, x, y)
    by_scope = counter.by_scope()
    assert layer_labels(model) == ["0 Dense", "1 Double", "2 Dense"]
    layers = [f"{label}/{phase}" for label in layer_labels(model) for phase in ("forward",
              "backward")]  # fmt: skip
    assert set(by_scope) <= {*layers, "loss", "optimizer", "other"}
    assert by_scope["1 Double/forward"] == by_scope["1 Double/backward"] == 1
    assert all(by_scope[scope] > 0 for scope in (*layers, "loss", "optimizer"))
    assert sum(by_scope.values()) == counter.count()
    assert not any("forward_channels_last" in vars(layer) for layer in model.layers)
    assert "step" not in vars(optimizer) and "forward" not in vars(model)


def test_counting_names_the_backends_it_can_count():
    assert counter_for("array_api_strict") is count_strict
    assert counter_for("torch") is count_torch
    from xpcnn.backend import BackendError

    with pytest.raises(BackendError, match="needs XPCNN_BACKEND=array_api_strict .* not numpy"):
        counter_for("numpy")


# --- PyTorch's dispatcher --------------------------------------------------------------------


def test_torch_counter_counts_aten_operations_not_views():
    torch = pytest.importorskip("torch", reason="PyTorch's dispatcher counts its operations")
    a, b = torch.ones(3, 4), torch.ones(3, 4)
    with count_torch() as counter:
        a + b
        a[1:3]
        a.t()
        a.view(12)
        float(a.sum())
        torch.asarray(0.5)
    assert [(e.kind, e.name) for e in counter.events if e.kind != "view"] == [
        ("op", "aten.add.Tensor"),
        ("op", "aten.sum.default"),
        ("d2h", "aten._local_scalar_dense.default"),
        ("h2d", "aten.lift_fresh.default"),
    ]
    assert counter.count("view") == 3
    assert counter.events[-1].scalars == (0.5,)


def test_torch_step_scopes_attribute_the_twin_step_without_changing_it():
    torch = pytest.importorskip("torch", reason="the twin is a PyTorch network")
    from xpcnn.bench import _torch_inputs, _torch_step
    from xpcnn.layers import Dense, ReLU
    from xpcnn.twin import torch_twin

    model = Sequential(Dense(8, 6), ReLU(), Dense(6, 10))
    twin = torch_twin(model)
    x, y, optimizer = _torch_inputs(twin, 4, (8,), foreach=True)
    _torch_step(twin, optimizer, x, y)
    with count_torch() as bare:
        _torch_step(twin, optimizer, x, y)
    with count_torch() as counter, torch_step_scopes(counter, twin, optimizer, ["a", "b", "c"]):
        _torch_step(twin, optimizer, x, y)
    by_scope = counter.by_scope()
    assert counter.count() == bare.count()
    assert sum(by_scope.values()) == counter.count()
    layers = [f"{label}/{phase}" for label in "abc" for phase in ("forward", "backward")]
    assert set(by_scope) == {*layers, "loss", "optimizer"}
    assert isinstance(x, torch.Tensor) and "step" not in vars(optimizer)


def test_bench_ops_scopes_add_up_to_each_total(monkeypatch):
    monkeypatch.setenv("XPCNN_BACKEND", "array_api_strict")
    monkeypatch.setenv("XPCNN_DEVICE", "device1")
    from importlib.util import find_spec

    from xpcnn.bench_ops import op_counts

    peer = find_spec("torch") is not None
    result = op_counts("seed", 2, count_strict, peer)
    assert result["layers"] == [f"{i} {name}" for i, name in enumerate(
        ["Conv2D", "ReLU", "MaxPool2D", "Conv2D", "ReLU", "MaxPool2D", "Flatten", "Dense",
         "ReLU", "Dense"])]  # fmt: skip
    for who in ("xpcnn", "twin") if peer else ("xpcnn",):
        assert sum(result[f"{who}_ops_by_scope"].values()) == result[f"{who}_ops"]
    if peer:
        assert result["ops_ratio"] == result["xpcnn_ops"] / result["twin_ops"]
