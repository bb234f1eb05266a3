"""The dataset every source returns, the one error class of the data pipeline, and its cache dir."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np


class DataError(ValueError):
    """Bad or missing data; the one-line message names the file and what was expected."""


@dataclass
class Dataset:
    """Images and labels in host memory.

    images: uint8 (N, C, H, W);  labels: int64 (N,), label i names `classes[i]`;
    has_test: the source has an official test split (CIFAR-10 does, an image folder does not);
    notes: what loading did that a person may want to know (resized images, cache use);
    mirrored: an image's mirror image shows the same class (photographs, clothes), so training may
    flip images and TTA may average in the mirror view; False for handwriting (MNIST's digits).
    """

    images: np.ndarray
    labels: np.ndarray
    classes: list[str]
    has_test: bool = False
    source: str = ""
    notes: list[str] = field(default_factory=list)
    mirrored: bool = True

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, idx: np.ndarray) -> Dataset:
        """The examples at `idx` (e.g. from `stratified_split`), same classes."""
        idx = np.asarray(idx)
        return replace(self, images=self.images[idx], labels=self.labels[idx])

    def class_counts(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=len(self.classes))


def data_home(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where downloads and decoded caches live: `cache_dir`, $XPCNN_DATA or ~/.cache/xpcnn."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("XPCNN_DATA", "").strip()
    return Path(env).expanduser() if env else Path.home() / ".cache" / "xpcnn"
