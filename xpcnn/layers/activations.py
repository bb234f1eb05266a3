"""Element-wise layers: activations, a constant scale, dropout."""

from __future__ import annotations

import math
from typing import Any

from xpcnn.backend import default_generator, for_blocks, namespace
from xpcnn.layers.base import Layer


class ReLU(Layer):
    """y = max(x, 0);  dy/dx = [x > 0]."""

    commutes_with_max_pool = True  # Sequential may run it after a following MaxPool2D

    def forward(self, x: Any) -> Any:
        self.mask = x > 0  # kept for backward
        return namespace(x).maximum(x, 0.0)

    def backward(self, dy: Any, input_grad: bool = True) -> Any:
        if not input_grad:
            return None
        # a multiply by the 0/1 mask: NumPy's `where` is ~10x slower on large arrays
        return dy * namespace(dy).astype(self.mask, dy.dtype)


class GELU(Layer):
    """y = x·Φ(x), tanh form: y = x·h,  h = ½(1 + tanh u),  u = √(2/π)(x + 0.044715x³);
    dy/dx = h + 2h(1 − h)·x·√(2/π)(1 + 3·0.044715x²).

    The array API has no erf, so this is PyTorch's `GELU(approximate="tanh")`. The passes run
    block by block (`for_blocks`: in cache, on every core), with in-place updates.
    """

    C = math.sqrt(2.0 / math.pi)
    A = 0.044715

    def forward(self, x: Any) -> Any:
        xp = namespace(x)
        x2 = xp.reshape(x, (-1, x.shape[-1]))
        self.x, self.h = x2, xp.empty_like(x2)  # kept for backward
        y = xp.empty_like(x2)

        def block(_: int, rows: slice) -> None:
            xb = x2[rows, ...]
            u = xb * xb
            u *= self.C * self.A
            u += self.C
            u *= xb
            h = xp.tanh(u)
            h *= 0.5
            h += 0.5
            self.h[rows, ...] = h
            y[rows, ...] = xb * h

        for_blocks(block, x2.shape[0], x2.shape[1], xp, threaded=True)
        return xp.reshape(y, x.shape)

    def backward(self, dy: Any, input_grad: bool = True) -> Any:
        if not input_grad:
            return None
        xp = namespace(dy)
        dy2 = xp.reshape(dy, self.x.shape)
        dx = xp.empty_like(dy2)

        def block(_: int, rows: slice) -> None:
            x, h = self.x[rows, ...], self.h[rows, ...]
            slope = x * x
            slope *= 6.0 * self.A * self.C
            slope += 2.0 * self.C
            slope *= x
            d = 1.0 - h
            d *= h
            d *= slope
            d += h
            d *= dy2[rows, ...]
            dx[rows, ...] = d

        for_blocks(block, dy2.shape[0], dy2.shape[1], xp, threaded=True)
        return xp.reshape(dx, dy.shape)


class Scale(Layer):
    """y = s·x for a constant s;  dy/dx = s (airbench scales its logits by 1/9)."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = float(factor)

    def forward(self, x: Any) -> Any:
        return x * self.factor

    def backward(self, dy: Any, input_grad: bool = True) -> Any:
        return dy * self.factor if input_grad else None

    def extra_repr(self) -> str:
        return f"{self.factor:g}"


class Dropout(Layer):
    """Training: y = x·m / (1 − p) with m ~ Bernoulli(1 − p); evaluation: y = x."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"Dropout: p must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: Any) -> Any:
        if not self.training or self.p == 0.0:
            self.scale = None
            return x
        xp = namespace(x)
        keep = default_generator().uniform(x.shape, dtype=x.dtype) >= self.p
        self.scale = xp.astype(keep, x.dtype) * (1.0 / (1.0 - self.p))  # kept for backward
        return x * self.scale

    def backward(self, dy: Any, input_grad: bool = True) -> Any:
        if not input_grad:
            return None
        return dy if self.scale is None else dy * self.scale

    def extra_repr(self) -> str:
        return f"p={self.p}"
