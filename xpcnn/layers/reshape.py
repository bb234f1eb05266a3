"""Flatten: the bridge from feature maps to dense layers."""

from __future__ import annotations

from math import prod
from typing import Any

from xpcnn.backend import namespace
from xpcnn.layers.base import Layer


class Flatten(Layer):
    """(N, H, W, C) → (N, C·H·W) in PyTorch's (C, H, W) order, so Dense weights are
    interchangeable with `torch.nn.Flatten` + `Linear`; other shapes flatten as they are."""

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        return (prod(input_shape),)

    def forward(self, x: Any) -> Any:
        xp = namespace(x)
        self.input_shape = x.shape
        if x.ndim == 4:
            x = xp.permute_dims(x, (0, 3, 1, 2))
        return xp.reshape(x, (x.shape[0], -1))

    def backward(self, dy: Any, input_grad: bool = True) -> Any:
        if not input_grad:
            return None
        xp = namespace(dy)
        if len(self.input_shape) != 4:
            return xp.reshape(dy, self.input_shape)
        n, h, w, c = self.input_shape
        return xp.permute_dims(xp.reshape(dy, (n, c, h, w)), (0, 2, 3, 1))
