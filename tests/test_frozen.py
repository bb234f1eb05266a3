"""A frozen parameter's gradient is never computed, by every layer class that has parameters
(`Layer.needs_grad`, PyTorch's requires_grad=False)."""

import numpy as np
import pytest

from xpcnn import layers
from xpcnn.backend import asarray
from xpcnn.layers import BatchNorm1D, BatchNorm2D, Conv2D, Dense, Layer

WITH_PARAMETERS = [  # (maker, input shape): each layer class with parameters, every algorithm
    (lambda: Conv2D(3, 4, 3, algorithm="im2col"), (2, 6, 6, 3)),
    (lambda: Conv2D(16, 4, 3, algorithm="winograd2"), (2, 6, 6, 16)),
    (lambda: Conv2D(16, 4, 3, algorithm="winograd4"), (2, 8, 8, 16)),
    (lambda: Dense(5, 3), (4, 5)),
    (lambda: BatchNorm2D(3), (2, 4, 4, 3)),
    (lambda: BatchNorm1D(5), (4, 5)),
]
# the public layer classes without parameters of their own (Sequential's and Residual's are
# their layers')
WITHOUT = {"AvgPool2D", "Dropout", "Flatten", "GELU", "GlobalAvgPool2D", "GlobalMaxPool2D",
           "Layer", "MaxPool2D", "ReLU", "Residual", "Scale", "Sequential"}  # fmt: skip


def test_every_public_layer_class_is_listed_here():
    classes = {name: getattr(layers, name) for name in layers.__all__}
    public = {name for name, cls in classes.items() if isinstance(cls, type)
              and issubclass(cls, Layer)}  # fmt: skip
    covered = {type(make()).__name__ for make, _ in WITH_PARAMETERS}
    assert public == covered | WITHOUT


@pytest.mark.parametrize(("make", "shape"), WITH_PARAMETERS, ids=lambda v: str(v))
@pytest.mark.parametrize("input_grad", [True, False])
def test_a_frozen_parameter_gets_no_gradient(make, shape, input_grad):
    x = asarray(np.random.default_rng(0).standard_normal(shape), "float32")
    for frozen in [{name} for name in make().params] + [set(make().params)]:
        layer = make()
        layer.frozen |= frozen
        computed = []

        def accumulate(name, grad, layer=layer, computed=computed):
            computed.append(name)
            Layer.accumulate(layer, name, grad)

        layer.accumulate = accumulate
        y = layer.forward(x)
        layer.backward(y * 0 + 1, input_grad=input_grad)
        assert computed == [name for name in layer.params if name not in frozen]
        assert set(layer.gradients) == set(layer.params) - frozen
