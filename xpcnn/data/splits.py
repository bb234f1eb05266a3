"""Host-side bookkeeping on labels and pixels: stratified splits and subsets, channel statistics."""

from __future__ import annotations

import numpy as np

from xpcnn.backend import to_numpy
from xpcnn.data.dataset import DataError


def stratified_split(
    labels: np.ndarray, val_fraction: float = 0.2, *, n_val: int | None = None, seed: int = 42
) -> tuple[np.ndarray, np.ndarray]:
    """(train_idx, val_idx), sorted int64 indices with each class split in the same proportion.

    `n_val` (a count) overrides `val_fraction`. Class quotas are rounded by largest remainder,
    so the total is exact; the same labels and seed always give the same split.
    """
    labels = np.asarray(to_numpy(labels))
    n = len(labels)
    if n_val is None:
        if not 0.0 <= val_fraction < 1.0:
            raise DataError(f"val_fraction={val_fraction}: expected a fraction in [0, 1)")
        n_val = round(n * val_fraction)
    if not 0 <= n_val <= n:
        raise DataError(f"n_val={n_val}: expected between 0 and the {n} examples")
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * (n_val / max(n, 1))
    quota = np.floor(exact).astype(np.int64)
    # hand the rounding leftovers to the classes with the largest remainders (ties: lower label)
    leftover = np.argsort(-(exact - quota), kind="stable")[: n_val - quota.sum()]
    quota[leftover] += 1
    val = [
        rng.permutation(np.flatnonzero(labels == c))[:q]
        for c, q in zip(classes, quota, strict=True)
    ]
    val_idx = np.sort(np.concatenate(val or [np.zeros(0, np.int64)])).astype(np.int64)
    train_mask = np.ones(n, dtype=bool)
    train_mask[val_idx] = False
    return np.flatnonzero(train_mask).astype(np.int64), val_idx


def stratified_subset(labels: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of `n` examples with the class proportions of `labels` (a quick run on a
    subset)."""
    return stratified_split(labels, n_val=min(n, len(labels)), seed=seed)[1]


def train_val_indices(
    labels: np.ndarray, val_split: float, seed: int, limit: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(train_idx, val_idx) of a training source: a stratified validation split, then with
    `limit` a stratified subset of `limit` training images and a validation subset in the same
    proportion (so a quick run also validates quickly). Same arguments ⇒ same indices."""
    if val_split > 0:
        train_idx, val_idx = stratified_split(labels, val_split, seed=seed)
    else:
        train_idx, val_idx = np.arange(len(labels), dtype=np.int64), np.zeros(0, np.int64)
    if limit is not None:
        train_idx = train_idx[stratified_subset(labels[train_idx], limit, seed=seed)]
        if len(val_idx):
            n_val = max(1, round(limit * val_split / (1.0 - val_split)))
            val_idx = val_idx[stratified_subset(labels[val_idx], n_val, seed=seed)]
    return train_idx, val_idx


def channel_stats(images: np.ndarray, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (mean, std) of uint8 images (N, C, H, W) on the [0, 1] scale, float32 (C,);
    std is 1 for a channel whose values vary by less than one step of 1/255.

    Exact and light on memory: a 256-bin histogram per channel, filled a chunk at a time.
    """
    images = to_numpy(images)
    if images.dtype != np.uint8 or images.ndim != 4 or len(images) == 0:
        raise DataError(f"channel_stats: expected uint8 images (N, C, H, W), got {images.shape}")
    channels = images.shape[1]
    counts = np.zeros((channels, 256), dtype=np.int64)
    for start in range(0, len(images), chunk):
        block = images[start : start + chunk]
        for c in range(channels):
            counts[c] += np.bincount(block[:, c].ravel(), minlength=256)
    values = np.arange(256, dtype=np.float64) / 255.0
    total = counts.sum(axis=1)
    mean = counts @ values / total
    var = counts @ values**2 / total - mean**2
    std = np.sqrt(np.maximum(var, 0.0))
    # a channel that never varies (a grey set, a constant colour) is centred, not divided by 0
    std[std < 1.0 / 255.0] = 1.0
    return mean.astype(np.float32), std.astype(np.float32)
