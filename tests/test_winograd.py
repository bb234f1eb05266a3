"""Winograd convolution against the im2col reference: outputs and every gradient."""

import numpy as np
import pytest
from gradcheck import gradient_error, relative_error

from xpcnn import backend
from xpcnn.backend import asarray, to_numpy
from xpcnn.layers import Conv2D, winograd
from xpcnn.layers.conv import choose_algorithm
from xpcnn.layers.winograd import TRANSFORMS, transform_kernel


def _twins(algorithm, c_in, c_out, padding, bias, dtype):
    reference = Conv2D(c_in, c_out, 3, padding=padding, bias=bias, dtype=dtype, algorithm="im2col")
    fast = Conv2D(c_in, c_out, 3, padding=padding, bias=bias, dtype=dtype, algorithm=algorithm)
    for name, value in reference.named_state():
        fast.set_state(name, value)
    return reference, fast


def _forward_backward(layer, x, dy, input_grad=True):
    y = to_numpy(layer(asarray(x)))
    layer.zero_grad()
    dx = layer.backward(asarray(dy), input_grad=input_grad)
    grads = {name: to_numpy(g) for name, g in layer.grads().items()}
    return y, None if dx is None else to_numpy(dx), grads


def _worst_error(algorithm, input_shape, c_out, padding, dtype, bias=True):
    rng = np.random.default_rng(0)
    reference, fast = _twins(algorithm, input_shape[-1], c_out, padding, bias, dtype)
    x = rng.standard_normal(input_shape).astype(dtype)
    out_shape = to_numpy(reference(asarray(x))).shape
    dy = rng.standard_normal(out_shape).astype(dtype)
    y0, dx0, g0 = _forward_backward(reference, x, dy)
    y1, dx1, g1 = _forward_backward(fast, x, dy)
    assert y1.shape == y0.shape and dx1.shape == dx0.shape
    return max(
        relative_error(y0, y1),
        relative_error(dx0, dx1),
        *(relative_error(g0[k], g1[k]) for k in g0),
    )


CASES = [  # (N, H, W, C_in), C_out, padding: odd and even sizes, sizes that leave partial tiles
    ((2, 7, 9, 5), 6, "same"),
    ((2, 8, 8, 4), 3, "same"),
    ((3, 5, 6, 3), 4, "valid"),
    ((1, 10, 7, 2), 5, "valid"),
    ((2, 6, 5, 3), 2, 2),
    ((2, 3, 3, 2), 3, "same"),
]


@pytest.mark.parametrize("algorithm", ["winograd2", "winograd4"])
@pytest.mark.parametrize(("input_shape", "c_out", "padding"), CASES)
def test_winograd_matches_im2col_in_float64(algorithm, input_shape, c_out, padding):
    assert _worst_error(algorithm, input_shape, c_out, padding, "float64") < 1e-10


@pytest.mark.parametrize("algorithm", ["winograd2", "winograd4"])
@pytest.mark.parametrize(("input_shape", "c_out", "padding"), CASES)
def test_winograd_matches_im2col_in_float32(algorithm, input_shape, c_out, padding):
    assert _worst_error(algorithm, input_shape, c_out, padding, "float32") < 1e-5


@pytest.mark.parametrize("algorithm", ["winograd2", "winograd4"])
def test_winograd_matches_im2col_in_float32_at_the_fast_presets_widths(algorithm):
    assert _worst_error(algorithm, (4, 8, 8, 128), 128, "same", "float32", bias=False) < 1e-5


@pytest.mark.parametrize("algorithm", ["winograd2", "winograd4"])
def test_winograd_in_chunks_of_images_matches_im2col(algorithm, monkeypatch):
    monkeypatch.setattr(backend, "PLAN", "blocks")  # chunks on any backend, as NumPy cuts them
    monkeypatch.setattr(winograd, "CHUNK_BYTES", 1)  # one image per chunk
    assert _worst_error(algorithm, (5, 7, 6, 3), 4, "same", "float64") < 1e-10


@pytest.mark.parametrize("algorithm", ["winograd2", "winograd4"])
def test_winograd_gradients_match_finite_differences(algorithm):
    layer = Conv2D(3, 4, 3, padding="same", dtype="float64", algorithm=algorithm)
    assert gradient_error(layer, input_shape=(2, 5, 6, 3)) < 1e-6


@pytest.mark.parametrize("algorithm", ["winograd2", "winograd4"])
def test_winograd_without_input_grad_gives_none_and_the_same_kernel_gradient(algorithm):
    rng = np.random.default_rng(1)
    layer = Conv2D(3, 4, 3, dtype="float64", algorithm=algorithm)
    x, dy = rng.standard_normal((2, 6, 6, 3)), rng.standard_normal((2, 6, 6, 4))
    _, dx, with_input = _forward_backward(layer, x, dy)
    _, none, without_input = _forward_backward(layer, x, dy, input_grad=False)
    assert dx is not None and none is None
    for name in with_input:
        assert np.array_equal(with_input[name], without_input[name]), name


@pytest.mark.parametrize("m", [2, 4])
def test_winograd_transforms_compute_a_1d_correlation_exactly(m):
    # y = Aᵀ[(G g) ⊙ (Bᵀ d)]: the 1-D identity behind the 2-D algorithm, in exact arithmetic
    bt, g, at = (TRANSFORMS[m][k] for k in ("BT", "G", "AT"))
    d, kernel = list(range(1, m + 3)), [2, -1, 3]
    u = [sum(g[a][r] * kernel[r] for r in range(3)) for a in range(m + 2)]
    v = [sum(bt[a][j] * d[j] for j in range(m + 2)) for a in range(m + 2)]
    y = [sum(at[i][a] * u[a] * v[a] for a in range(m + 2)) for i in range(m)]
    assert y == [sum(d[i + r] * kernel[r] for r in range(3)) for i in range(m)]


def test_transformed_kernel_has_one_slab_per_tile_position():
    weight = asarray(np.ones((5, 3, 3, 3), dtype=np.float32))
    assert transform_kernel(weight, 2).shape == (16, 3, 5)
    assert transform_kernel(weight, 4).shape == (36, 3, 5)


@pytest.mark.parametrize(("plan", "expected"), [("blocks", "winograd4"), ("whole", "im2col")])
def test_auto_takes_winograd_on_the_cpu_plan_and_im2col_on_an_accelerator(plan, expected,
                                                                          monkeypatch):  # fmt: skip
    monkeypatch.setattr(backend, "PLAN", plan)
    assert choose_algorithm((3, 3), 1, 64) == expected
    assert Conv2D(64, 64, 3).algorithm == expected


def test_auto_keeps_im2col_for_other_shapes():
    assert choose_algorithm((3, 3), 2, 64) == "im2col"
    assert choose_algorithm((5, 5), 1, 64) == "im2col"
    assert choose_algorithm((3, 3), 1, 3) == "im2col"  # a stem conv: K = C_in too small
    assert Conv2D(64, 64, 3, stride=2).algorithm == "im2col"


def test_winograd_rejects_shapes_it_cannot_compute():
    with pytest.raises(ValueError, match="3x3 kernel and stride 1"):
        Conv2D(3, 4, 3, stride=2, algorithm="winograd2")
    with pytest.raises(ValueError, match="algorithm"):
        Conv2D(3, 4, 3, algorithm="fft")
