"""2-D convolution as one GEMM over im2col rows (channels-last)."""

from __future__ import annotations

from typing import Any

from xpcnn.backend import dtype_of, namespace
from xpcnn.layers.base import Layer, he_normal, zeros


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """(before, after) padding so that the output has ceil(size / stride) positions (Keras' and
    PyTorch's "same"; the odd pixel goes after)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def resolve_padding(padding: str | int, size: int, kernel: int, stride: int) -> tuple[int, int]:
    if padding == "same":
        return same_padding(size, kernel, stride)
    if padding == "valid":
        return 0, 0
    if isinstance(padding, int) and padding >= 0:
        return padding, padding
    raise ValueError(f"padding: expected 'same', 'valid' or an integer >= 0, got {padding!r}")


def output_size(size: int, kernel: int, stride: int, pad: tuple[int, int]) -> int:
    return (size + pad[0] + pad[1] - kernel) // stride + 1


def _window(offset: int, pad_before: int, size: int, out: int, stride: int):
    """For kernel offset `offset`, the output positions [lo, hi) that read real (unpadded) input,
    and the input slice they read."""
    lo = max(0, -(-(pad_before - offset) // stride))
    hi = min(out, (size - 1 - offset + pad_before) // stride + 1)
    if hi <= lo:
        return None
    start = lo * stride + offset - pad_before
    return slice(lo, hi), slice(start, start + (hi - lo - 1) * stride + 1, stride)


def im2col(x: Any, kernel: tuple[int, int], stride: int, pads: tuple[tuple[int, int], ...]) -> Any:
    """x: (N, H, W, C) → cols: (N, OH, OW, kh, kw, C), zero where a window hangs over the padding.

    One strided copy per kernel offset (kh·kw copies), never a padded copy of x.
    """
    space = namespace(x)
    n, h, w, c = x.shape
    (kh, kw), (pad_h, pad_w) = kernel, pads
    oh, ow = output_size(h, kh, stride, pad_h), output_size(w, kw, stride, pad_w)
    cols = space.zeros((n, oh, ow, kh, kw, c), dtype=x.dtype)
    for i in range(kh):
        rows = _window(i, pad_h[0], h, oh, stride)
        for j in range(kw):
            columns = _window(j, pad_w[0], w, ow, stride)
            if rows is None or columns is None:
                continue
            cols[:, rows[0], columns[0], i, j, :] = x[:, rows[1], columns[1], :]
    return cols


def col2im(cols: Any, input_shape: tuple[int, ...], stride: int, pads: tuple) -> Any:
    """The adjoint of im2col: adds every window's gradient back onto the input pixels it read."""
    space = namespace(cols)
    n, h, w, c = input_shape
    _, oh, ow, kh, kw, _ = cols.shape
    dx = space.zeros((n, h, w, c), dtype=cols.dtype)
    for i in range(kh):
        rows = _window(i, pads[0][0], h, oh, stride)
        for j in range(kw):
            columns = _window(j, pads[1][0], w, ow, stride)
            if rows is None or columns is None:
                continue
            dx[:, rows[1], columns[1], :] += cols[:, rows[0], columns[0], i, j, :]
    return dx


class Conv2D(Layer):
    """y = x ⋆ W + b.   x: (N, H, W, C_in) → y: (N, OH, OW, C_out).

    The weight is stored as PyTorch stores it, (C_out, C_in, kh, kw); the GEMM uses it as a
    (kh·kw·C_in, C_out) matrix whose row order matches the im2col columns.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int] = 3,
        stride: int = 1,
        padding: str | int = "same",
        bias: bool = True,
        dtype: Any = "float32",
    ) -> None:
        super().__init__()
        kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
        resolve_padding(padding, kh, kh, stride)  # reject bad values now, not at the first batch
        if stride < 1:
            raise ValueError(f"stride: expected an integer >= 1, got {stride!r}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel, self.stride, self.padding = (kh, kw), stride, padding
        dtype = dtype_of(dtype)
        fan_in = in_channels * kh * kw
        self.params["weight"] = he_normal((out_channels, in_channels, kh, kw), fan_in, dtype)
        if bias:
            self.params["bias"] = zeros((out_channels,), dtype)

    def _weight_matrix(self) -> Any:
        w = self.params["weight"]
        space = namespace(w)
        return space.reshape(space.permute_dims(w, (2, 3, 1, 0)), (-1, self.out_channels))

    def forward(self, x: Any) -> Any:
        space = namespace(x)
        n, h, w, _ = x.shape
        (kh, kw), s = self.kernel, self.stride
        self.pads = (
            resolve_padding(self.padding, h, kh, s),
            resolve_padding(self.padding, w, kw, s),
        )
        self.input_shape = x.shape
        self.cols = im2col(x, self.kernel, s, self.pads)  # kept for backward
        _, oh, ow = self.cols.shape[:3]
        y = space.reshape(self.cols, (n * oh * ow, -1)) @ self._weight_matrix()
        if "bias" in self.params:
            y += self.params["bias"]
        return space.reshape(y, (n, oh, ow, self.out_channels))

    def backward_params(self, dy: Any) -> Any:
        """Accumulate dW and db; return dy as the (N·OH·OW, C_out) matrix."""
        space = namespace(dy)
        dy2 = space.reshape(dy, (-1, self.out_channels))
        cols2 = space.reshape(self.cols, (dy2.shape[0], -1))
        (kh, kw), c = self.kernel, self.in_channels
        dw = space.reshape(cols2.T @ dy2, (kh, kw, c, self.out_channels))
        self.accumulate("weight", space.permute_dims(dw, (3, 2, 0, 1)))
        if "bias" in self.params:
            self.accumulate("bias", space.sum(dy2, axis=0))
        return dy2

    def backward(self, dy: Any) -> Any:
        space = namespace(dy)
        dy2 = self.backward_params(dy)
        dcols = space.reshape(dy2 @ self._weight_matrix().T, self.cols.shape)
        return col2im(dcols, self.input_shape, self.stride, self.pads)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel}, "
            f"stride={self.stride}, padding={self.padding!r}, bias={'bias' in self.params}"
        )
