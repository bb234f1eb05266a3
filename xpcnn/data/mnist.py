"""MNIST and Fashion-MNIST: four IDX files each (gzip'd or not), downloaded or in a local folder.

IDX: a 4-byte magic (0x00000803 for uint8 images of 3 dimensions, 0x00000801 for uint8 labels of
1), one big-endian uint32 per dimension, then the bytes row-major. Every header field is checked,
and the size it implies held to the input budgets (`Limits`), before the bytes are read.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xpcnn.data.dataset import DataError, Dataset
from xpcnn.data.download import download
from xpcnn.data.limits import Limits

IMAGES_MAGIC, LABELS_MAGIC = 0x00000803, 0x00000801
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


@dataclass(frozen=True)
class IdxRelease:
    """One official release: where it is served, the MD5 of each .gz file, its class names, and
    whether a mirror image shows the same class (`Dataset.mirrored`: clothes do, digits do not)."""

    name: str
    url: str
    url_variable: str
    md5: dict[str, str]
    classes: tuple[str, ...]
    mirrored: bool


# The MD5s of the official .gz files, as torchvision's datasets/mnist.py lists them.
MNIST = IdxRelease(
    "mnist",
    "https://ossci-datasets.s3.amazonaws.com/mnist/",  # torchvision's mirror of yann.lecun.com's
    "XPCNN_MNIST_URL",
    {
        "train-images-idx3-ubyte": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte": "ec29112dd5afa0611ce80d1b7f02629c",
    },
    tuple(str(d) for d in range(10)),
    mirrored=False,  # a mirrored 3 is no digit, a mirrored 2 or 5 almost another
)
FASHION_MNIST = IdxRelease(
    "fashion-mnist",
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",  # Zalando's, as torchvision's
    "XPCNN_FASHION_MNIST_URL",
    {
        "train-images-idx3-ubyte": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte": "bb300cfdad3c16e7a12a480ee83cd310",
    },
    ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
     "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
    mirrored=True,
)  # fmt: skip
RELEASES = {"mnist": MNIST, "fashion-mnist": FASHION_MNIST, "fashion_mnist": FASHION_MNIST}


def release_url(release: IdxRelease) -> str:
    """Where the .gz files are fetched from: $XPCNN_MNIST_URL (or ..._FASHION_MNIST_URL) or the
    official folder."""
    url = os.environ.get(release.url_variable, "").strip() or release.url
    return url if url.endswith("/") else url + "/"


def fetch_idx(release: IdxRelease, home: Path, progress: bool = True) -> Path:
    """<home>/<name>/ holding the four official .gz files, downloaded (MD5-checked) on first use."""
    folder = home / release.name
    for stem, md5 in release.md5.items():
        download(release_url(release) + stem + ".gz", folder / f"{stem}.gz", md5, progress)
    return folder


def is_idx_folder(path: Path) -> bool:
    """True when `path` is a folder holding MNIST-format image files (train or test)."""
    return path.is_dir() and any(_find(path, images) for images, _ in FILES.values())


def read_idx_folder(path: Path, split: str, release: IdxRelease | None = None) -> Dataset:
    """One split ('train' or 'test') of a folder of MNIST-format files (.gz or not).

    release: whose class names (and `mirrored`); None takes Fashion-MNIST's when the folder's
        name says 'fashion', else MNIST's digits.
    """
    if release is None:
        release = FASHION_MNIST if "fashion" in str(path).lower() else MNIST
    classes = release.classes
    files = [_find(path, stem) for stem in FILES[split]]
    for stem, file in zip(FILES[split], files, strict=True):
        if file is None:
            raise DataError(f"{path}: no {stem}(.gz) (expected the four MNIST-format IDX files)")
    images = read_idx(files[0], IMAGES_MAGIC)
    labels = read_idx(files[1], LABELS_MAGIC)
    if len(labels) != len(images):
        raise DataError(f"{files[1]}: {len(labels)} labels for {len(images)} images in {files[0]}")
    if labels.size and labels.max() >= len(classes):
        raise DataError(f"{files[1]}: label {labels.max()}, expected 0 to {len(classes) - 1}")
    images, labels = images[:, None], labels.astype(np.int64)
    return Dataset(images, labels, list(classes), True, str(path), mirrored=release.mirrored)


def _find(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem, stem.replace("-idx", ".idx")):  # some mirrors rename
        if (folder / name).is_file():
            return folder / name
    return None


def read_idx(path: Path, magic: int) -> np.ndarray:
    """The uint8 array of an IDX file (gzip'd or not) whose magic must be `magic`."""
    limits = Limits.from_env()
    limits.check_file(path.stat().st_size, str(path))
    with open(path, "rb") as raw:
        gzipped = raw.read(2) == b"\x1f\x8b"
    try:
        with gzip.open(path, "rb") if gzipped else open(path, "rb") as f:
            return _parse(f, str(path), magic, limits)
    except (OSError, EOFError, zlib.error) as err:  # gzip.BadGzipFile is an OSError
        what = "corrupt gzip stream" if gzipped else "cannot read"
        raise DataError(f"{path}: {what} ({err})") from None


def _parse(f, name: str, magic: int, limits: Limits) -> np.ndarray:
    head = f.read(4)
    if len(head) < 4 or struct.unpack(">I", head)[0] != magic:
        found = f"0x{struct.unpack('>I', head)[0]:08x}" if len(head) == 4 else "a short file"
        raise DataError(f"{name}: magic is {found}, expected 0x{magic:08x} (an IDX ubyte file)")
    ndim = magic & 0xFF
    dims = f.read(4 * ndim)
    if len(dims) < 4 * ndim:
        raise DataError(f"{name}: header ends before its {ndim} dimensions (truncated)")
    shape = struct.unpack(f">{ndim}I", dims)
    if ndim == 3:
        if shape[1] < 1 or shape[2] < 1:
            raise DataError(f"{name}: image size {shape[1]}x{shape[2]}, expected at least 1x1")
        limits.check_image(shape[1], shape[2], name)
    count = int(np.prod(shape, dtype=np.int64))
    limits.check_file(count, f"{name} (decompressed)")
    limits.check_data(count, name)
    data = f.read(count + 1)  # never more than one byte beyond what the header declares
    if len(data) != count:
        said = "x".join(map(str, shape))
        what = "fewer" if len(data) < count else "more"
        raise DataError(f"{name}: {what} bytes than its header's {said} (truncated or corrupt)")
    return np.frombuffer(data, dtype=np.uint8).reshape(shape).copy()
