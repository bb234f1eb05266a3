"""Batch normalisation with running statistics (PyTorch's semantics and state names)."""

from __future__ import annotations

from typing import Any

from xpcnn.backend import (
    active_device,
    active_namespace,
    dtype_of,
    for_blocks,
    namespace,
    row_sum,
    whole_arrays,
)
from xpcnn.layers.base import Layer, ones, zeros


def sum_in_order(parts: dict[int, Any]) -> Any:
    """Σ of per-block partial sums in block order, so that threads never change the rounding."""
    total = parts[0]
    for i in range(1, len(parts)):
        total = total + parts[i]
    return total


class _BatchNorm(Layer):
    """y = γ·x̂ + β,  x̂ = (x − μ)/√(σ² + ε), over the channel axis (last).

    Training uses the batch's μ, σ² (biased) and updates running_mean / running_var (unbiased)
    with `momentum`, in place; evaluation uses the running statistics. Where passes run whole
    (`whole_arrays`) each step is one operation on the whole batch, and x̂ is kept for backward;
    on NumPy each pass runs block by block of rows (`for_blocks`), so its chain of operations
    stays in cache, and x − μ is kept.
    """

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
        self.whole = whole_arrays(xp)
        y = self._forward_whole(x2) if self.whole else self._forward_blocks(x2)
        return xp.reshape(y, x.shape)

    def _update_running(self, mean: Any, var: Any) -> None:
        """running ← (1 − m)·running + m·batch statistic (σ² unbiased), in place: the buffers
        may be views into the model's state."""
        m = self.momentum
        running_mean, running_var = self.buffers["running_mean"], self.buffers["running_var"]
        running_mean *= 1 - m
        running_mean += mean * m
        running_var *= 1 - m
        running_var += var * (m * self.rows / max(self.rows - 1, 1))
        tracked = self.buffers["num_batches_tracked"]
        tracked += 1

    def _forward_whole(self, x2: Any) -> Any:
        xp = namespace(x2)
        if self.training:
            mean, var = xp.mean(x2, axis=0), xp.var(x2, axis=0)
            self._update_running(mean, var)
        else:
            mean, var = self.buffers["running_mean"], self.buffers["running_var"]
        self.inv_std = xp.pow(var + self.eps, -0.5)
        self.normalized = (x2 - mean) * self.inv_std  # kept for backward
        return self.normalized * self.params["weight"] + self.params["bias"]

    def _forward_blocks(self, x2: Any) -> Any:
        xp = namespace(x2)
        if self.training:
            mean = row_sum(x2) / self.rows
        else:
            mean, var = self.buffers["running_mean"], self.buffers["running_var"]
        self.centered = xp.empty_like(x2)  # kept for backward (x̂ = centered · inv_std)
        squares: dict[int, Any] = {}

        def center(i: int, rows: slice) -> None:
            centered = x2[rows, ...] - mean
            self.centered[rows, ...] = centered
            if self.training:
                squares[i] = row_sum(centered * centered)

        for_blocks(center, self.rows, self.num_features, xp)
        if self.training:
            var = sum_in_order(squares) / self.rows
            self._update_running(mean, var)
        self.inv_std = 1.0 / xp.sqrt(var + self.eps)
        scale, shift = self.inv_std * self.params["weight"], self.params["bias"]
        y = xp.empty_like(x2)

        def normalize(_: int, rows: slice) -> None:
            block = self.centered[rows, ...] * scale
            block += shift
            y[rows, ...] = block

        for_blocks(normalize, self.rows, self.num_features, xp)
        return y

    def backward(self, dy: Any, input_grad: bool = True) -> Any:
        """With x̂ = (x − μ)·s, s = 1/√(σ² + ε), M rows, in training:
        dγ = Σ dy·x̂,  dβ = Σ dy,  dx = γs·(dy − dβ/M − x̂·dγ/M);  in evaluation dx = γs·dy."""
        xp = namespace(dy)
        dy2 = xp.reshape(dy, (-1, self.num_features))
        backward = self._backward_whole if self.whole else self._backward_blocks
        dx = backward(dy2, input_grad)
        return None if dx is None else xp.reshape(dx, dy.shape)

    def _accumulate(self, d_weight: Any, d_bias: Any) -> None:
        for name, grad in (("weight", d_weight), ("bias", d_bias)):
            if self.needs_grad(name):
                self.accumulate(name, grad)

    def _backward_whole(self, dy2: Any, input_grad: bool) -> Any:
        xp = namespace(dy2)
        d_bias = xp.sum(dy2, axis=0)
        d_weight = xp.sum(dy2 * self.normalized, axis=0)  # not vecdot: 3+ kernels in CuPy's shim
        self._accumulate(d_weight, d_bias)
        if not input_grad:
            return None
        gain = self.params["weight"] * self.inv_std
        if not self.training:
            return dy2 * gain
        dx = self.normalized * (d_weight * (-1.0 / self.rows))
        dx += dy2
        dx += d_bias * (-1.0 / self.rows)
        dx *= gain
        return dx

    def _backward_blocks(self, dy2: Any, input_grad: bool) -> Any:
        xp = namespace(dy2)
        dy_sums: dict[int, Any] = {}
        dy_centered_sums: dict[int, Any] = {}

        def sums(i: int, rows: slice) -> None:
            block = dy2[rows, ...]
            dy_sums[i] = row_sum(block)
            dy_centered_sums[i] = row_sum(block * self.centered[rows, ...])

        for_blocks(sums, self.rows, self.num_features, xp)
        d_bias = sum_in_order(dy_sums)
        d_weight = sum_in_order(dy_centered_sums) * self.inv_std
        self._accumulate(d_weight, d_bias)
        if not input_grad:
            return None
        gain = self.params["weight"] * self.inv_std
        if not self.training:
            return dy2 * gain
        # per-channel constants, so each pass over a block is one multiply or add
        centered_coef = -gain * d_weight * self.inv_std / self.rows
        offset = -gain * d_bias / self.rows
        dx = xp.empty_like(dy2)

        def input_gradient(_: int, rows: slice) -> None:
            block = dy2[rows, ...] * gain
            block += self.centered[rows, ...] * centered_coef
            block += offset
            dx[rows, ...] = block

        for_blocks(input_gradient, self.rows, self.num_features, xp)
        return dx

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"


class BatchNorm2D(_BatchNorm):
    """Per-channel batch norm of feature maps.   x: (N, H, W, C) → y: same shape."""

    ndim = 4


class BatchNorm1D(_BatchNorm):
    """Per-feature batch norm.   x: (N, F) → y: same shape."""

    ndim = 2
