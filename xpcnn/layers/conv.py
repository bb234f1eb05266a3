"""2-D convolution (channels-last): one GEMM over im2col rows, or Winograd F(m×m, 3×3) for
3×3 stride-1 layers wide enough for it to pay (`choose_algorithm`)."""

from __future__ import annotations

from typing import Any

from xpcnn.backend import (
    active_namespace,
    device,
    dtype_of,
    namespace,
    row_sum,
    sliding_windows,
    whole_arrays,
)
from xpcnn.layers import winograd
from xpcnn.layers.base import Layer, he_normal, zeros

# "winograd2": F(2×2, 3×3); "winograd4": F(4×4, 3×3); "auto": choose_algorithm by shape
ALGORITHMS = ("auto", "im2col", "winograd2", "winograd4")


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


def pad_spatial(x: Any, pads: tuple[tuple[int, int], tuple[int, int]]) -> Any:
    """x: (N, H, W, C) with zero rows and columns added: ((top, bottom), (left, right))."""
    (top, bottom), (left, right) = pads
    if top == bottom == left == right == 0:
        return x
    xp = namespace(x)
    n, h, w, c = x.shape
    padded = xp.zeros((n, h + top + bottom, w + left + right, c), dtype=x.dtype, device=device(x))
    padded[:, top : top + h, left : left + w, :] = x
    return padded


def im2col(x: Any, kernel: tuple[int, int], stride: int, pads: tuple) -> Any:
    """x: (N, H, W, C) → cols: (N·OH·OW, kh·kw·C), one row per output pixel.

    The windows are a strided view of the padded input (the shim's `sliding_windows`); the
    reshape is the one copy.
    """
    xp = namespace(x)
    windows = sliding_windows(pad_spatial(x, pads), kernel, stride)
    n, oh, ow = windows.shape[:3]
    return xp.reshape(windows, (n * oh * ow, -1))


def col2im(dcols: Any, input_shape: tuple[int, ...], stride: int, pads: tuple) -> Any:
    """The adjoint of im2col: adds every window's gradient back onto the input pixels it read.

    dcols: (kh, kw, N, OH, OW, C), offset-major so that each offset's slab is contiguous; one
    strided add per kernel offset, clipped to the unpadded input (no padded buffer).
    """
    xp = namespace(dcols)
    n, h, w, c = input_shape
    kh, kw, _, oh, ow, _ = dcols.shape
    dx = xp.zeros((n, h, w, c), dtype=dcols.dtype, device=device(dcols))
    for i in range(kh):
        rows = _window(i, pads[0][0], h, oh, stride)
        for j in range(kw):
            columns = _window(j, pads[1][0], w, ow, stride)
            if rows is None or columns is None:
                continue
            dx[:, rows[1], columns[1], :] += dcols[i, j, :, rows[0], columns[0], :]
    return dx


def pad_or_crop(x: Any, pads: tuple[tuple[int, int], tuple[int, int]]) -> Any:
    """pad_spatial that also takes negative amounts: rows and columns removed from that side."""
    (top, bottom), (left, right) = pads
    n, h, w, _ = x.shape
    x = x[:, max(-top, 0) : h - max(-bottom, 0), max(-left, 0) : w - max(-right, 0), :]
    return pad_spatial(x, ((max(top, 0), max(bottom, 0)), (max(left, 0), max(right, 0))))


def transposed_input_grad(
    dy: Any, weight: Any, input_shape: tuple, stride: int, pads: tuple
) -> Any:
    """dL/dx of a convolution as one more convolution: dy, dilated by the stride and padded by
    kh − 1 − pad (less where the forward's windows did not reach the end), correlated with the
    kernel flipped and its channels swapped — one im2col and one GEMM, where col2im adds kh·kw
    strided slabs."""
    xp = namespace(dy)
    n, h, w, c_in = input_shape
    _, oh, ow, c_out = dy.shape
    c_out, c_in, kh, kw = weight.shape
    if stride > 1:
        dilated = xp.zeros((n, (oh - 1) * stride + 1, (ow - 1) * stride + 1, c_out),
                           dtype=dy.dtype, device=device(dy))  # fmt: skip
        dilated[:, ::stride, ::stride, :] = dy
        dy = dilated
    (top, _), (left, _) = pads
    rows = (kh - 1 - top, h + top - 1 - (oh - 1) * stride)
    columns = (kw - 1 - left, w + left - 1 - (ow - 1) * stride)
    flipped = xp.permute_dims(xp.flip(weight, axis=(2, 3)), (2, 3, 0, 1))  # (kh, kw, out, in)
    cols = im2col(pad_or_crop(dy, (rows, columns)), (kh, kw), 1, ((0, 0), (0, 0)))
    return xp.reshape(cols @ xp.reshape(flipped, (-1, c_in)), (n, h, w, c_in))


# below this C_in the GEMMs have too short a K for Winograd's transforms to pay (a stem conv)
WINOGRAD_MIN_CHANNELS = 16


def choose_algorithm(kernel: tuple[int, int], stride: int, in_channels: int) -> str:
    """The algorithm for a layer's shape on the active backend. On the CPU (NumPy's plan of
    blocks), as measured (BENCHMARKS.md): Winograd needs a 3×3 stride-1 kernel, and pays when
    C_in is wide enough that its GEMMs, not its transforms, dominate. Where passes run whole (an
    accelerator): im2col, a third of Winograd's array operations (each a kernel launch), and
    with TF32 GEMMs (CUPY_TF32=1) 13x less error (benchmarks/tf32_winograd.py)."""
    if kernel != (3, 3) or stride != 1 or in_channels < WINOGRAD_MIN_CHANNELS:
        return "im2col"
    return "im2col" if whole_arrays(active_namespace()) else "winograd4"


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
        algorithm: str = "auto",
    ) -> None:
        super().__init__()
        kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
        resolve_padding(padding, kh, kh, stride)  # reject bad values now, not at the first batch
        if stride < 1:
            raise ValueError(f"stride: expected an integer >= 1, got {stride!r}")
        if algorithm not in ALGORITHMS:
            raise ValueError(
                f"algorithm: expected one of {', '.join(ALGORITHMS)}, got {algorithm!r}"
            )
        if algorithm.startswith("winograd") and ((kh, kw) != (3, 3) or stride != 1):
            raise ValueError(f"algorithm={algorithm!r} needs a 3x3 kernel and stride 1")
        if algorithm == "auto":
            algorithm = choose_algorithm((kh, kw), stride, in_channels)
        self.algorithm = algorithm
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel, self.stride, self.padding = (kh, kw), stride, padding
        dtype = dtype_of(dtype)
        fan_in = in_channels * kh * kw
        self.params["weight"] = he_normal((out_channels, in_channels, kh, kw), fan_in, dtype)
        if bias:
            self.params["bias"] = zeros((out_channels,), dtype)

    def _weight_matrix(self) -> Any:
        w = self.params["weight"]
        xp = namespace(w)
        return xp.reshape(xp.permute_dims(w, (2, 3, 1, 0)), (-1, self.out_channels))

    def _pads(self, h: int, w: int) -> tuple[tuple[int, int], tuple[int, int]]:
        (kh, kw), s = self.kernel, self.stride
        return resolve_padding(self.padding, h, kh, s), resolve_padding(self.padding, w, kw, s)

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """(H, W, C_in) → (OH, OW, C_out)."""
        h, w, c = input_shape
        if c != self.in_channels:
            raise ValueError(f"Conv2D: expected {self.in_channels} input channels, got {c}")
        pads = self._pads(h, w)
        oh = output_size(h, self.kernel[0], self.stride, pads[0])
        ow = output_size(w, self.kernel[1], self.stride, pads[1])
        return oh, ow, self.out_channels

    def flops(self, input_shape: tuple[int, ...]) -> int:
        """2·kh·kw·C_in·C_out·OH·OW: one multiply-add per weight and output pixel."""
        oh, ow, _ = self.output_shape(input_shape)
        kh, kw = self.kernel
        return 2 * kh * kw * self.in_channels * self.out_channels * oh * ow

    def forward(self, x: Any) -> Any:
        xp = namespace(x)
        n, h, w, _ = x.shape
        self.pads = self._pads(h, w)
        self.input_shape = x.shape
        self.y_shape = (n, *self.output_shape(x.shape[1:]))
        if self.algorithm != "im2col":
            return self._winograd_forward(x)
        self.cols = im2col(x, self.kernel, self.stride, self.pads)  # kept for backward
        y = self.cols @ self._weight_matrix()
        if "bias" in self.params:
            y += self.params["bias"]
        return xp.reshape(y, self.y_shape)

    def backward(self, dy: Any, input_grad: bool = True) -> Any:
        xp = namespace(dy)
        dy2 = xp.reshape(dy, (-1, self.out_channels))
        if self.needs_grad("bias"):
            self.accumulate("bias", row_sum(dy2))
        if not self.needs_grad("weight") and not input_grad:
            return None
        if self.algorithm != "im2col":
            return self._winograd_backward(dy, input_grad)
        (kh, kw), c = self.kernel, self.in_channels
        if self.needs_grad("weight"):
            dw = xp.reshape(self.cols.T @ dy2, (kh, kw, c, self.out_channels))
            self.accumulate("weight", xp.permute_dims(dw, (3, 2, 0, 1)))
        if not input_grad:
            return None
        if whole_arrays(xp):  # one gather and one GEMM; NumPy: kh·kw adds in cache (measured)
            return transposed_input_grad(
                dy, self.params["weight"], self.input_shape, self.stride, self.pads
            )
        # per offset (i, j): dcols[i, j] = dy @ W[:, :, i, j], a batch of kh·kw GEMMs
        w = xp.permute_dims(self.params["weight"], (2, 3, 0, 1))
        w = xp.reshape(w, (kh * kw, self.out_channels, c))
        dcols = xp.matmul(dy2[None, :, :], w)
        n, oh, ow, _ = self.y_shape
        dcols = xp.reshape(dcols, (kh, kw, n, oh, ow, c))
        return col2im(dcols, self.input_shape, self.stride, self.pads)

    def _winograd_forward(self, x: Any) -> Any:
        """y = Aᵀ [V_k @ U_k]_k A with V = Bᵀ d B of each input tile and U = G g Gᵀ."""
        m = int(self.algorithm[-1])
        n, h, w, _ = x.shape
        rows, columns, tiles = winograd.winograd_pads(h, w, self.pads, m)
        padded = pad_spatial(x, (rows, columns))
        self.padded_shape = padded.shape
        self.u = winograd.transform_kernel(self.params["weight"], m)  # kept for backward, with v
        y, self.v = winograd.forward(padded, self.u, tiles, m)
        oh, ow = self.y_shape[1:3]
        if (oh, ow) != y.shape[1:3]:
            y = y[:, :oh, :ow, :]
        if "bias" in self.params:
            y += self.params["bias"]
        return y

    def _winograd_backward(self, dy: Any, input_grad: bool) -> Any:
        """dM = A dY Aᵀ;  dU_k = V_kᵀ @ dM_k, dg = Gᵀ dU G;  dV_k = dM_k @ U_kᵀ, dx = B dV Bᵀ."""
        xp = namespace(dy)
        m = int(self.algorithm[-1])
        n, oh, ow, c = dy.shape
        th, tw = winograd.tile_count(oh, m), winograd.tile_count(ow, m)
        if (oh, ow) != (th * m, tw * m):  # outputs past the real ones: zero gradient
            full = xp.zeros((n, th * m, tw * m, c), dtype=dy.dtype, device=device(dy))
            full[:, :oh, :ow, :] = dy
            dy = full
        du, dpadded = winograd.backward(self.v, self.u, dy, self.padded_shape, m, input_grad,
                                        weight_grad=self.needs_grad("weight"))  # fmt: skip
        if du is not None:
            self.accumulate("weight", winograd.kernel_grad(du, m))
        if not input_grad:
            return None
        (top, _), (left, _) = self.pads
        _, h, w, _ = self.input_shape
        return dpadded[:, top : top + h, left : left + w, :]

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel}, "
            f"stride={self.stride}, padding={self.padding!r}, bias={'bias' in self.params}"
        )
