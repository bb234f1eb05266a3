"""Winograd convolution F(m×m, 3×3) (Lavin & Gray, 2015): the transforms and their adjoints.

A 3×3 stride-1 correlation of an (m+2)×(m+2) input tile d with a kernel g is the m×m tile

    y = Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A,

so with U = G g Gᵀ (per input and output channel) and V = Bᵀ d B (per tile and input channel),
each of the α² = (m+2)² tile positions k is one GEMM M_k = V_k @ U_k of shape
(tiles, C_in) × (C_in, C_out), and y is Aᵀ M A. F(2×2, 3×3) does 16 multiplies per 2×2 outputs
where direct convolution does 36 (2.25× fewer); F(4×4, 3×3): 36 per 16 (4× fewer).

Every transform is linear, so the backward pass stays in the Winograd domain, with each
transform's adjoint (its transpose):

    dM = A dY Aᵀ (per output tile),  dU_k = V_kᵀ @ dM_k,  dg = Gᵀ dU G,
    dV_k = dM_k @ U_kᵀ,              dx = Σ over tiles of B dV Bᵀ (overlapping tiles add).

Layout: channels-last; V is (α², n·TH·TW, C_in) and M, dM are (α², n·TH·TW, C_out), position
k = α·row + column, tiles in (n, TH, TW) order, so each position's slab is a contiguous
(tiles, C) matrix for the GEMM. Each 2-D transform is one GEMM with a Kronecker product
(Bᵀ ⊗ Bᵀ, Aᵀ ⊗ Aᵀ) over all tiles and channels at once: BLAS runs it on every core, where
strided element-wise passes ran on one and took 2-3x longer (BENCHMARKS.md). The work goes
chunk by chunk of images so that each chunk's tiles stay in cache.
"""

from __future__ import annotations

from fractions import Fraction as F
from typing import Any

from xpcnn.backend import device, namespace, precise_matmul, sliding_windows, whole_arrays

# Lavin & Gray's matrices (interpolation points 0, ±1 for m = 2; 0, ±1, ±2 for m = 4; and ∞)
TRANSFORMS = {
    2: {
        "BT": [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]],
        "G": [[1, 0, 0], [F(1, 2)] * 3, [F(1, 2), F(-1, 2), F(1, 2)], [0, 0, 1]],
        "AT": [[1, 1, 1, 0], [0, 1, -1, -1]],
    },
    4: {
        "BT": [
            [4, 0, -5, 0, 1, 0],
            [0, -4, -4, 1, 1, 0],
            [0, 4, -4, -1, 1, 0],
            [0, -2, -1, 2, 1, 0],
            [0, 2, -1, -2, 1, 0],
            [0, 4, 0, -5, 0, 1],
        ],
        "G": [
            [F(1, 4), 0, 0],
            [F(-1, 6)] * 3,
            [F(-1, 6), F(1, 6), F(-1, 6)],
            [F(1, 24), F(1, 12), F(1, 6)],
            [F(1, 24), F(-1, 12), F(1, 6)],
            [0, 0, 1],
        ],
        "AT": [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]],
    },
}


def tile_count(size: int, m: int) -> int:
    """Tiles of m outputs along an axis of `size` outputs (the last one may hang over)."""
    return -(-size // m)


def _kron(a: list, b: list) -> list[list[float]]:
    """a ⊗ b of two small matrices, as nested lists of floats."""
    return [[float(x * y) for x in row_a for y in row_b] for row_a in a for row_b in b]


_KRONECKER: dict[tuple, Any] = {}


def kronecker(m: int, name: str, like: Any) -> Any:
    """M ⊗ M for M = TRANSFORMS[m][name] ("G", "BT", "AT"): a 2-D transform as one GEMM, made
    once per (m, name, dtype, device) and kept on the device, never rebuilt or copied per call."""
    key = (m, name, type(like), str(like.dtype), str(device(like)))
    if key not in _KRONECKER:
        matrix = TRANSFORMS[m][name]
        _KRONECKER[key] = namespace(like).asarray(
            _kron(matrix, matrix), dtype=like.dtype, device=device(like)
        )
    return _KRONECKER[key]


def transform_kernel(weight: Any, m: int) -> Any:
    """weight: (C_out, C_in, 3, 3) → U: (α², C_in, C_out), U_k = (G g Gᵀ)_k per channel pair."""
    xp = namespace(weight)
    c_out, c_in = weight.shape[:2]
    g = xp.reshape(xp.permute_dims(weight, (2, 3, 1, 0)), (9, c_in * c_out))
    return xp.reshape(precise_matmul(kronecker(m, "G", weight), g), (-1, c_in, c_out))  # (α², 9)


def kernel_grad(du: Any, m: int) -> Any:
    """The adjoint of transform_kernel: dU (α², C_in, C_out) → dg (C_out, C_in, 3, 3)."""
    xp = namespace(du)
    alpha2, c_in, c_out = du.shape
    dg = precise_matmul(kronecker(m, "G", du).T, xp.reshape(du, (alpha2, c_in * c_out)))
    return xp.permute_dims(xp.reshape(dg, (3, 3, c_in, c_out)), (3, 2, 0, 1))


def winograd_pads(h: int, w: int, pads: tuple, m: int) -> tuple[tuple, tuple, tuple[int, int]]:
    """Zero padding that makes the padded input exactly cover whole tiles, and the tile grid:
    ((top, bottom), (left, right), (TH, TW)); the extra rows and columns only feed outputs past
    the real ones, which are cropped."""
    oh, ow = h + sum(pads[0]) - 2, w + sum(pads[1]) - 2
    th, tw = tile_count(oh, m), tile_count(ow, m)
    bottom = m * th + 2 - h - pads[0][0]
    right = m * tw + 2 - w - pads[1][0]
    return (pads[0][0], bottom), (pads[1][0], right), (th, tw)


def transform_input(padded: Any, tiles: tuple[int, int], m: int) -> Any:
    """padded: (n, m·TH + 2, m·TW + 2, C) → V: (α², n·TH·TW, C), V = Bᵀ d B for every input
    tile d: one gather of the (overlapping) tiles, then one GEMM with Bᵀ ⊗ Bᵀ."""
    xp = namespace(padded)
    n, c = padded.shape[0], padded.shape[3]
    alpha = m + 2
    windows = sliding_windows(padded, (alpha, alpha), m)  # (n, TH, TW, α, α, C), a view
    d = xp.reshape(xp.permute_dims(windows, (3, 4, 0, 1, 2, 5)), (alpha * alpha, -1))
    v = precise_matmul(kronecker(m, "BT", padded), d)
    return xp.reshape(v, (alpha * alpha, n * tiles[0] * tiles[1], c))


def add_input_grad(dpadded: Any, start: int, dv: Any, tiles: tuple[int, int], m: int) -> None:
    """The adjoint of transform_input, added in place onto images start, start + 1, ... of
    dpadded: each tile's B dV Bᵀ goes back onto the pixels it was read from."""
    xp = namespace(dv)
    th, tw = tiles
    alpha, c = m + 2, dv.shape[2]
    dd = precise_matmul(kronecker(m, "BT", dv).T, xp.reshape(dv, (alpha * alpha, -1)))
    dd = xp.reshape(dd, (alpha, alpha, -1, th, tw, c))
    images = slice(start, start + dd.shape[2])
    for i in range(alpha):
        rows = slice(i, i + (th - 1) * m + 1, m)
        for j in range(alpha):
            dpadded[images, rows, j : j + (tw - 1) * m + 1 : m, :] += dd[i, j, ...]


def output_tiles(mm: Any, tiles: tuple[int, int], m: int) -> Any:
    """M: (α², n·TH·TW, C) → Aᵀ M A as (n, TH, m, TW, m, C), one GEMM with Aᵀ ⊗ Aᵀ; a
    permuted view, so that writing it into the output is the one copy."""
    xp = namespace(mm)
    th, tw = tiles
    alpha, c = m + 2, mm.shape[2]
    y = precise_matmul(kronecker(m, "AT", mm), xp.reshape(mm, (alpha * alpha, -1)))
    return xp.permute_dims(xp.reshape(y, (m, m, -1, th, tw, c)), (2, 3, 0, 4, 1, 5))


def output_grad(dy: Any, m: int) -> Any:
    """The adjoint of output_tiles: dY (n, TH·m, TW·m, C) → dM (α², n·TH·TW, C) = A dY Aᵀ per
    tile."""
    xp = namespace(dy)
    n, oh, ow, c = dy.shape
    alpha = m + 2
    dy = xp.permute_dims(xp.reshape(dy, (n, oh // m, m, ow // m, m, c)), (2, 4, 0, 1, 3, 5))
    dm = precise_matmul(kronecker(m, "AT", dy).T, xp.reshape(dy, (m * m, -1)))
    return xp.reshape(dm, (alpha * alpha, -1, c))


def chunk_images(
    n: int, tiles: tuple[int, int], channels: int, m: int, xp: Any, itemsize: int = 4
) -> int:
    """Images per chunk, so that a chunk's transformed tiles take about CHUNK_BYTES: the
    transforms and GEMMs then work in cache, and M, dM, dV live one chunk at a time. All n
    images at once where passes run on whole arrays (an accelerator: `whole_arrays`)."""
    if whole_arrays(xp):
        return n
    per_image = (m + 2) ** 2 * tiles[0] * tiles[1] * channels * itemsize
    return max(1, CHUNK_BYTES // per_image)


CHUNK_BYTES = 8 << 20  # measured: 8-16 MiB equally fast at batch 256; 8 holds less (BENCHMARKS.md)


def forward(padded: Any, u: Any, tiles: tuple[int, int], m: int) -> tuple[Any, list]:
    """y (N, TH·m, TW·m, C_out) = Aᵀ [V_k @ U_k]_k A, chunk by chunk of images; also the list of
    each chunk's V, kept for backward."""
    xp = namespace(padded)
    n, c_in, c_out = padded.shape[0], u.shape[1], u.shape[2]
    th, tw = tiles
    step = chunk_images(n, tiles, max(c_in, c_out), m, xp)
    y = xp.empty((n, th, m, tw, m, c_out), dtype=padded.dtype, device=device(padded))
    vs = []
    for start in range(0, n, step):
        images = slice(start, min(start + step, n))  # array_api_strict: no slice past the end
        vs.append(transform_input(padded[images, ...], tiles, m))
        y[images, ...] = output_tiles(xp.matmul(vs[-1], u), tiles, m)
    return xp.reshape(y, (n, th * m, tw * m, c_out)), vs


def backward(
    vs: list, u: Any, dy: Any, padded_shape: tuple, m: int, input_grad: bool,
    weight_grad: bool = True,
) -> tuple[Any, Any]:  # fmt: skip
    """(dU or None, d(padded) or None) for dY (N, TH·m, TW·m, C_out), chunk by chunk as in
    forward: dM = A dY Aᵀ, dU = Σ_chunks V_kᵀ @ dM_k, dV_k = dM_k @ U_kᵀ, d(padded) = Σ B dV Bᵀ;
    dU only with `weight_grad` (a frozen kernel's is never computed)."""
    xp = namespace(dy)
    n, oh, ow, _ = dy.shape
    tiles = (oh // m, ow // m)
    dpadded = xp.zeros(padded_shape, dtype=dy.dtype, device=device(dy)) if input_grad else None
    u_t = xp.permute_dims(u, (0, 2, 1))
    du, start = None, 0
    for v in vs:
        step = v.shape[1] // (tiles[0] * tiles[1])
        dm = output_grad(dy[start : start + step, ...], m)
        if weight_grad:
            part = xp.matmul(xp.permute_dims(v, (0, 2, 1)), dm)
            du = part if du is None else du + part
        if input_grad:
            add_input_grad(dpadded, start, xp.matmul(dm, u_t), tiles, m)
        start += step
    return du, dpadded
