"""CIFAR-10 in its official forms: the binary release (download or local), its extracted folder,
and the python release (pickles read by an unpickler that admits only plain types and arrays).

Binary record: 1 label byte, then 3072 pixel bytes = 3 channel planes of 32x32 (R, G, B), row-major.
"""

from __future__ import annotations

import codecs
import io
import os
import pickle
from pathlib import Path

import numpy as np

from xpcnn.data.archives import first_file_names, iter_members
from xpcnn.data.dataset import DataError, Dataset
from xpcnn.data.download import download

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
CIFAR10_MD5 = "c32a1d4ab5d03f1284b67883e8d87530"
CIFAR10_CLASSES = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
]  # fmt: skip
SHAPE = (3, 32, 32)
RECORD = 1 + 3 * 32 * 32

BINARY_FILES = {
    "train": [f"data_batch_{i}.bin" for i in range(1, 6)],
    "test": ["test_batch.bin"],
}
PYTHON_FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
BINARY_META, PYTHON_META = "batches.meta.txt", "batches.meta"


def cifar10_url() -> str:
    """The download address: $XPCNN_CIFAR10_URL (a mirror, a test server) or the official one."""
    return os.environ.get("XPCNN_CIFAR10_URL", "").strip() or CIFAR10_URL


def fetch_cifar10(home: Path, progress: bool = True) -> Path:
    """The official binary archive in `home`, downloaded (and MD5-checked) on first use."""
    return download(cifar10_url(), home / "cifar-10-binary.tar.gz", CIFAR10_MD5, progress)


def source_format(path: Path) -> str | None:
    """'binary' or 'python' when `path` (folder or archive) holds CIFAR-10 batches, else None."""
    if path.is_dir():
        for folder in (path, path / "cifar-10-batches-bin", path / "cifar-10-batches-py"):
            if (folder / "data_batch_1.bin").is_file():
                return "binary"
            if (folder / "data_batch_1").is_file() and (folder / PYTHON_META).is_file():
                return "python"
        return None
    names = set(first_file_names(path))
    if names & {*BINARY_FILES["train"], *BINARY_FILES["test"], BINARY_META}:
        return "binary"
    if names & {*PYTHON_FILES["train"], *PYTHON_FILES["test"], PYTHON_META}:
        return "python"
    return None


def read_cifar10(path: Path, fmt: str, split: str) -> Dataset:
    """One split ('train' or 'test') of a CIFAR-10 folder or archive in format `fmt`."""
    names = (BINARY_FILES if fmt == "binary" else PYTHON_FILES)[split]
    meta = BINARY_META if fmt == "binary" else PYTHON_META
    files = _read_files(path, {*names, meta})
    missing = [name for name in names if name not in files]
    if missing:
        raise DataError(f"{path}: no {missing[0]} (expected the CIFAR-10 {fmt} release)")
    parse = parse_binary if fmt == "binary" else parse_python
    parts = [parse(files[name], f"{path}:{name}") for name in names]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    classes = _class_names(files.get(meta), fmt)
    if labels.size and labels.max() >= len(classes):
        raise DataError(f"{path}: label {labels.max()} but only {len(classes)} class names")
    return Dataset(images, labels, classes, has_test=True, source=str(path))


def _read_files(path: Path, names: set[str]) -> dict[str, bytes]:
    if path.is_dir():
        for folder in (path, path / "cifar-10-batches-bin", path / "cifar-10-batches-py"):
            found = {n: (folder / n).read_bytes() for n in names if (folder / n).is_file()}
            if found:
                return found
        return {}
    return {parts[-1]: read() for parts, read in iter_members(path) if parts[-1] in names}


def parse_binary(data: bytes, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Records of one binary batch as (images uint8 (N, 3, 32, 32), labels int64 (N,))."""
    if len(data) == 0 or len(data) % RECORD:
        raise DataError(
            f"{name}: {len(data)} bytes is not a whole number of {RECORD}-byte CIFAR-10 records "
            "(truncated or not a CIFAR-10 batch)"
        )
    records = np.frombuffer(data, dtype=np.uint8).reshape(-1, RECORD)
    return records[:, 1:].reshape(-1, *SHAPE).copy(), records[:, 0].astype(np.int64)


class _PlainUnpickler(pickle.Unpickler):
    """Admits only what the CIFAR-10 python batches hold: dicts, lists, str/bytes, numbers and
    uint8 arrays. Any other global (os.system, builtins.eval, ...) is refused, never imported."""

    _reduce = np.zeros(1).__reduce__()[0]  # numpy's _reconstruct, wherever this numpy keeps it
    _frombuffer = np.zeros(1).__reduce_ex__(5)[0]
    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _reduce,
        ("numpy._core.multiarray", "_reconstruct"): _reduce,
        ("numpy.core.numeric", "_frombuffer"): _frombuffer,
        ("numpy._core.numeric", "_frombuffer"): _frombuffer,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,  # how Python 3 pickles bytes at protocol 2
    }

    def find_class(self, module: str, name: str):
        try:
            return self.ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing global {module}.{name}") from None


def unpickle_plain(data: bytes, name: str, expected: str = "a CIFAR-10 batch") -> dict:
    """The dict a CIFAR pickle holds, its keys as str, read by `_PlainUnpickler`."""
    try:
        obj = _PlainUnpickler(io.BytesIO(data), encoding="bytes").load()
    except pickle.UnpicklingError as err:
        raise DataError(f"{name}: unsafe or corrupt pickle ({err}); expected {expected}") from None
    except Exception as err:  # truncated or garbage bytes raise all sorts
        raise DataError(f"{name}: corrupt pickle ({type(err).__name__}: {err})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{name}: holds a {type(obj).__name__}, expected {expected} (a dict)")
    return {
        k.decode("utf-8", "replace") if isinstance(k, bytes) else str(k): v for k, v in obj.items()
    }


def parse_python(data: bytes, name: str) -> tuple[np.ndarray, np.ndarray]:
    """One python-release batch (a pickled dict with 'data' (N, 3072) and 'labels')."""
    batch = unpickle_plain(data, name)
    images, labels = batch.get("data"), batch.get("labels")
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 2:
        raise DataError(f"{name}: 'data' is not a uint8 (N, 3072) array")
    if not isinstance(labels, (list, tuple, np.ndarray)):
        raise DataError(f"{name}: 'labels' is a {type(labels).__name__}, expected a list")
    if images.shape[1] != RECORD - 1 or len(labels) != len(images):
        raise DataError(f"{name}: expected 'data' (N, 3072) and N 'labels', got {images.shape}")
    if isinstance(labels, np.ndarray):
        ok = labels.ndim == 1 and labels.dtype.kind in "iu"
    else:
        ok = all(isinstance(v, int) and not isinstance(v, bool) for v in labels)
    labels = np.asarray(labels, dtype=object if not ok else None)
    if not ok or (labels.size and not (0 <= labels.min() and labels.max() < 256)):
        raise DataError(f"{name}: 'labels' are not integers from 0 to 255 (expected class indices)")
    return images.reshape(-1, *SHAPE).copy(), labels.astype(np.int64)


def _class_names(meta: bytes | None, fmt: str) -> list[str]:
    if meta is None:
        return list(CIFAR10_CLASSES)
    if fmt == "binary":
        names = [line.strip() for line in meta.decode("utf-8", "replace").splitlines()]
    else:
        raw = unpickle_plain(meta, PYTHON_META).get("label_names", [])
        if not isinstance(raw, (list, tuple)) or not all(isinstance(n, (bytes, str)) for n in raw):
            raise DataError(f"{PYTHON_META}: 'label_names' is not a list of names")
        names = [n.decode("utf-8", "replace") if isinstance(n, bytes) else n for n in raw]
    return [n for n in names if n] or list(CIFAR10_CLASSES)
