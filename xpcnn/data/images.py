"""Labelled image trees: ROOT/<class>/*.{png,jpg,jpeg,bmp} as a folder or inside a tar/zip archive
(optionally under one top folder such as train/), decoded with Pillow to uint8 RGB.

Archives are read in one pass without extracting; big sets are decoded by worker processes
while the archive is still being read.
"""

from __future__ import annotations

import io
import multiprocessing
import os
import re
import stat
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from xpcnn.data.archives import iter_members
from xpcnn.data.dataset import DataError, Dataset
from xpcnn.data.limits import Limits

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
EXPECTED = "ROOT/<class>/*.png|jpg|jpeg|bmp"
_CHUNK = 4096  # images per decoding task (about 12 MB of 32x32 RGB)


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES) and not name.startswith(".")


def read_image_tree(path: Path, size: tuple[int, int] | None = None) -> Dataset:
    """All images under `path` (folder or archive) with labels from their class folder.

    size: (H, W) to resize every image to; None keeps the images' own size, which must then
    be the same for all of them.
    """
    notes: list[str] = []
    limits = Limits.from_env()
    entries = _folder_entries(path, limits, notes) if path.is_dir() else _archive_entries(path)
    names, images, resized = _decode_all(entries, size, path, limits)
    if not names:
        raise DataError(f"{path}: no images (expected {EXPECTED})")
    relative = _class_paths(names, path)
    # archive order is arbitrary: sort by (class, path) so a folder and its archive agree
    order = sorted((i for i, p in enumerate(relative) if len(p) > 1), key=lambda i: relative[i])
    classes = sorted({relative[i][0] for i in order})
    index = {name: label for label, name in enumerate(classes)}
    labels = np.array([index[relative[i][0]] for i in order], dtype=np.int64)
    if len(order) < len(relative):
        notes.append(f"ignored {len(relative) - len(order)} images outside the class folders")
    if resized:
        h, w = images.shape[2:]
        notes.append(f"resized {resized} of {len(labels)} images to {h}x{w} (height x width)")
    return Dataset(images[order], labels, classes, has_test=False, source=str(path), notes=notes)


def read_image_files(paths: Iterable[str | os.PathLike], size: tuple[int, int]) -> np.ndarray:
    """Image files decoded as `read_image_tree` decodes them, each resized to `size` (H, W):
    uint8 (N, 3, H, W). A missing or undecodable file is a DataError naming it."""
    names, blobs, limits = [str(p) for p in paths], [], Limits.from_env()
    limits.check_image(*size, f"{size[0]}x{size[1]}")
    limits.check_data(len(names) * 3 * size[0] * size[1], f"{len(names)} images")
    for name in names:
        if Path(name).is_dir():
            raise DataError(f"{name}: is a folder (expected an image file)")
        if not Path(name).exists():
            raise DataError(f"{name}: does not exist (expected an image file)")
        if not Path(name).is_file():
            raise DataError(f"{name}: is not a regular file (expected an image file)")
        limits.check_file(Path(name).stat().st_size, name)
        blobs.append(Path(name).read_bytes())
    images, failures, _ = decode_chunk(blobs, size, resize=True, limits=limits)
    if failures:
        index, problem = failures[0]
        raise DataError(f"{names[index]}: {problem}")
    return images


def to_grey(images: np.ndarray) -> np.ndarray:
    """uint8 (N, 3, H, W) RGB as (N, 1, H, W) luminance, as Pillow's convert("L") computes it."""
    r, g, b = (images[:, c].astype(np.uint32) for c in range(3))
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).astype(np.uint8)[:, None]


def _folder_entries(
    root: Path, limits: Limits, notes: list[str]
) -> Iterator[tuple[tuple[str, ...], Callable[[], bytes]]]:
    """Image files under `root`: regular files only, links followed (a FIFO or device named
    x.png would block or never end); dangling links and other kinds are skipped with a note."""
    skipped = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        rel = Path(folder).relative_to(root).parts
        for name in sorted(files):
            if is_image_name(name):
                file = Path(folder, name)
                try:
                    info = file.stat()
                except OSError:  # a dangling link
                    skipped.append(str(file))
                    continue
                if not stat.S_ISREG(info.st_mode):
                    skipped.append(str(file))
                    continue
                limits.check_file(info.st_size, str(file))
                yield (*rel, name), file.read_bytes
    if skipped:
        notes.append(
            f"skipped {len(skipped)} image names that are not regular files or dangling links "
            f"(first: {skipped[0]})"
        )


def _archive_entries(archive: Path) -> Iterator[tuple[tuple[str, ...], Callable[[], bytes]]]:
    for parts, read in iter_members(archive):
        if is_image_name(parts[-1]) and "__MACOSX" not in parts:
            yield parts, read


def _class_paths(names: list[tuple[str, ...]], root: Path) -> list[tuple[str, ...]]:
    """Paths relative to the class folders' parent: drop one top folder that all share
    (train/<class>/x.png) when the images still sit in class folders without it."""
    if all(len(p) >= 3 for p in names) and len({p[0] for p in names}) == 1:
        names = [p[1:] for p in names]
    if all(len(p) < 2 for p in names):
        raise DataError(f"{root}: has no class folders (expected {EXPECTED})")
    return names


def _decode_all(
    entries: Iterable[tuple[tuple[str, ...], Callable[[], bytes]]],
    size: tuple[int, int] | None,
    root: Path,
    limits: Limits,
) -> tuple[list[tuple[str, ...]], np.ndarray, int]:
    """(names, images uint8 (N, 3, H, W), number resized); errors name the file.

    Chunks go to worker processes as soon as one is full, so decoding overlaps reading.
    """
    resize = size is not None
    names: list[tuple[str, ...]] = []
    blobs: list[bytes] = []
    futures: list[Future] = []
    pool: Executor | None = None
    try:
        for parts, read in entries:
            names.append(parts)
            blobs.append(read())
            if size is None:
                size = _image_size(blobs[0], _display(root, parts), limits)
            if len(names) % _CHUNK == 1:  # twice decoded at the concatenation
                limits.check_data(2 * (len(names) + _CHUNK) * 3 * size[0] * size[1], str(root))
            if len(blobs) == _CHUNK:
                pool = pool or _worker_pool()
                futures.append(_submit(pool, blobs, size, resize, limits))
                blobs = []
        if not names:
            return names, np.zeros((0, 3, 1, 1), np.uint8), 0
        futures.append(_submit(None, blobs, size, resize, limits))  # while the workers work
        results = [future.result() for future in futures]
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    chunks, resized = [], 0
    for k, (images, failures, n_resized) in enumerate(results):
        if failures:
            i, problem = failures[0]
            raise DataError(f"{_display(root, names[k * _CHUNK + i])}: {problem}")
        chunks.append(images)
        resized += n_resized
    return names, np.concatenate(chunks), resized


def _image_size(blob: bytes, name: str, limits: Limits) -> tuple[int, int]:
    """(H, W) of an encoded image, read from its header (nothing is decoded)."""
    try:
        width, height = Image.open(io.BytesIO(blob)).size
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as err:
        raise DataError(f"{name}: {_unreadable(err)}") from None
    limits.check_image(height, width, name)
    return height, width


def _unreadable(err: BaseException) -> str:
    """Pillow's reason without its in-memory file's repr (`<_io.BytesIO object at 0x...>`)."""
    reason = re.sub(r"\s*<_io\.BytesIO object at 0x[0-9a-f]+>", "", str(err)).strip() or "?"
    return f"unreadable image ({reason}); expected a PNG, JPEG or BMP file"


def _display(root: Path, parts: tuple[str, ...]) -> str:
    return str(root.joinpath(*parts)) if root.is_dir() else f"{root}:{'/'.join(parts)}"


def _worker_pool() -> Executor | None:
    """Worker processes for decoding, or None to decode here.

    Only `fork` is used: `spawn` and `forkserver` re-run the user's __main__ module, which breaks
    scripts without an `if __name__ == "__main__"` guard. Forking a process that runs other
    threads can deadlock, so then we decode here too.
    """
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if (cpus or 1) < 2 or threading.active_count() > 1:
        return None
    if "fork" not in multiprocessing.get_all_start_methods():
        return None
    return ProcessPoolExecutor(min(cpus, 8), mp_context=multiprocessing.get_context("fork"))


def decode_chunk(
    blobs: list[bytes], size: tuple[int, int], resize: bool, limits: Limits
) -> tuple[np.ndarray, list[tuple[int, str]], int]:
    """Decode encoded images to uint8 (n, 3, H, W): (images, [(index, problem)], n resized).

    Each image's size is read from its header and checked against the pixel budget before it
    is decoded. Runs in worker processes, so problems come back as values, not exceptions.
    """
    h, w = size
    out = np.zeros((len(blobs), h, w, 3), dtype=np.uint8)  # Pillow's layout; NCHW at the end
    failures, resized = [], 0
    for i, blob in enumerate(blobs):
        try:
            image = Image.open(io.BytesIO(blob))
            if image.width * image.height > limits.image_mp * 1e6:
                failures.append((i, f"is {image.height}x{image.width}, more than the "
                                 f"{limits.image_mp:g} megapixels allowed for one image (set "
                                 "XPCNN_MAX_IMAGE_MP to allow it)"))  # fmt: skip
                continue
            image.load()  # decodes here, so a truncated file is caught here
            image = image if image.mode == "RGB" else image.convert("RGB")
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as err:
            failures.append((i, _unreadable(err)))
            continue
        if image.size != (w, h):
            if not resize:
                failures.append((
                    i, f"is {image.height}x{image.width} but the first image is {h}x{w} "
                    "(height x width); pass size=(H, W) to resize all images",
                ))  # fmt: skip
                continue
            image = image.resize((w, h), Image.Resampling.BILINEAR)
            resized += 1
        out[i] = np.asarray(image)
    out = np.ascontiguousarray(out.transpose(0, 3, 1, 2))
    return out, failures, resized


def _submit(
    pool: Executor | None, blobs: list[bytes], size: tuple[int, int], resize: bool,
    limits: Limits,
) -> Future:  # fmt: skip
    if pool is None:
        done: Future = Future()
        done.set_result(decode_chunk(blobs, size, resize, limits))
        return done
    return pool.submit(decode_chunk, blobs, size, resize, limits)


def resize_images(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 (N, C, H, W) resized to (H', W') with Pillow's bilinear filter, one image at a time."""
    h, w = size
    if images.shape[2:] == (h, w):
        return images
    limits = Limits.from_env()
    limits.check_image(h, w, f"resizing to {h}x{w}")
    limits.check_data(images.shape[0] * images.shape[1] * h * w, f"resizing to {h}x{w}")
    out = np.empty((*images.shape[:2], h, w), dtype=np.uint8)
    for i, image in enumerate(images):
        pil = Image.fromarray(np.ascontiguousarray(image.transpose(1, 2, 0)).squeeze())
        out[i] = (
            np.asarray(pil.resize((w, h), Image.Resampling.BILINEAR))
            .reshape(h, w, -1)
            .transpose(2, 0, 1)
        )
    return out
