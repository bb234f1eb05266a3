"""Initialisations that set a layer's weights from a rule or from data: identity (dirac) filters
and patch whitening (airbench's first layer)."""

from __future__ import annotations

from typing import Any

from xpcnn.backend import device, namespace, sliding_windows
from xpcnn.layers.conv import Conv2D


def identity_init(conv: Conv2D) -> None:
    """The first min(C_in, C_out) filters pass their own input channel through unchanged: a 1 at
    the kernel's centre, 0 elsewhere (PyTorch's `dirac_`). The other filters keep their values.
    An identity start lets a deep plain network train like a residual one."""
    w = conv.params["weight"]
    xp = namespace(w)
    c_out, c_in, kh, kw = w.shape
    k = min(c_in, c_out)
    w[:k, ...] = 0.0
    w[:k, :, kh // 2, kw // 2] = xp.eye(k, c_in, dtype=w.dtype, device=device(w))


def whitening_init(conv: Conv2D, images: Any, eps: float = 5e-4) -> None:
    """Set the filters of `conv` (C_out = 2·C_in·kh·kw, no stride) to whiten its input patches.

    With Σ = E[p pᵀ] the covariance of every kh×kw patch p of `images` (N, C, H, W, normalised)
    and Σ = Q Λ Qᵀ, the filters are the rows of Λ^(-1/2) Qᵀ (largest eigenvalue first) and their
    negatives: the outputs are uncorrelated with unit variance, and a following GELU sees both
    signs. Sets the bias to 0.
    """
    w = conv.params["weight"]
    c_out, c_in, kh, kw = w.shape
    size = c_in * kh * kw
    if c_out != 2 * size:
        raise ValueError(f"whitening_init: a {kh}x{kw} conv of {c_in} channels needs "
                         f"{2 * size} filters, got {c_out}")  # fmt: skip
    xp = namespace(images)
    x = xp.permute_dims(xp.astype(images, w.dtype), (0, 2, 3, 1))  # (N, H, W, C)
    windows = sliding_windows(x, (kh, kw), 1)  # (N, OH, OW, kh, kw, C)
    patches = xp.reshape(xp.permute_dims(windows, (0, 1, 2, 5, 3, 4)), (-1, size))  # (C,kh,kw)
    covariance = (patches.T @ patches) / patches.shape[0]
    eigenvalues, eigenvectors = xp.linalg.eigh(covariance)  # ascending
    order = xp.arange(size - 1, -1, -1, device=device(w))
    filters = (
        xp.take(eigenvectors, order, axis=1).T
        / xp.sqrt(xp.take(eigenvalues, order, axis=0) + eps)[:, None]
    )
    filters = xp.reshape(filters, (size, c_in, kh, kw))
    conv.params["weight"] = xp.concat([filters, -filters], axis=0)
    if "bias" in conv.params:
        conv.params["bias"] = xp.zeros_like(conv.params["bias"])
