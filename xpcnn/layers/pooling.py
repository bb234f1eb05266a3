"""Max and average pooling over kh×kw windows, and their global forms (channels-last)."""

from __future__ import annotations

from typing import Any

from xpcnn.backend import device, for_blocks, namespace
from xpcnn.layers.base import Layer


def _pair(value: int | tuple[int, int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


class _Pool2D(Layer):
    def __init__(
        self, kernel_size: int | tuple[int, int] = 2, stride: int | tuple[int, int] | None = None
    ) -> None:
        super().__init__()
        self.kernel = _pair(kernel_size)
        self.stride = _pair(stride) if stride is not None else self.kernel
        if min(self.kernel) < 1 or min(self.stride) < 1:
            raise ValueError(f"kernel_size and stride must be >= 1, got {kernel_size}, {stride}")

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """(H, W, C) → (OH, OW, C), floor mode: windows that do not fit are dropped, as in
        PyTorch."""
        h, w, c = input_shape
        (kh, kw), (sh, sw) = self.kernel, self.stride
        oh, ow = (h - kh) // sh + 1, (w - kw) // sw + 1
        if oh < 1 or ow < 1:
            raise ValueError(f"{type(self).__name__}: input {h}x{w} is smaller than the window")
        return oh, ow, c

    def windows(self, shape: tuple[int, ...]) -> list[tuple[slice, slice]]:
        """For each kernel offset, the strided input slice of a batch of `shape` that holds
        that offset of every window."""
        oh, ow, _ = self.output_shape(shape[1:])
        (kh, kw), (sh, sw) = self.kernel, self.stride
        return [
            (slice(i, i + (oh - 1) * sh + 1, sh), slice(j, j + (ow - 1) * sw + 1, sw))
            for i in range(kh)
            for j in range(kw)
        ]

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel}, stride={self.stride}"


# Inputs of at least this many elements are pooled a few images at a time (`for_blocks`): in
# cache, which pays for the copy into the output at batch 256, not at 64 (BENCHMARKS.md)
BLOCKED_ELEMENTS = 1 << 22


def _window_max(x: Any, windows: list[tuple[slice, slice]]) -> Any:
    xp = namespace(x)
    y = None
    for rows, cols in windows:
        part = x[:, rows, cols, :]
        y = part if y is None else xp.maximum(y, part)
    return y


class MaxPool2D(_Pool2D):
    """y = max over each window.   x: (N, H, W, C) → y: (N, OH, OW, C).

    The gradient goes to the first maximum of each window (PyTorch's choice for ties).
    """

    is_max_pool = True

    def forward(self, x: Any) -> Any:
        xp = namespace(x)
        self.x = x  # kept for backward: which offset held the maximum
        n, h, w, c = x.shape
        windows = self.windows(x.shape)
        if n * h * w * c < BLOCKED_ELEMENTS:
            self.y = _window_max(x, windows)
            return self.y
        self.y = xp.empty((n, *self.output_shape((h, w, c))), dtype=x.dtype, device=device(x))

        def block(_: int, images: slice) -> None:  # a few images at a time: in cache
            self.y[images, ...] = _window_max(x[images, ...], windows)

        for_blocks(block, n, h * w * c, xp)
        return self.y

    def backward(self, dy: Any, input_grad: bool = True) -> Any:
        if not input_grad:
            return None
        n, h, w, c = self.x.shape
        (kh, kw), (sh, sw) = self.kernel, self.stride
        tiled = (sh, sw) == (kh, kw) and h % kh == 0 and w % kw == 0
        if tiled and n * h * w * c < BLOCKED_ELEMENTS:
            return self._backward_tiled(self.x, self.y, dy)
        if tiled:
            xp = namespace(dy)
            dx = xp.empty(self.x.shape, dtype=dy.dtype, device=device(dy))

            def block(_: int, images: slice) -> None:  # a few images at a time: in cache
                dx[images, ...] = self._backward_tiled(
                    self.x[images, ...], self.y[images, ...], dy[images, ...]
                )

            for_blocks(block, n, h * w * c, xp)
            return dx
        xp = namespace(dy)
        dx = xp.zeros(self.x.shape, dtype=dy.dtype, device=device(dy))
        unclaimed = None
        for rows, cols in self.windows(self.x.shape):
            is_max = self.x[:, rows, cols, :] == self.y
            if unclaimed is not None:
                is_max = is_max & unclaimed
            dx[:, rows, cols, :] += dy * xp.astype(is_max, dy.dtype)  # `where` is slower
            unclaimed = ~is_max if unclaimed is None else unclaimed & ~is_max
        return dx

    def _backward_tiled(self, x: Any, y: Any, dy: Any) -> Any:
        """Windows that tile the input exactly: x viewed as (N, OH, kh, OW, kw, C), one
        full-size compare and one multiply; ties are settled on the small boolean slices."""
        xp = namespace(dy)
        n, oh, ow, c = dy.shape
        (kh, kw) = self.kernel
        tiles = (n, oh, kh, ow, kw, c)
        is_max = xp.reshape(x, tiles) == xp.reshape(y, (n, oh, 1, ow, 1, c))
        claimed = None
        for i in range(kh):
            for j in range(kw):
                hit = is_max[:, :, i, :, j, :]
                if claimed is not None:
                    hit = hit & ~claimed
                    is_max[:, :, i, :, j, :] = hit
                claimed = hit if claimed is None else claimed | hit
        dx = xp.astype(is_max, dy.dtype) * xp.reshape(dy, (n, oh, 1, ow, 1, c))
        return xp.reshape(dx, x.shape)


class AvgPool2D(_Pool2D):
    """y = mean over each window.   x: (N, H, W, C) → y: (N, OH, OW, C)."""

    def forward(self, x: Any) -> Any:
        self.input_shape = x.shape
        y = None
        for rows, cols in self.windows(x.shape):
            y = x[:, rows, cols, :] if y is None else y + x[:, rows, cols, :]
        return y / (self.kernel[0] * self.kernel[1])

    def backward(self, dy: Any, input_grad: bool = True) -> Any:
        if not input_grad:
            return None
        xp = namespace(dy)
        dx = xp.zeros(self.input_shape, dtype=dy.dtype, device=device(dy))
        share = dy / (self.kernel[0] * self.kernel[1])
        for rows, cols in self.windows(self.input_shape):
            dx[:, rows, cols, :] += share
        return dx


class _GlobalPool2D(Layer):
    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """(H, W, C) → (C,)."""
        return (input_shape[-1],)


class GlobalAvgPool2D(_GlobalPool2D):
    """y = mean over H and W.   x: (N, H, W, C) → y: (N, C)."""

    def forward(self, x: Any) -> Any:
        self.input_shape = x.shape
        return namespace(x).mean(x, axis=(1, 2))

    def backward(self, dy: Any, input_grad: bool = True) -> Any:
        if not input_grad:
            return None
        xp = namespace(dy)
        n, h, w, c = self.input_shape
        return xp.broadcast_to(xp.reshape(dy / (h * w), (n, 1, 1, c)), self.input_shape)


class GlobalMaxPool2D(_GlobalPool2D):
    """y = max over H and W.   x: (N, H, W, C) → y: (N, C); the gradient goes to the first max."""

    def forward(self, x: Any) -> Any:
        xp = namespace(x)
        n, h, w, c = x.shape
        flat = xp.reshape(x, (n, h * w, c))
        self.input_shape = x.shape
        self.argmax = xp.argmax(flat, axis=1)  # first maximum, as in PyTorch
        return xp.max(flat, axis=1)

    def backward(self, dy: Any, input_grad: bool = True) -> Any:
        if not input_grad:
            return None
        xp = namespace(dy)
        n, h, w, c = self.input_shape
        positions = xp.arange(h * w, dtype=self.argmax.dtype, device=device(dy))
        is_max = xp.reshape(positions, (1, h * w, 1)) == xp.reshape(self.argmax, (n, 1, c))
        dx = xp.where(is_max, xp.reshape(dy, (n, 1, c)), 0.0)
        return xp.reshape(dx, self.input_shape)
