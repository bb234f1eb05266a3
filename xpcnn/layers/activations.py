"""Element-wise layers: activations, a constant scale, dropout."""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import Any

from xpcnn.backend import constant, default_generator, device, for_blocks, namespace, whole_arrays
from xpcnn.layers.base import Layer


def elementwise(fn: Callable[[Any], tuple[Any, ...]], x: Any, outputs: int) -> tuple[Any, ...]:
    """fn(x), for an element-wise fn that returns `outputs` arrays of x's shape: one call on the
    whole array where passes run whole (`whole_arrays`: one launch per operation); on NumPy block
    by block of rows (`for_blocks`: each block's chain of operations in cache, on every core),
    written into arrays made once."""
    xp = namespace(x)
    if whole_arrays(xp):
        return fn(x)
    x2 = xp.reshape(x, (-1, x.shape[-1]))
    results = [xp.empty_like(x2) for _ in range(outputs)]

    def block(_: int, rows: slice) -> None:
        for result, part in zip(results, fn(x2[rows, ...]), strict=True):
            result[rows, ...] = part

    for_blocks(block, x2.shape[0], x2.shape[1], xp, threaded=True)
    return tuple(xp.reshape(result, x.shape) for result in results)


class ReLU(Layer):
    """y = max(x, 0);  dy/dx = [y > 0].

    Where passes run whole, y is kept and backward is one compare and one `where` (3 operations
    in all); NumPy keeps the mask x > 0 and multiplies by it, since its `where` is ~10x slower.
    """

    commutes_with_max_pool = True  # Sequential may run it after a following MaxPool2D

    def forward(self, x: Any) -> Any:
        xp = namespace(x)
        if not whole_arrays(xp):
            self.y, self.mask = None, x > 0  # kept for backward
            return xp.maximum(x, 0.0)
        # a zero made once on the device: torch's shim copies a Python 0.0 there on every call
        zero = constant(xp, (), x.dtype, device(x), fill=0.0)
        self.y, self.mask = xp.maximum(x, zero), None  # kept for backward
        return self.y

    def backward(self, dy: Any, input_grad: bool = True) -> Any:
        if not input_grad:
            return None
        xp = namespace(dy)
        if self.mask is not None:
            return dy * xp.astype(self.mask, dy.dtype)
        return xp.where(self.y > 0, dy, self.y)  # y is 0 wherever it is not > 0


class GELU(Layer):
    """y = x·h,  h = ½(1 + tanh u),  u = √(2/π)(x + 0.044715x³);
    dy/dx = h + y·(1 − tanh u)·√(2/π)(1 + 3·0.044715x²).

    The array API has no erf, so this is PyTorch's `GELU(approximate="tanh")`. A training forward
    keeps dy/dx, so that backward is one multiply: 14 + 1 array operations in all.
    """

    C = math.sqrt(2.0 / math.pi)
    A = 0.044715

    def gelu(self, x: Any, with_slope: bool = False) -> tuple[Any, ...]:
        """(y,), or (y, dy/dx) `with_slope`."""
        square = x * x
        u = square * (self.C * self.A)
        u += self.C
        u *= x
        t = namespace(x).tanh(u)
        h = t * 0.5
        h += 0.5
        y = x * h
        if not with_slope:
            return (y,)
        slope = square  # in place: x² is not needed again
        slope *= 3.0 * self.C * self.A
        slope += self.C
        slope *= y
        slope *= 1.0 - t
        slope += h
        return y, slope

    def forward(self, x: Any) -> Any:
        if self.training:
            self.x = None
            y, self.slope = elementwise(partial(self.gelu, with_slope=True), x, 2)  # for backward
            return y
        self.x, self.slope = x, None  # kept for a backward after an evaluation forward
        return elementwise(self.gelu, x, 1)[0]

    def backward(self, dy: Any, input_grad: bool = True) -> Any:
        if not input_grad:
            return None
        if self.slope is None:
            _, self.slope = elementwise(partial(self.gelu, with_slope=True), self.x, 2)
        return dy * self.slope


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
