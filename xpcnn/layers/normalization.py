"""Batch normalisation with running statistics (PyTorch's semantics and state names)."""

from __future__ import annotations

from typing import Any

from xpcnn.backend import dtype_of, namespace, xp
from xpcnn.layers.base import Layer, ones, zeros


class _BatchNorm(Layer):
    """y = γ·(x − μ)/√(σ² + ε) + β over the channel axis (last).

    Training uses the batch's μ, σ² (biased) and updates running_mean / running_var (unbiased)
    with `momentum`; evaluation uses the running statistics.
    """

    axes: tuple[int, ...] = ()
    ndim = 0

    def __init__(
        self, num_features: int, eps: float = 1e-5, momentum: float = 0.1, dtype: Any = "float32"
    ) -> None:
        super().__init__()
        dtype = dtype_of(dtype)
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.params["weight"] = ones((num_features,), dtype)
        self.params["bias"] = zeros((num_features,), dtype)
        self.buffers["running_mean"] = zeros((num_features,), dtype)
        self.buffers["running_var"] = ones((num_features,), dtype)
        self.buffers["num_batches_tracked"] = xp().asarray(0, dtype=xp().int64)

    def forward(self, x: Any) -> Any:
        if x.ndim != self.ndim:
            raise ValueError(
                f"{type(self).__name__}: expected a {self.ndim}-D input, got {x.ndim}-D"
            )
        space = namespace(x)
        if self.training:
            mean = space.mean(x, axis=self.axes)
            var = space.var(x, axis=self.axes)
            count = x.size // self.num_features
            unbiased = var * (count / max(count - 1, 1))
            m = self.momentum
            self.buffers["running_mean"] = (1 - m) * self.buffers["running_mean"] + m * mean
            self.buffers["running_var"] = (1 - m) * self.buffers["running_var"] + m * unbiased
            self.buffers["num_batches_tracked"] = self.buffers["num_batches_tracked"] + 1
        else:
            mean, var = self.buffers["running_mean"], self.buffers["running_var"]
        self.inv_std = 1.0 / space.sqrt(var + self.eps)  # kept for backward
        self.x_hat = (x - mean) * self.inv_std
        return self.x_hat * self.params["weight"] + self.params["bias"]

    def backward(self, dy: Any) -> Any:
        space = namespace(dy)
        self.accumulate("weight", space.sum(dy * self.x_hat, axis=self.axes))
        self.accumulate("bias", space.sum(dy, axis=self.axes))
        dx_hat = dy * self.params["weight"]
        if not self.training:
            return dx_hat * self.inv_std
        mean_dx_hat = space.mean(dx_hat, axis=self.axes)
        mean_dx_hat_x_hat = space.mean(dx_hat * self.x_hat, axis=self.axes)
        return (dx_hat - mean_dx_hat - self.x_hat * mean_dx_hat_x_hat) * self.inv_std

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"


class BatchNorm2D(_BatchNorm):
    """Per-channel batch norm of feature maps.   x: (N, H, W, C) → y: same shape."""

    axes = (0, 1, 2)
    ndim = 4


class BatchNorm1D(_BatchNorm):
    """Per-feature batch norm.   x: (N, F) → y: same shape."""

    axes = (0,)
    ndim = 2
