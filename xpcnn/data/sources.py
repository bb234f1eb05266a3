"""`load_dataset`: one entry point for every source, with a decoded cache for archives and folders.

The cache is one uncompressed .npz per (source, split, size) in <data home>/decoded/, keyed by the
source's resolved path, byte size and modification time, so editing the source invalidates it
(and the next successful write removes the outdated file). It is written to a temporary file and
renamed, so a failed write leaves what was there intact.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from xpcnn.data.cifar10 import fetch_cifar10, read_cifar10, source_format
from xpcnn.data.cifar100 import ARCHIVE as CIFAR100_ARCHIVE
from xpcnn.data.cifar100 import fetch_cifar100, is_cifar100, read_cifar100
from xpcnn.data.dataset import DataError, Dataset, data_home
from xpcnn.data.images import read_image_tree, resize_images
from xpcnn.data.limits import GB, Limits
from xpcnn.data.mnist import RELEASES, fetch_idx, is_idx_folder, read_idx_folder
from xpcnn.files import atomic_file, read_npz

SPLITS = ("train", "test", "all")
CACHE_VERSION = 1
OFFICIAL = ("cifar10", "cifar-10")  # the names of the official download
CIFAR100 = {"cifar100": "fine", "cifar-100": "fine", "cifar100-coarse": "coarse",
            "cifar-100-coarse": "coarse"}  # fmt: skip
DATASET_NAMES = (*OFFICIAL, *CIFAR100, *RELEASES)  # every name downloaded on first use


def is_cifar10_name(source: str | os.PathLike) -> bool:
    """True when `source` names the official CIFAR-10 download rather than a path."""
    return str(source).lower() in OFFICIAL


def is_dataset_name(source: str | os.PathLike) -> bool:
    """True when `source` names an official download (cifar10, cifar100, mnist, ...), not a path."""
    return str(source).lower() in DATASET_NAMES


def load_dataset(
    source: str | os.PathLike,
    split: str = "train",
    size: int | tuple[int, int] | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> Dataset:
    """Images (uint8, (N, C, H, W), host) and labels from `source`.

    source: "cifar10", "cifar100" (fine labels), "cifar100-coarse", "mnist" or "fashion-mnist"
        (downloaded once into the data home); a CIFAR-10 binary or python archive or extracted
        folder, a CIFAR-100 python archive or folder, a folder of MNIST-format IDX files (.gz or
        not; Fashion-MNIST's class names when the path says 'fashion'), an image folder
        ROOT/<class>/*.png|jpg|jpeg|bmp, or such a folder inside a .tar, .tar.gz, .tgz or .zip
        (possibly under one top folder).
    split: "train", "test" or "all"; an image folder or archive has no official split, so every
        split is all of it (`Dataset.has_test` says which kind of source it was).
    size: height and width (an int for square) to resize every image to; None keeps the source's
        size (an image folder's images must then all have the same size).
    cache_dir: data home for downloads and decoded caches; default $XPCNN_DATA or ~/.cache/xpcnn.
    progress: show a download progress bar on stderr.
    """
    if split not in SPLITS:
        raise DataError(f"split={split!r}: expected one of {', '.join(SPLITS)}")
    size = _as_size(size)
    home = data_home(cache_dir)
    if is_cifar10_name(source):
        archive = home / "cifar-10-binary.tar.gz"

        def read_split(s: str) -> Dataset:
            return _resized(read_cifar10(fetch_cifar10(home, progress), "binary", s), size)

        return _official_splits(archive, split, size, home, read_split, cache=True)
    name = str(source).lower()
    if name in CIFAR100:
        labels = CIFAR100[name]

        def read_split(s: str) -> Dataset:
            return _resized(read_cifar100(fetch_cifar100(home, progress), s, labels), size)

        archive = home / CIFAR100_ARCHIVE
        return _official_splits(archive, split, size, home, read_split, True, labels)
    if name in RELEASES:  # no decoded cache: the IDX files decode as fast as a cache would
        release = RELEASES[name]
        folder = fetch_idx(release, home, progress)

        def read_split(s: str) -> Dataset:
            return _resized(read_idx_folder(folder, s, release), size)

        return _official_splits(folder, split, size, home, read_split, cache=False)

    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(
            f"{path}: no such file or folder (expected a dataset name such as 'cifar10' or "
            "'mnist', an image folder or a .tar/.tar.gz/.zip archive)"
        )
    if not path.is_dir() and not path.is_file():  # a FIFO or a device would block or never end
        raise DataError(f"{path}: is not a regular file or folder (expected a folder or archive)")
    read = _split_reader(path)
    if read is None:  # an image tree: one split, all of it
        return _cached(path, "all", size, home, lambda: read_image_tree(path, size))
    return _official_splits(
        path, split, size, home, lambda s: _resized(read(s), size), cache=path.is_file()
    )


def _split_reader(path: Path) -> Callable[[str], Dataset] | None:
    """How to read one split of a local release (CIFAR-10, CIFAR-100, MNIST); None for others."""
    fmt = source_format(path)
    if fmt is not None:
        return lambda s: read_cifar10(path, fmt, s)
    if is_cifar100(path):
        return lambda s: read_cifar100(path, s)
    if is_idx_folder(path):
        return lambda s: read_idx_folder(path, s)
    return None


def _as_size(size: int | tuple[int, int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    if h < 1 or w < 1:
        raise DataError(f"size={size!r}: expected positive height and width")
    Limits.from_env().check_image(int(h), int(w), f"size={size!r}")
    return int(h), int(w)


def _resized(dataset: Dataset, size: tuple[int, int] | None) -> Dataset:
    if size is None or dataset.images.shape[2:] == size:
        return dataset
    dataset.images = resize_images(dataset.images, size)
    dataset.notes.append(f"resized {len(dataset)} images to {size[0]}x{size[1]}")
    return dataset


def _official_splits(
    path: Path,
    split: str,
    size: tuple[int, int] | None,
    home: Path,
    read_split: Callable[[str], Dataset],
    cache: bool,
    variant: str = "",
) -> Dataset:
    """One split, or train then test for "all"; archives go through the decoded cache (`variant`,
    e.g. CIFAR-100's label set, tells apart caches of one archive)."""
    parts = []
    for s in ("train", "test") if split == "all" else (split,):
        key = f"{s}-{variant}" if variant else s
        parts.append(
            _cached(path, key, size, home, lambda s=s: read_split(s)) if cache else read_split(s)
        )
    if len(parts) == 1:
        return parts[0]
    train, test = parts
    return Dataset(
        np.concatenate([train.images, test.images]),
        np.concatenate([train.labels, test.labels]),
        train.classes,
        has_test=True,
        source=train.source,
        notes=train.notes + test.notes,
        mirrored=train.mirrored,
    )


def _cached(
    path: Path, split: str, size: tuple[int, int] | None, home: Path, read: Callable[[], Dataset]
) -> Dataset:
    problem = None
    if path.exists():
        file = _cache_file(path, split, size, home)
        try:
            cached = _load_cache(file)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
            cached, problem = None, str(err).strip().splitlines()[0] if str(err) else repr(err)
        if cached is not None:
            return cached
    dataset = read()
    if problem is not None:
        dataset.notes.append(f"the decoded cache {file} was unreadable ({problem}); rebuilt")
    _save_cache(_cache_file(path, split, size, home), dataset)
    return dataset


def _cache_file(path: Path, split: str, size: tuple[int, int] | None, home: Path) -> Path:
    """<home>/decoded/<name>-<split>-<which>-<version>.npz: `which` names the source, split and
    size; `version` changes whenever the source's files do."""
    path = path.resolve()
    if path.is_dir():  # a folder's own mtime misses edited files: stat every file
        stamp = [
            (str(Path(folder, f).relative_to(path)), *_stat(Path(folder, f)))
            for folder, _, files in sorted(os.walk(path))
            for f in sorted(files)
        ]
    else:
        stamp = _stat(path)
    which = _digest([CACHE_VERSION, str(path), split, size])
    return home / "decoded" / f"{path.name}-{split}-{which}-{_digest(stamp)}.npz"


def _digest(value: object) -> str:
    return hashlib.sha256(json.dumps(value).encode()).hexdigest()[:12]


def _stat(path: Path) -> tuple[int, int]:
    try:
        st = path.stat()
    except OSError:  # a dangling link: its own times
        st = path.lstat()
    return st.st_size, st.st_mtime_ns


def _load_cache(file: Path) -> Dataset | None:
    """The cached dataset, None when there is none; a ValueError (or OSError, BadZipFile) saying
    what is wrong with one that is there (it is then rebuilt and replaced)."""
    if not file.is_file():
        return None
    saved = read_npz(file, Limits.from_env().data_gb * GB)
    images, labels = saved["images"], saved["labels"]
    classes = [str(c) for c in saved["classes"].reshape(-1)]
    has_test, source = bool(saved["has_test"]), str(saved["source"])
    notes = [str(n) for n in saved["notes"].reshape(-1)]
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3, 4):
        raise ValueError(f"images: expected uint8 (N, C, H, W), got {images.dtype} {images.shape}")
    if labels.dtype.kind not in "iu" or labels.shape != (len(images),):
        raise ValueError(f"labels: expected {len(images)} integers")
    if labels.size and (labels.min() < 0 or labels.max() >= len(classes)):
        raise ValueError(f"labels: expected 0 to {len(classes) - 1}")
    notes.append(f"decoded images from the cache {file}")
    return Dataset(images, labels.astype(np.int64), classes, has_test, source, notes)


def _save_cache(file: Path, dataset: Dataset) -> None:
    """Write atomically (`atomic_file`); if that fails, note it and go on."""
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(file) as out:
            np.savez(
                out,
                images=dataset.images,
                labels=dataset.labels,
                classes=np.array(dataset.classes, dtype=str),
                has_test=np.array(dataset.has_test),
                source=np.array(dataset.source),
                notes=np.array(dataset.notes, dtype=str),
            )
        same_source = file.name.rsplit("-", 1)[0] + "-"
        for stale in file.parent.iterdir():  # the same source before it changed: never read again
            if stale.name.startswith(same_source) and stale.suffix == ".npz" and stale != file:
                stale.unlink(missing_ok=True)
    except OSError as err:
        dataset.notes.append(f"could not write the cache {file} ({err.strerror or err})")
