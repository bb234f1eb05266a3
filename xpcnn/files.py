"""The one atomic writer (a file is replaced whole or not at all: checkpoints, caches, plots) and
the one bounded reader of .npz files (headers checked before any array is allocated)."""

from __future__ import annotations

import errno
import os
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import numpy as np


@contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Write `path` all or nothing: into a temporary file in the same folder, flushed and
    fsynced, then renamed over `path`, so a crash or kill leaves the old file whole and no
    temporary file behind (except after a kill -9, as `.<name>.*.part`)."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    except FileNotFoundError:  # name the file asked for, not the temporary one
        raise FileNotFoundError(errno.ENOENT, "its folder does not exist", str(path)) from None
    try:
        if hasattr(os, "fchmod"):  # mkstemp makes 0600; give the file a new file's mode
            umask = os.umask(0)
            os.umask(umask)
            os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, mode) as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_link(source: str | os.PathLike, path: str | os.PathLike) -> None:
    """Make `path` hold what `source` holds now, atomically: a hard link renamed into place
    (no second write; `source` is later replaced, never rewritten, by `atomic_file`), or a
    copy where the file system has no hard links."""
    source, path = Path(source), Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.link")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError:
        with open(source, "rb") as src, atomic_file(path) as out:
            while chunk := src.read(1 << 20):
                out.write(chunk)
        return
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Replace a text file atomically."""
    with atomic_file(path, "w") as out:
        out.write(text)


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read_npz(path: str | os.PathLike, max_bytes: float) -> dict[str, np.ndarray]:
    """Every array of an .npz, after checking each member's .npy header: no Python objects, no
    more bytes than the member holds (a forged header cannot make us allocate 2^40 elements),
    and at most `max_bytes` in all. Raises ValueError (or zipfile.BadZipFile, OSError) saying
    what is wrong; never unpickles."""
    total = 0
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            with archive.open(info) as member:
                version = np.lib.format.read_magic(member)
                read_header = {
                    (1, 0): np.lib.format.read_array_header_1_0,
                    (2, 0): np.lib.format.read_array_header_2_0,
                }.get(version)
                if read_header is None:
                    raise ValueError(f"{info.filename}: unknown .npy format version {version}")
                shape, _, dtype = read_header(member)
            if dtype.hasobject:
                raise ValueError(f"{info.filename} holds Python objects, which are never loaded")
            nbytes = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
            if nbytes > info.file_size:
                raise ValueError(
                    f"{info.filename}: its header claims {nbytes} bytes, the file holds "
                    f"{info.file_size}"
                )
            total += nbytes
            if total > max_bytes:
                raise ValueError(f"its arrays need more than {max_bytes / 2**30:g} GiB")
    with np.load(path, allow_pickle=False) as npz:
        return {name: npz[name] for name in npz.files}
