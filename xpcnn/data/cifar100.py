"""CIFAR-100 in its python release: `train`, `test` and `meta` pickles (an archive or its folder),
read by CIFAR-10's unpickler that admits only plain types and arrays.

Each batch is a dict with 'data' (N, 3072) uint8 (R, G, B planes of 32x32), 'fine_labels' (100
classes) and 'coarse_labels' (20 superclasses); `meta` names both sets.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from xpcnn.data.archives import first_file_names, iter_members
from xpcnn.data.cifar10 import RECORD, SHAPE, unpickle_plain
from xpcnn.data.dataset import DataError, Dataset
from xpcnn.data.download import download

CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
CIFAR100_MD5 = "eb9058c3a382ffc7106e4002c42a8d85"  # torchvision's datasets/cifar.py, `tgz_md5`
ARCHIVE = "cifar-100-python.tar.gz"
FOLDER = "cifar-100-python"
META = "meta"
LABEL_SETS = {"fine": 100, "coarse": 20}  # label set -> number of classes


def cifar100_url() -> str:
    """The download address: $XPCNN_CIFAR100_URL (a mirror, a test server) or the official one."""
    return os.environ.get("XPCNN_CIFAR100_URL", "").strip() or CIFAR100_URL


def fetch_cifar100(home: Path, progress: bool = True) -> Path:
    """The official python archive in `home`, downloaded (and MD5-checked) on first use."""
    return download(cifar100_url(), home / ARCHIVE, CIFAR100_MD5, progress)


def is_cifar100(path: Path) -> bool:
    """True when `path` (folder or archive) holds the CIFAR-100 python release."""
    if path.is_dir():
        folders = (path, path / FOLDER)
        return any(
            (f / META).is_file() and _has_batch({*os.listdir(f)}) for f in folders if f.is_dir()
        )
    names = set(first_file_names(path))
    return META in names and _has_batch(names)


def _has_batch(names: set[str]) -> bool:
    return bool(names & {"train", "test"})


def read_cifar100(path: Path, split: str, labels: str = "fine") -> Dataset:
    """One split ('train' or 'test') of a CIFAR-100 folder or archive, in the label set `labels`
    ('fine': 100 classes, 'coarse': 20 superclasses)."""
    files = _read_files(path, {split, META})
    for name in (split, META):
        if name not in files:
            raise DataError(f"{path}: no {name} (expected the CIFAR-100 python release)")
    classes = _class_names(files[META], labels, f"{path}:{META}")
    images, targets = parse_batch(files[split], f"{path}:{split}", labels, len(classes))
    return Dataset(images, targets, classes, has_test=True, source=str(path))


def _read_files(path: Path, names: set[str]) -> dict[str, bytes]:
    if path.is_dir():
        folder = path / FOLDER if (path / FOLDER).is_dir() else path
        return {n: (folder / n).read_bytes() for n in names if (folder / n).is_file()}
    return {parts[-1]: read() for parts, read in iter_members(path) if parts[-1] in names}


def parse_batch(
    data: bytes, name: str, labels: str, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """One batch as (images uint8 (N, 3, 32, 32), labels int64 (N,)) of the label set `labels`."""
    batch = unpickle_plain(data, name, "a CIFAR-100 batch")
    key = f"{labels}_labels"
    images, targets = batch.get("data"), batch.get(key)
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 2:
        raise DataError(f"{name}: 'data' is not a uint8 (N, 3072) array")
    if images.shape[1] != RECORD - 1:
        raise DataError(f"{name}: 'data' is {images.shape}, expected (N, 3072)")
    if not isinstance(targets, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in targets
    ):
        raise DataError(f"{name}: '{key}' is not a list of integers")
    if len(targets) != len(images):
        raise DataError(f"{name}: {len(targets)} '{key}' for {len(images)} images")
    targets = np.asarray(targets, dtype=np.int64)
    if targets.size and (targets.min() < 0 or targets.max() >= num_classes):
        raise DataError(f"{name}: '{key}' runs from {targets.min()} to {targets.max()}, "
                        f"expected 0 to {num_classes - 1}")  # fmt: skip
    return images.reshape(-1, *SHAPE).copy(), targets


def _class_names(meta: bytes, labels: str, name: str) -> list[str]:
    key = f"{labels}_label_names"
    raw = unpickle_plain(meta, name, "the CIFAR-100 meta dict").get(key)
    if not isinstance(raw, list) or not all(isinstance(n, (bytes, str)) for n in raw):
        raise DataError(f"{name}: '{key}' is not a list of names")
    if len(raw) != LABEL_SETS[labels]:
        raise DataError(f"{name}: '{key}' has {len(raw)} names, expected {LABEL_SETS[labels]}")
    return [n.decode("utf-8", "replace") if isinstance(n, bytes) else n for n in raw]
