import numpy as np
import pytest
from gradcheck import gradient_error

from xpcnn import backend
from xpcnn.backend import asarray, to_numpy
from xpcnn.layers import (
    GELU,
    AvgPool2D,
    BatchNorm1D,
    BatchNorm2D,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    GlobalAvgPool2D,
    GlobalMaxPool2D,
    MaxPool2D,
    ReLU,
    Scale,
    Sequential,
)
from xpcnn.models import build_model


@pytest.fixture(params=["whole", "blocks"])
def plan(request, monkeypatch):
    """Each pass on whole arrays (an accelerator's plan) and block by block (NumPy's)."""
    monkeypatch.setattr(backend, "PLAN", request.param)
    return request.param


@pytest.mark.parametrize("padding", ["same", "valid", 1, 2])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("bias", [True, False])
def test_conv2d_gradients_match_finite_differences(padding, stride, bias):
    layer = Conv2D(3, 4, kernel_size=3, stride=stride, padding=padding, bias=bias, dtype="float64")
    assert gradient_error(layer, input_shape=(2, 6, 7, 3)) < 1e-6


def test_conv2d_rectangular_kernel_gradients_match_finite_differences():
    layer = Conv2D(2, 3, kernel_size=(2, 3), padding="same", dtype="float64")
    assert gradient_error(layer, input_shape=(2, 5, 4, 2)) < 1e-6


@pytest.mark.parametrize(
    "layer",
    [
        MaxPool2D(2),
        MaxPool2D(3, stride=2),
        MaxPool2D(2, stride=1),
        AvgPool2D(2),
        AvgPool2D(3, stride=2),
        GlobalAvgPool2D(),
        GlobalMaxPool2D(),
        ReLU(),
        GELU(),
        Flatten(),
        Scale(1 / 9),
    ],
    ids=repr,
)
def test_parameterless_layer_gradients_match_finite_differences(layer):
    assert gradient_error(layer, input_shape=(2, 6, 7, 3)) < 1e-6


@pytest.mark.parametrize("bias", [True, False])
def test_dense_gradients_match_finite_differences(bias):
    assert gradient_error(Dense(5, 4, bias=bias, dtype="float64"), input_shape=(3, 5)) < 1e-6


@pytest.mark.parametrize("training", [True, False])
def test_batchnorm2d_gradients_match_finite_differences(training):
    layer = BatchNorm2D(3, dtype="float64").train(training)
    layer.set_state("weight", asarray(np.array([0.5, 1.5, -2.0])))
    layer.set_state("running_var", asarray(np.array([0.7, 1.3, 2.0])))
    assert gradient_error(layer, input_shape=(4, 3, 3, 3)) < 1e-6


@pytest.mark.parametrize("training", [True, False])
def test_batchnorm1d_gradients_match_finite_differences(training):
    layer = BatchNorm1D(5, dtype="float64").train(training)
    assert gradient_error(layer, input_shape=(6, 5)) < 1e-6


@pytest.mark.parametrize("training", [True, False])
def test_dropout_gradients_match_finite_differences(training):
    layer = Dropout(0.3).train(training)
    assert gradient_error(layer, input_shape=(4, 10)) < 1e-6


def test_sequential_gradients_match_finite_differences_through_nchw_boundary():
    model = Sequential(
        Conv2D(2, 3, 3, bias=False, dtype="float64"),  # a bias before BN has zero gradient
        BatchNorm2D(3, dtype="float64"),
        GELU(),
        MaxPool2D(2),
        Flatten(),
        Dense(12, 4, dtype="float64"),
    )
    assert gradient_error(model, input_shape=(2, 2, 4, 4)) < 1e-6


def test_conv2d_known_answer_sums_3x3_neighbourhood():
    layer = Conv2D(1, 1, kernel_size=3, padding="same", bias=False, dtype="float64")
    layer.set_state("weight", asarray(np.ones((1, 1, 3, 3))))
    x = np.arange(16.0).reshape(1, 4, 4, 1)
    expected = np.array(
        [
            [10, 18, 24, 18],
            [27, 45, 54, 39],
            [51, 81, 90, 63],
            [42, 66, 72, 50],
        ],
        dtype=float,
    )
    assert np.array_equal(to_numpy(layer(asarray(x)))[0, :, :, 0], expected)


def test_conv2d_known_answer_strided_valid_with_bias():
    layer = Conv2D(1, 2, kernel_size=2, stride=2, padding="valid", dtype="float64")
    weight = np.array(
        [[[[1, 0], [0, 0]]], [[[0, 0], [0, 1]]]], dtype=float
    )  # pick top-left, bottom-right
    layer.set_state("weight", asarray(weight))
    layer.set_state("bias", asarray(np.array([0.0, 100.0])))
    x = np.arange(16.0).reshape(1, 4, 4, 1)
    y = to_numpy(layer(asarray(x)))
    assert y.shape == (1, 2, 2, 2)
    assert np.array_equal(y[0, :, :, 0], [[0, 2], [8, 10]])
    assert np.array_equal(y[0, :, :, 1], [[105, 107], [113, 115]])


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "padding", "expected"),
    [
        (32, 3, 1, "same", 32),
        (32, 3, 2, "same", 16),
        (7, 3, 2, "same", 4),
        (32, 3, 1, "valid", 30),
        (32, 5, 1, 2, 32),
        (7, 3, 2, 0, 3),
    ],
)
def test_conv2d_output_shape(size, kernel, stride, padding, expected):
    layer = Conv2D(3, 5, kernel, stride=stride, padding=padding)
    assert layer(asarray(np.zeros((2, size, size, 3), dtype=np.float32))).shape == (
        2,
        expected,
        expected,
        5,
    )


def test_maxpool_known_answer_and_gradient_goes_to_first_maximum(plan):
    pool = MaxPool2D(2)
    x = np.array([[1, 3, 2, 2], [4, 0, 2, 1], [5, 6, 7, 8], [9, 9, 0, 1]], dtype=float)
    y = to_numpy(pool(asarray(x.reshape(1, 4, 4, 1))))
    assert np.array_equal(y[0, :, :, 0], [[4, 2], [9, 8]])
    dx = to_numpy(pool.backward(asarray(np.ones((1, 2, 2, 1)))))[0, :, :, 0]
    assert np.array_equal(dx, [[0, 0, 1, 0], [1, 0, 0, 0], [0, 0, 0, 1], [1, 0, 0, 0]])


def test_avgpool_known_answer_drops_incomplete_windows():
    x = np.arange(25.0).reshape(1, 5, 5, 1)
    y = to_numpy(AvgPool2D(2)(asarray(x)))[0, :, :, 0]
    assert np.array_equal(y, [[3, 5], [13, 15]])


def test_global_pools_known_answer():
    x = np.arange(24.0).reshape(2, 2, 3, 2)
    assert np.array_equal(to_numpy(GlobalAvgPool2D()(asarray(x))), x.mean(axis=(1, 2)))
    assert np.array_equal(to_numpy(GlobalMaxPool2D()(asarray(x))), x.max(axis=(1, 2)))


def test_batchnorm_running_statistics_follow_pytorch_update():
    layer = BatchNorm2D(2, momentum=0.1, dtype="float64")
    x = np.random.default_rng(0).normal(3.0, 2.0, size=(4, 3, 3, 2))
    layer(asarray(x))
    mean, var = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2), ddof=1)
    assert np.allclose(to_numpy(layer.buffers["running_mean"]), 0.1 * mean)
    assert np.allclose(to_numpy(layer.buffers["running_var"]), 0.9 + 0.1 * var)
    assert int(layer.buffers["num_batches_tracked"]) == 1


def test_batchnorm_updates_its_running_statistics_in_place(plan):
    layer = BatchNorm2D(2, momentum=0.1, dtype="float64")
    before = dict(layer.buffers)  # a model's state may be views into one buffer: never rebound
    x = np.random.default_rng(0).normal(3.0, 2.0, size=(4, 3, 3, 2))
    layer(asarray(x))
    layer(asarray(x))
    assert all(layer.buffers[name] is value for name, value in before.items())
    mean = x.mean(axis=(0, 1, 2))
    assert np.allclose(to_numpy(before["running_mean"]), (1 - 0.9**2) * mean)
    assert int(before["num_batches_tracked"]) == 2


def test_batchnorm_eval_uses_running_statistics():
    layer = BatchNorm1D(2, dtype="float64").eval()
    layer.set_state("running_mean", asarray(np.array([1.0, -1.0])))
    layer.set_state("running_var", asarray(np.array([4.0, 0.25])))
    y = to_numpy(layer(asarray(np.array([[3.0, 0.0]]))))
    assert np.allclose(y, [[2.0 / np.sqrt(4 + 1e-5), 1.0 / np.sqrt(0.25 + 1e-5)]])


def test_dropout_scales_kept_units_and_is_identity_in_eval():
    layer = Dropout(0.25)
    y = to_numpy(layer(asarray(np.ones((200, 50), dtype=np.float32))))
    assert set(np.unique(y)) == {0.0, np.float32(1 / 0.75)}
    assert abs((y == 0).mean() - 0.25) < 0.02
    layer.eval()
    assert np.array_equal(
        to_numpy(layer(asarray(np.ones((3, 4), dtype=np.float32)))), np.ones((3, 4))
    )


def test_layers_are_float32_by_default():
    model = build_model("seed")
    assert all(str(v.dtype).endswith("float32") for v in model.parameters())
    y = model(asarray(np.zeros((2, 3, 32, 32), dtype=np.float32)))
    assert str(y.dtype).endswith("float32")


def test_he_initialisation_has_variance_two_over_fan_in():
    layer = Conv2D(64, 128, 3, dtype="float64")
    weight = to_numpy(layer.params["weight"])
    assert abs(weight.var() - 2.0 / (64 * 9)) / (2.0 / (64 * 9)) < 0.02
    assert np.all(to_numpy(layer.params["bias"]) == 0)


def test_state_dict_round_trips_and_rejects_wrong_shapes():
    model, other = build_model("seed"), build_model("seed")
    other.load_state_dict({k: to_numpy(v) for k, v in model.state_dict().items()})
    for (k, a), (_, b) in zip(model.state_dict().items(), other.state_dict().items(), strict=True):
        assert np.array_equal(to_numpy(a), to_numpy(b)), k
    bad = dict(model.state_dict())
    bad["0.weight"] = np.zeros((32, 3, 5, 5), dtype=np.float32)
    with pytest.raises(ValueError, match="0.weight"):
        other.load_state_dict(bad)
    with pytest.raises(ValueError, match="missing"):
        other.load_state_dict({})


def test_relu_before_max_pool_runs_after_it_with_identical_results():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 8, 8))
    x[0, 0, :2, :2] = 0.0  # a window of ties at zero
    reordered = Sequential(Conv2D(3, 4, 3, dtype="float64"), ReLU(), MaxPool2D(2), Flatten())
    assert reordered.execution_order() == [0, 2, 1, 3]
    plain = [Conv2D(3, 4, 3, dtype="float64"), ReLU(), MaxPool2D(2), Flatten()]
    for name, value in reordered.layers[0].named_state():
        plain[0].set_state(name, value)
    h = plain[0](asarray(np.transpose(x, (0, 2, 3, 1))))
    expected = plain[3](plain[2](plain[1](h)))
    y = reordered(asarray(x))
    assert np.array_equal(to_numpy(y), to_numpy(expected))
    dy = rng.standard_normal(y.shape)
    reordered.zero_grad()
    dx = to_numpy(reordered.backward(asarray(dy)))
    plain[0].zero_grad()
    dh = plain[1].backward(plain[2].backward(plain[3].backward(asarray(dy))))
    expected_dx = np.transpose(to_numpy(plain[0].backward(dh)), (0, 3, 1, 2))
    assert np.array_equal(dx, expected_dx)
    assert np.array_equal(
        to_numpy(reordered.grads()["0.weight"]), to_numpy(plain[0].grads()["weight"])
    )


def _param_grads_after_backward(layer, x, dy, input_grad):
    layer(asarray(x))
    layer.zero_grad()
    dx = layer.backward(asarray(dy), input_grad=input_grad)
    return dx, {name: to_numpy(g) for name, g in layer.grads().items()}


@pytest.mark.parametrize(
    ("layer", "input_shape"),
    [
        (Conv2D(3, 4, 3, stride=2, dtype="float64"), (2, 7, 6, 3)),
        (Dense(5, 4, dtype="float64"), (3, 5)),
        (
            Sequential(
                Conv2D(2, 3, 3, dtype="float64"),
                BatchNorm2D(3, dtype="float64"),
                ReLU(),
                MaxPool2D(2),
                Flatten(),
                Dense(12, 4, dtype="float64"),
            ),
            (2, 2, 4, 4),
        ),
    ],
    ids=["Conv2D", "Dense", "Sequential"],
)
def test_backward_without_input_grad_returns_none_and_the_same_parameter_gradients(
    layer, input_shape
):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(input_shape)
    dy = rng.standard_normal(to_numpy(layer(asarray(x))).shape)
    dx, with_input = _param_grads_after_backward(layer, x, dy, input_grad=True)
    none, without_input = _param_grads_after_backward(layer, x, dy, input_grad=False)
    assert dx is not None and none is None
    assert with_input.keys() == without_input.keys()
    for name in with_input:
        assert np.array_equal(with_input[name], without_input[name]), name


@pytest.mark.parametrize(
    "make", [lambda: Conv2D(3, 4, 3), lambda: BatchNorm2D(4)], ids=["Conv2D", "BatchNorm2D"]
)
def test_single_layer_state_dict_round_trips_keeping_its_dtypes(make):
    layer, other = make(), make()
    rng = np.random.default_rng(0)
    state = {k: np.round(rng.standard_normal(v.shape) * 10) for k, v in layer.state_dict().items()}
    dtypes = {k: str(v.dtype) for k, v in layer.state_dict().items()}
    layer.load_state_dict(state)  # float64 values into float32 and int64 entries
    assert {k: str(v.dtype) for k, v in layer.state_dict().items()} == dtypes
    other.load_state_dict(layer.state_dict())
    for key, value in other.state_dict().items():
        assert np.array_equal(to_numpy(value), state[key]), key


def test_batchnorm2d_state_dict_holds_running_statistics_with_their_dtypes():
    state = BatchNorm2D(4).state_dict()
    assert list(state) == ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    assert str(state["num_batches_tracked"].dtype).endswith("int64")
    assert str(state["running_var"].dtype).endswith("float32")


def test_single_layer_load_state_dict_rejects_a_wrong_shape():
    layer = Conv2D(3, 4, 3)
    state = {k: to_numpy(v) for k, v in layer.state_dict().items()}
    state["weight"] = np.zeros((4, 3, 5, 5), dtype=np.float32)
    with pytest.raises(
        ValueError, match=r"'weight' has shape \(4, 3, 5, 5\), expected \(4, 3, 3, 3\)"
    ):
        layer.load_state_dict(state)


@pytest.mark.parametrize("layer", [MaxPool2D(2), MaxPool2D(3, stride=2), GELU()], ids=repr)
def test_backward_after_an_evaluation_forward_matches_training(layer, plan):
    rng = np.random.default_rng(0)
    x = np.round(rng.standard_normal((2, 6, 6, 3)), 1)  # rounded: ties
    dy = rng.standard_normal(to_numpy(layer(asarray(x))).shape)
    trained = to_numpy(layer.train()(asarray(x))), to_numpy(layer.backward(asarray(dy)))
    evaluated = to_numpy(layer.eval()(asarray(x))), to_numpy(layer.backward(asarray(dy)))
    assert all(np.array_equal(a, b) for a, b in zip(trained, evaluated, strict=True))


def _strict_copy(layer, strict):
    for name, value in layer.state_dict().items():
        layer.set_state(name, strict.asarray(to_numpy(value)))
    return layer


WHOLE_ARRAY_OPERATIONS = [  # (layer, input shape, forward + backward operations in training)
    (ReLU(), (2, 4, 4, 3), 3),
    (GELU(), (2, 4, 4, 3), 15),
    (BatchNorm2D(3), (2, 4, 4, 3), 25),
    (MaxPool2D(2), (2, 4, 4, 3), 5),
    (MaxPool2D(3, stride=2), (2, 7, 7, 3), 3 + 3 + 9),  # backward: one add per window offset
    (AvgPool2D(2), (2, 4, 4, 3), 2),
    (GlobalMaxPool2D(), (2, 4, 4, 3), 4),
    (GlobalAvgPool2D(), (2, 4, 4, 3), 2),
]


@pytest.mark.parametrize(("layer", "shape", "expected"), WHOLE_ARRAY_OPERATIONS, ids=repr)
def test_whole_array_passes_issue_the_fewest_operations(layer, shape, expected):
    """Counted on array_api_strict (every call and operator of the namespace; views free) after
    a first step, which makes the constants (window offsets, zeros) once."""
    strict = pytest.importorskip("array_api_strict")
    from xpcnn.opcount import count_strict

    layer = _strict_copy(layer, strict)
    rng = np.random.default_rng(0)
    x = strict.asarray(rng.standard_normal(shape).astype(np.float32))
    dy = strict.asarray(np.ones(layer(x).shape, dtype=np.float32))
    layer.backward(dy)
    layer.zero_grad()
    with count_strict() as forward:
        layer(x)
    with count_strict() as backward:
        layer.backward(dy)
    assert forward.count() + backward.count() == expected
