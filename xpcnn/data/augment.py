"""Augmentation on the device: each function takes a float batch x (N, C, H, W) and a
`xpcnn.backend.Generator`, draws one random number (or pair) per image, and transforms the whole
batch with array operations of x's own namespace (no loop over images or pixels).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from xpcnn.backend import Generator, device, namespace

CROP_MODES = ("reflect", "zero")


def random_crop(x: Any, padding: int, rng: Generator, mode: str = "reflect") -> Any:
    """Each image shifted by (dy, dx) uniform in [-padding, padding]: the crop at a random
    offset of the image padded by `padding` pixels (reflected, or zeros).

    out[n, c, i, j] = x[n, c, i + dy[n], j + dx[n]], gathered with one `take` over flat indices.
    """
    if mode not in CROP_MODES:
        raise ValueError(f"random_crop: mode={mode!r}, expected one of {', '.join(CROP_MODES)}")
    if padding == 0:
        return x
    xp = namespace(x)
    n, c, h, w = x.shape
    if mode == "reflect" and padding >= min(h, w):
        raise ValueError(f"random_crop: reflect padding {padding} needs images over {padding} px")
    dy = rng.integers(-padding, padding + 1, (n,))
    dx = rng.integers(-padding, padding + 1, (n,))
    rows = (
        xp.arange(h, dtype=xp.int64, device=device(x))[None, :] + dy[:, None]
    )  # (N, H) source rows
    cols = (
        xp.arange(w, dtype=xp.int64, device=device(x))[None, :] + dx[:, None]
    )  # (N, W) source columns
    if mode == "reflect":
        rows, cols = _reflect(rows, h, xp), _reflect(cols, w, xp)
    else:  # gather from the clipped index, then zero what fell outside
        row_inside, col_inside = (rows >= 0) & (rows < h), (cols >= 0) & (cols < w)
        inside = row_inside[:, None, :, None] & col_inside[:, None, None, :]
        # minimum/maximum: array-api-compat's clip takes a host-synchronising path on CuPy
        rows = xp.minimum(xp.maximum(rows, 0), h - 1)
        cols = xp.minimum(xp.maximum(cols, 0), w - 1)
    plane = xp.reshape(
        xp.arange(n * c, dtype=xp.int64, device=device(x)), (n, c, 1, 1)
    )  # which (n, c) plane
    flat = (plane * h + rows[:, None, :, None]) * w + cols[:, None, None, :]
    out = xp.take(xp.reshape(x, (-1,)), xp.reshape(flat, (-1,)), axis=0)
    out = xp.reshape(out, x.shape)
    return out if mode == "reflect" else out * xp.astype(inside, x.dtype)


def _reflect(index: Any, size: int, xp: Any) -> Any:
    """Mirror indices in [-(size-1), 2(size-1)] into [0, size) without repeating the edge."""
    return (size - 1) - xp.abs((size - 1) - xp.abs(index))


def translate(x: Any, step: int) -> Any:
    """x (N, C, H, W) moved `step` pixels down and right (up and left when negative): out[i, j]
    = x[i − step, j − step], the border reflected (TTA's shifted views)."""
    xp = namespace(x)
    h, w = x.shape[2:]

    def source(size: int) -> Any:
        return _reflect(xp.arange(size, dtype=xp.int64, device=device(x)) - step, size, xp)

    return xp.take(xp.take(x, source(h), axis=2), source(w), axis=3)


def mirror_where(x: Any, flip: Any) -> Any:
    """The images of x (N, C, H, W) whose `flip` (N,) is true mirrored left-right."""
    xp = namespace(x)
    return xp.where(flip[:, None, None, None], xp.flip(x, axis=3), x)


def horizontal_flip(x: Any, rng: Generator, p: float = 0.5) -> Any:
    """Each image mirrored left-right with probability p."""
    return mirror_where(x, rng.uniform((x.shape[0],)) < p)


def cutout(x: Any, size: int, rng: Generator) -> Any:
    """A size x size square set to 0 in each image, centred anywhere (clipped at the border)
    (DeVries & Taylor, 2017). Applied after normalisation, 0 is the mean pixel."""
    if size <= 0:
        return x
    xp = namespace(x)
    n, _, h, w = x.shape
    top = rng.integers(0, h, (n,))[:, None] - size // 2
    left = rng.integers(0, w, (n,))[:, None] - size // 2
    rows = xp.arange(h, dtype=xp.int64, device=device(x))[None, :]
    cols = xp.arange(w, dtype=xp.int64, device=device(x))[None, :]
    in_rows = (rows >= top) & (rows < top + size)  # (N, H)
    in_cols = (cols >= left) & (cols < left + size)  # (N, W)
    hole = in_rows[:, None, :, None] & in_cols[:, None, None, :]
    return x * xp.astype(~hole, x.dtype)


@dataclass(frozen=True)
class Augment:
    """The usual CIFAR recipe as a callable(x, rng) -> x: crop (padding 4, reflect), flip, and
    optional cutout. Set a field to 0/False to leave that step out."""

    crop_padding: int = 4
    crop_mode: str = "reflect"
    flip: bool = True
    cutout: int = 0

    def __call__(self, x: Any, rng: Generator) -> Any:
        if self.crop_padding:
            x = random_crop(x, self.crop_padding, rng, self.crop_mode)
        if self.flip:
            x = horizontal_flip(x, rng)
        if self.cutout:
            x = cutout(x, self.cutout, rng)
        return x
