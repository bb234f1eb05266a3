"""Max and average pooling over kh×kw windows, and their global forms (channels-last)."""

from __future__ import annotations

from typing import Any

from xpcnn.backend import constant, device, for_blocks, namespace, whole_arrays
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

    def tiles(self, shape: tuple[int, ...]) -> bool:
        """Whether the windows tile a batch of `shape` (kernel = stride, the usual pool 2)."""
        (kh, kw), (sh, sw) = self.kernel, self.stride
        return (sh, sw) == (kh, kw) and shape[1] % kh == 0 and shape[2] % kw == 0

    def tile_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """(N, OH, kh, OW, kw, C): a batch of `shape` cut into the windows that tile it (a
        reshape, so a view, and the layout of the input gradient)."""
        n, h, w, c = shape
        (kh, kw) = self.kernel
        return n, h // kh, kh, w // kw, kw, c

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel}, stride={self.stride}"


# Inputs of at least this many elements are pooled a few images at a time (`for_blocks`): in
# cache, which pays for the copies into the outputs at batch 256, not at 64 (BENCHMARKS.md)
BLOCKED_ELEMENTS = 1 << 22


def _window_max(x: Any, windows: list[tuple[slice, slice]]) -> Any:
    xp = namespace(x)
    y = None
    for rows, cols in windows:
        part = x[:, rows, cols, :]
        y = part if y is None else xp.maximum(y, part)
    return y


def _first_max(x: Any, y: Any, kernel: tuple[int, int]) -> Any:
    """For windows that tile x exactly: a boolean (N, OH, kh, OW, kw, C) that is True at the
    first maximum of each window; one full-size compare, ties settled on the small slices."""
    xp = namespace(x)
    n, oh, ow, c = y.shape
    kh, kw = kernel
    is_max = xp.reshape(x, (n, oh, kh, ow, kw, c)) == xp.reshape(y, (n, oh, 1, ow, 1, c))
    claimed = None
    for i in range(kh):
        for j in range(kw):
            hit = is_max[:, :, i, :, j, :]
            if claimed is not None:
                hit = hit & ~claimed
                is_max[:, :, i, :, j, :] = hit
            claimed = hit if claimed is None else claimed | hit
    return is_max


class MaxPool2D(_Pool2D):
    """y = max over each window.   x: (N, H, W, C) → y: (N, OH, OW, C).

    The gradient goes to the first maximum of each window (PyTorch's choice for ties). Where
    passes run whole (`whole_arrays`), training keeps the offset of that maximum in each window
    (one copy of the windows, its argmax and max: 3 operations; backward, for windows that tile
    the input, 2). On NumPy, whose argmax over the windows is ~6x slower, windows that tile the
    input (kernel = stride, the usual pool 2) keep in training a boolean mask of those maxima:
    a quarter of the memory of keeping x, and no compare in backward.
    """

    is_max_pool = True

    def forward(self, x: Any) -> Any:
        xp = namespace(x)
        n, h, w, c = self.input_shape = x.shape
        self.whole = whole_arrays(xp)
        self.x = self.y = self.first_max = self.offset = None
        if self.whole:
            stacked = self._stacked(x)
            if self.training:  # kept for backward: the first maximum (PyTorch's tie rule)
                self.offset = xp.argmax(stacked, axis=-1)
            else:
                self.x = x  # kept for a backward after an evaluation forward
            return xp.max(stacked, axis=-1)
        windows = self.windows(x.shape)
        mask = self.training and self.tiles(x.shape)
        if n * h * w * c < BLOCKED_ELEMENTS:
            y = _window_max(x, windows)
            self.first_max = _first_max(x, y, self.kernel) if mask else None
        else:
            y = xp.empty((n, *self.output_shape((h, w, c))), dtype=x.dtype, device=device(x))
            oh, ow = y.shape[1:3]
            shape = (n, oh, self.kernel[0], ow, self.kernel[1], c)
            self.first_max = xp.empty(shape, dtype=xp.bool, device=device(x)) if mask else None

            def block(_: int, images: slice) -> None:  # a few images at a time: in cache
                y[images, ...] = _window_max(x[images, ...], windows)
                if mask:
                    self.first_max[images, ...] = _first_max(x[images, ...], y[images, ...],
                                                             self.kernel)  # fmt: skip

            for_blocks(block, n, h * w * c, xp)
        if not mask:
            self.x, self.y = x, y  # kept for the other backwards
        return y

    def backward(self, dy: Any, input_grad: bool = True) -> Any:
        if not input_grad:
            return None
        if self.whole:
            return self._backward_whole(dy)
        xp = namespace(dy)
        if self.tiles(self.input_shape):  # after an evaluation forward: no mask kept
            first_max = self.first_max
            if first_max is None:
                first_max = _first_max(self.x, self.y, self.kernel)
            n, oh, ow, c = dy.shape
            dy6 = xp.reshape(dy, (n, oh, 1, ow, 1, c))
            window = self.kernel[0] * self.kernel[1]  # input elements per output
            if n * oh * ow * c * window < BLOCKED_ELEMENTS:
                return xp.reshape(xp.astype(first_max, dy.dtype) * dy6, self.input_shape)
            dx = xp.empty(first_max.shape, dtype=dy.dtype, device=device(dy))

            def block(_: int, images: slice) -> None:  # a few images at a time: in cache
                dx[images, ...] = xp.astype(first_max[images, ...], dy.dtype) * dy6[images, ...]

            for_blocks(block, n, oh * ow * c * window, xp)
            return xp.reshape(dx, self.input_shape)
        dx = xp.zeros(self.input_shape, dtype=dy.dtype, device=device(dy))
        unclaimed = None
        for rows, cols in self.windows(self.input_shape):
            is_max = self.x[:, rows, cols, :] == self.y
            if unclaimed is not None:
                is_max = is_max & unclaimed
            part = dx[:, rows, cols, :]
            part += dy * xp.astype(is_max, dy.dtype)  # `where` is slower
            unclaimed = ~is_max if unclaimed is None else unclaimed & ~is_max
        return dx

    def _stacked(self, x: Any) -> Any:
        """(N, OH, OW, C, kh·kw): the pixels of every window, one copy (windows that tile x: one
        kernel everywhere; else one stack, which CuPy copies one window offset at a time)."""
        xp = namespace(x)
        if self.tiles(x.shape):
            n, oh, kh, ow, kw, c = shape = self.tile_shape(x.shape)
            tiles = xp.permute_dims(xp.reshape(x, shape), (0, 1, 3, 5, 2, 4))
            return xp.reshape(tiles, (n, oh, ow, c, kh * kw))
        windows = self.windows(x.shape)
        return xp.stack([x[:, rows, cols, :] for rows, cols in windows], axis=-1)

    def _backward_whole(self, dy: Any) -> Any:
        """dy to each window's first maximum: for windows that tile x one compare with the
        offsets and one `where`, laid out as x; else each offset's share added in place."""
        xp = namespace(dy)
        offset = self.offset
        if offset is None:
            offset = xp.argmax(self._stacked(self.x), axis=-1)
        zero = constant(xp, (), dy.dtype, device(dy), fill=0.0)
        if self.tiles(self.input_shape):
            n, oh, kh, ow, kw, c = self.tile_shape(self.input_shape)
            offsets = constant(xp, (1, 1, kh, 1, kw, 1), offset.dtype, device(dy))
            is_max = xp.reshape(offset, (n, oh, 1, ow, 1, c)) == offsets
            dx = xp.where(is_max, xp.reshape(dy, (n, oh, 1, ow, 1, c)), zero)
            return xp.reshape(dx, self.input_shape)  # a view: dx is laid out as x
        windows = self.windows(self.input_shape)
        offsets = constant(xp, (len(windows),), offset.dtype, device(dy))
        shares = xp.where(offset[..., None] == offsets, dy[..., None], zero)
        dx = xp.zeros(self.input_shape, dtype=dy.dtype, device=device(dy))
        for k, (rows, cols) in enumerate(windows):
            part = dx[:, rows, cols, :]
            part += shares[..., k]  # windows overlap: add
        return dx


class AvgPool2D(_Pool2D):
    """y = mean over each window.   x: (N, H, W, C) → y: (N, OH, OW, C).

    Windows that tile x: one mean forward and one multiply backward (on NumPy too, as fast)."""

    def forward(self, x: Any) -> Any:
        xp = namespace(x)
        self.input_shape = x.shape
        if self.tiles(x.shape):
            return xp.mean(xp.reshape(x, self.tile_shape(x.shape)), axis=(2, 4))
        y = None
        for rows, cols in self.windows(x.shape):
            y = x[:, rows, cols, :] if y is None else y + x[:, rows, cols, :]
        return y / (self.kernel[0] * self.kernel[1])

    def backward(self, dy: Any, input_grad: bool = True) -> Any:
        if not input_grad:
            return None
        xp = namespace(dy)
        if self.tiles(self.input_shape):
            n, oh, kh, ow, kw, c = self.tile_shape(self.input_shape)
            share = constant(xp, (1, 1, kh, 1, kw, 1), dy.dtype, device(dy), fill=1 / (kh * kw))
            dx = xp.reshape(dy, (n, oh, 1, ow, 1, c)) * share
            return xp.reshape(dx, self.input_shape)  # a view: dx is laid out as x
        dx = xp.zeros(self.input_shape, dtype=dy.dtype, device=device(dy))
        share = dy / (self.kernel[0] * self.kernel[1])
        for rows, cols in self.windows(self.input_shape):
            part = dx[:, rows, cols, :]
            part += share  # windows overlap: add
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
        positions = constant(xp, (1, h * w, 1), self.argmax.dtype, device(dy))
        is_max = positions == xp.reshape(self.argmax, (n, 1, c))
        zero = constant(xp, (), dy.dtype, device(dy), fill=0.0)
        dx = xp.where(is_max, xp.reshape(dy, (n, 1, c)), zero)
        return xp.reshape(dx, self.input_shape)
