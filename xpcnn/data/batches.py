"""Batches from a dataset moved to the device once: shuffled per epoch, normalised, augmented."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from xpcnn.backend import Generator, asarray, device, namespace, to_numpy
from xpcnn.data.augment import mirror_where

AugmentFn = Callable[[Any, Generator], Any]


class Batches:
    """(x, y) batches: x float32 (B, C, H, W) = (uint8 / 255 - mean) / std, y int64 (B,).

    The uint8 images are copied to the device once (CIFAR-10's 50,000 train images are 150 MB),
    so a step only gathers its rows with `take`. Epoch e is shuffled by `Generator(seed, e)` and
    augmented by `Generator(seed, e, 1)`: an epoch is reproducible from (seed, e) alone, which is
    what resuming a run exactly needs. Iterating runs epoch 0, 1, 2, ... in turn (or from
    `set_epoch(e)`); `epoch(e)` runs one given epoch.

    alternate_flip: image i is mirrored in epoch e when flips[i] XOR (e odd), flips[i] drawn once
    by `Generator(seed, 0, 2)`: each image is seen both ways in any two epochs in a row
    (airbench's alternating flip), instead of a coin per image and epoch.

    shard=(rank, size): data-parallel training on `size` ranks. Every rank forms the same global
    batches; rank r keeps its contiguous share of each, augmented exactly as one process would
    have augmented those images. A last batch of fewer images than ranks is left out on all.
    """

    def __init__(
        self,
        images: Any,
        labels: Any,
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        mean: Any = None,
        std: Any = None,
        augment: AugmentFn | None = None,
        shard: tuple[int, int] = (0, 1),
        alternate_flip: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}: expected at least 1")
        self.images = asarray(images)
        self.labels = asarray(labels, dtype="int64")
        if self.images.ndim != 4 or self.labels.shape != (self.images.shape[0],):
            raise ValueError(
                f"Batches: expected images (N, C, H, W) and labels (N,), got "
                f"{tuple(self.images.shape)} and {tuple(self.labels.shape)}"
            )
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.drop_last, self.augment, self.shard = drop_last, augment, shard
        xp, channels = namespace(self.images), self.images.shape[1]
        mean = (
            xp.zeros(channels, device=device(self.images))
            if mean is None
            else asarray(to_numpy(mean), "float64")
        )
        std = (
            xp.ones(channels, device=device(self.images))
            if std is None
            else asarray(to_numpy(std), "float64")
        )
        # (x / 255 - mean) / std  ==  x * scale - shift: one multiply, one subtract per pixel
        self.scale = xp.astype(xp.reshape(1.0 / (255.0 * std), (1, channels, 1, 1)), xp.float32)
        self.shift = xp.astype(xp.reshape(mean / std, (1, channels, 1, 1)), xp.float32)
        self.flips = (
            Generator(seed, 0, 2).uniform((self.images.shape[0],)) < 0.5 if alternate_flip else None
        )
        self.next_epoch = 0

    def __len__(self) -> int:
        n, ranks = self.images.shape[0], self.shard[1]
        if self.drop_last or 0 < n % self.batch_size < ranks:
            return n // self.batch_size
        return -(-n // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration run epoch `epoch` (after resuming from a checkpoint)."""
        self.next_epoch = epoch

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        epoch, self.next_epoch = self.next_epoch, self.next_epoch + 1
        return self.epoch(epoch)

    def epoch(self, epoch: int) -> Iterator[tuple[Any, Any]]:
        """The batches of epoch `epoch`, the same every time for the same (seed, epoch)."""
        xp = namespace(self.images)
        n = self.images.shape[0]
        if self.shuffle:
            order = asarray(Generator(self.seed, epoch).permutation(n), "int64")
        else:
            order = xp.arange(n, dtype=xp.int64, device=device(self.images))
        rng = Generator(self.seed, epoch, 1) if self.augment is not None else None
        rank, ranks = self.shard
        for b in range(len(self)):
            idx = order[b * self.batch_size : min((b + 1) * self.batch_size, n)]
            draws: Any = rng
            if ranks > 1:
                total = idx.shape[0]
                rows = slice(total * rank // ranks, total * (rank + 1) // ranks)
                idx, draws = idx[rows], _Rows(rng, total, rows) if rng is not None else None
            x = xp.astype(xp.take(self.images, idx, axis=0), xp.float32)
            x = x * self.scale - self.shift
            if self.flips is not None:
                x = mirror_where(x, xp.take(self.flips, idx, axis=0) ^ (epoch % 2 == 1))
            if draws is not None:
                x = self.augment(x, draws)
            yield x, xp.take(self.labels, idx, axis=0)


class _Rows:
    """A generator that draws for a whole global batch of `total` images and hands back this
    rank's `rows`, so each image gets the numbers one process would have drawn for it."""

    def __init__(self, rng: Generator, total: int, rows: slice) -> None:
        self.rng, self.total, self.rows = rng, total, rows

    def uniform(self, shape: tuple[int, ...], dtype: Any = "float32") -> Any:
        return self.rng.uniform((self.total, *shape[1:]), dtype)[self.rows]

    def integers(self, low: int, high: int, shape: tuple[int, ...]) -> Any:
        return self.rng.integers(low, high, (self.total, *shape[1:]))[self.rows]

    def normal(self, shape: tuple[int, ...], std: float = 1.0, dtype: Any = "float32") -> Any:
        return self.rng.normal((self.total, *shape[1:]), std, dtype)[self.rows]
