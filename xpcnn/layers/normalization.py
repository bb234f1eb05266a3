"""Batch normalisation with running statistics (PyTorch's semantics and state names)."""

from __future__ import annotations

from typing import Any

from xpcnn.backend import active_device, active_namespace, device, dtype_of, namespace
from xpcnn.layers.base import Layer, ones, zeros


def channel_sum(x2: Any) -> Any:
    """Σ over the rows of a (rows, C) array, as a GEMV: NumPy's axis-0 reduction is ~4x slower."""
    xp = namespace(x2)
    return xp.ones((x2.shape[0],), dtype=x2.dtype, device=device(x2)) @ x2


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
        xp = active_namespace()
        self.buffers["num_batches_tracked"] = xp.asarray(0, dtype=xp.int64, device=active_device())

    def forward(self, x: Any) -> Any:
        if x.ndim != self.ndim:
            raise ValueError(
                f"{type(self).__name__}: expected a {self.ndim}-D input, got {x.ndim}-D"
            )
        xp = namespace(x)
        x2 = xp.reshape(x, (-1, self.num_features))  # rows: every position of a channel
        self.rows = x2.shape[0]
        if self.training:
            mean = channel_sum(x2) / self.rows
            self.centered = x2 - mean  # kept for backward (x̂ = centered · inv_std)
            var = channel_sum(self.centered * self.centered) / self.rows
            unbiased = var * (self.rows / max(self.rows - 1, 1))
            m = self.momentum
            self.buffers["running_mean"] = (1 - m) * self.buffers["running_mean"] + m * mean
            self.buffers["running_var"] = (1 - m) * self.buffers["running_var"] + m * unbiased
            self.buffers["num_batches_tracked"] = self.buffers["num_batches_tracked"] + 1
        else:
            mean, var = self.buffers["running_mean"], self.buffers["running_var"]
            self.centered = x2 - mean
        self.inv_std = 1.0 / xp.sqrt(var + self.eps)
        y = self.centered * (self.inv_std * self.params["weight"]) + self.params["bias"]
        return xp.reshape(y, x.shape)

    def backward(self, dy: Any, input_grad: bool = True) -> Any:
        """With x̂ = (x − μ)·s, s = 1/√(σ² + ε), M rows, in training:
        dγ = Σ dy·x̂,  dβ = Σ dy,  dx = γs·(dy − dβ/M − x̂·dγ/M);  in evaluation dx = γs·dy."""
        xp = namespace(dy)
        dy2 = xp.reshape(dy, (-1, self.num_features))
        d_bias = channel_sum(dy2)
        d_weight = channel_sum(dy2 * self.centered) * self.inv_std
        self.accumulate("weight", d_weight)
        self.accumulate("bias", d_bias)
        if not input_grad:
            return None
        gain = self.params["weight"] * self.inv_std
        if not self.training:
            return xp.reshape(dy2 * gain, dy.shape)
        # per-channel constants, so each full-size pass is one multiply or add
        centered_coef = -gain * d_weight * self.inv_std / self.rows
        offset = -gain * d_bias / self.rows
        dx = dy2 * gain
        dx += self.centered * centered_coef
        dx += offset
        return xp.reshape(dx, dy.shape)

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
