"""A convolution's two plans agree: col2im with NumPy's blocks, and on whole arrays (an
accelerator) the input gradient as one transposed convolution (`transposed_input_grad`)."""

import numpy as np
import pytest

from xpcnn import backend
from xpcnn.backend import asarray, to_numpy
from xpcnn.layers import Conv2D

SHAPES = [  # (in, out, kernel, stride, padding, input H, W): odd sizes, strides, asymmetric pads
    (3, 4, 3, 1, "same", 7, 6),
    (3, 4, 3, 2, "same", 9, 8),
    (2, 5, 3, 2, 1, 10, 11),
    (4, 3, 2, 1, "same", 6, 7),
    (3, 2, 3, 1, "valid", 8, 5),
    (2, 3, 5, 3, 2, 12, 13),
]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_transposed_input_gradient_equals_col2im(shape, monkeypatch):
    c_in, c_out, kernel, stride, padding, h, w = shape
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, h, w, c_in))
    found = {}
    for plan in ("blocks", "whole"):
        monkeypatch.setattr(backend, "PLAN", plan)
        backend.manual_seed(0)
        layer = Conv2D(c_in, c_out, kernel, stride=stride, padding=padding, dtype="float64",
                       algorithm="im2col")  # fmt: skip
        y = layer.forward(asarray(x, "float64"))
        dy = np.random.default_rng(1).standard_normal(tuple(y.shape))
        dx = layer.backward(asarray(dy, "float64"))
        found[plan] = [to_numpy(dx), *(to_numpy(g) for g in layer.grads().values())]
    for blocks, whole in zip(found["blocks"], found["whole"], strict=True):
        assert blocks.shape == whole.shape
        assert np.allclose(blocks, whole, rtol=1e-12, atol=1e-12)
