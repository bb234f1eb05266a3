"""Fully connected layer."""

from __future__ import annotations

from typing import Any

from xpcnn.backend import dtype_of, namespace
from xpcnn.layers.base import Layer, he_normal, zeros


class Dense(Layer):
    """y = x @ W.T + b.   x: (N, in) → y: (N, out); W: (out, in) as in PyTorch's Linear."""

    def __init__(
        self, in_features: int, out_features: int, bias: bool = True, dtype: Any = "float32"
    ) -> None:
        super().__init__()
        dtype = dtype_of(dtype)
        self.in_features, self.out_features = in_features, out_features
        self.params["weight"] = he_normal((out_features, in_features), in_features, dtype)
        if bias:
            self.params["bias"] = zeros((out_features,), dtype)

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        if tuple(input_shape) != (self.in_features,):
            raise ValueError(f"Dense: expected ({self.in_features},) inputs, got {input_shape}")
        return (self.out_features,)

    def flops(self, input_shape: tuple[int, ...]) -> int:
        """2·in·out: one multiply-add per weight."""
        return 2 * self.in_features * self.out_features

    def forward(self, x: Any) -> Any:
        self.x = x  # kept for backward
        y = x @ self.params["weight"].T
        return y + self.params["bias"] if "bias" in self.params else y

    def backward(self, dy: Any, input_grad: bool = True) -> Any:
        if self.needs_grad("weight"):
            self.accumulate("weight", dy.T @ self.x)
        if self.needs_grad("bias"):
            self.accumulate("bias", namespace(dy).sum(dy, axis=0))
        return dy @ self.params["weight"] if input_grad else None

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, bias={'bias' in self.params}"
