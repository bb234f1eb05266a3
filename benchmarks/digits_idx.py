"""scikit-learn's handwritten digits written as an MNIST release: four gzip'd IDX files.

    python benchmarks/digits_idx.py OUT_DIR [--test 400] [--seed 0]
    xpcnn train --data OUT_DIR --epochs 3

MNIST's official files cannot be downloaded on these machines; this real grey digit set stands in
for it. `sklearn.datasets.load_digits` is a copy of the test set of UCI's "Optical Recognition of
Handwritten Digits" (optdigits, E. Alpaydin and C. Kaynak, 1998): 1,797 digits, 10 classes of
174 to 183, from 13 of the set's 43 writers. Each is a 32x32 bitmap from NIST's preprocessing,
its 4x4 blocks counted into an 8x8 image of 17 grey levels (0..16).

MNIST's digits were size-normalised into a 20x20 box and centred in 28x28 (by centre of mass);
here each image is scaled to 0..255, resized whole to 20x20 (bilinear) and padded with 4 pixels of
0 on each side. A seeded split, stratified by class, sets --test images aside as the test split:
the same 13 writers are on both sides of it, unlike MNIST, whose test writers are not in its
training set.

scikit-learn is needed only to run this script (`pip install scikit-learn`), not by xpcnn.
"""

from __future__ import annotations

import argparse
import gzip
import struct
from pathlib import Path

import numpy as np
from PIL import Image

from xpcnn.data.mnist import FILES, IMAGES_MAGIC, LABELS_MAGIC
from xpcnn.files import atomic_file

BOX, SIZE = 20, 28  # MNIST's digit box and image size
MAGIC = {1: LABELS_MAGIC, 3: IMAGES_MAGIC}  # IDX ubyte: 0x0000080<number of dimensions>


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Write a uint8 array of 1 dimension (labels) or 3 (images) as an IDX file, atomically:
    its magic, one big-endian uint32 per dimension, the bytes row-major; gzip'd when `path`
    ends in .gz."""
    path = Path(path)
    if array.dtype != np.uint8 or array.ndim not in MAGIC:
        raise ValueError(f"{path}: expected a uint8 array of 1 or 3 dimensions, got "
                         f"{array.dtype} {array.shape}")  # fmt: skip
    data = struct.pack(f">I{array.ndim}I", MAGIC[array.ndim], *array.shape)
    data += np.ascontiguousarray(array).tobytes()
    with atomic_file(path) as out:
        if path.suffix == ".gz":  # no timestamp and the final name: the same bytes every time
            with gzip.GzipFile(path.name, "wb", fileobj=out, mtime=0) as gz:
                gz.write(data)
        else:
            out.write(data)


def upsample(images_8x8: np.ndarray) -> np.ndarray:
    """(N, h, w) uint8 → (N, 28, 28) uint8: each image resized to 20x20 (bilinear) and padded with
    4 pixels of 0 on each side, as MNIST's digits sit in a 20x20 box centred in 28x28."""
    if images_8x8.dtype != np.uint8 or images_8x8.ndim != 3:
        raise ValueError(f"expected uint8 images (N, h, w), got {images_8x8.dtype} "
                         f"{images_8x8.shape}")  # fmt: skip
    pad = (SIZE - BOX) // 2
    out = np.zeros((len(images_8x8), SIZE, SIZE), dtype=np.uint8)
    for image, box in zip(images_8x8, out[:, pad : pad + BOX, pad : pad + BOX], strict=True):
        box[...] = np.asarray(Image.fromarray(image).resize((BOX, BOX), Image.Resampling.BILINEAR))
    return out


def to_grey(counts: np.ndarray, levels: int = 16) -> np.ndarray:
    """Block counts 0..levels → uint8 0..255, rounded."""
    return np.rint(np.asarray(counts, dtype=np.float64) * (255 / levels)).astype(np.uint8)


def stratified_split(labels: np.ndarray, test: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) indices, each sorted: `test` of them drawn at random (seeded), from each class
    in proportion to its size (largest remainders take the leftover places)."""
    classes, counts = np.unique(labels, return_counts=True)
    share = counts * test / len(labels)
    quota = np.floor(share).astype(np.int64)
    leftover = np.argsort(-(share - quota), kind="stable")[: test - quota.sum()]
    quota[leftover] += 1
    rng = np.random.default_rng(seed)
    members = [np.flatnonzero(labels == c) for c in classes]
    chosen = [rng.permutation(m)[:q] for m, q in zip(members, quota, strict=True)]
    test_index = np.sort(np.concatenate(chosen))
    return np.setdiff1d(np.arange(len(labels)), test_index), test_index


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("out", type=Path, metavar="OUT_DIR", help="folder for the four .gz files")
    parser.add_argument("--test", type=int, default=400, help="test images (default: 400)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the split (default: 0)")
    args = parser.parse_args(argv)

    from sklearn.datasets import load_digits  # only this script needs scikit-learn

    digits = load_digits()
    if not 10 <= args.test <= len(digits.target) - 10:
        parser.error(f"--test: {args.test}, expected 10 to {len(digits.target) - 10}")
    images = upsample(to_grey(digits.images))
    labels = digits.target.astype(np.uint8)
    args.out.mkdir(parents=True, exist_ok=True)
    train, test = stratified_split(labels, args.test, args.seed)
    split_index = {"train": train, "test": test}
    for split, index in split_index.items():
        for stem, array in zip(FILES[split], (images[index], labels[index]), strict=True):
            path = args.out / f"{stem}.gz"
            write_idx(path, array)
            print(f"{path}: {'x'.join(map(str, array.shape))} uint8, {path.stat().st_size} bytes")
    for split, index in split_index.items():
        per_class = " ".join(map(str, np.bincount(labels[index], minlength=10)))
        print(f"{split}: {len(index)} images, per class 0-9: {per_class}")


if __name__ == "__main__":
    main()
