"""Read members of .tar / .tar.gz / .tgz / .zip archives in memory, refusing unsafe names.

Nothing is extracted to disk. A member whose name is absolute or climbs out with `..`, or a link
that points outside the archive, is refused with a `DataError` rather than skipped: an archive
built like that is not a dataset we should trust.
"""

from __future__ import annotations

import lzma
import posixpath
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

from xpcnn.data.dataset import DataError
from xpcnn.data.limits import Limits

TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")
ARCHIVE_SUFFIXES = (*TAR_SUFFIXES, ".zip")
_CORRUPT = (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, lzma.LZMAError, OSError)


def archive_kind(path: Path) -> str:
    """'tar' or 'zip' by content; a DataError for anything else."""
    try:
        if zipfile.is_zipfile(path):
            return "zip"
        if tarfile.is_tarfile(path):
            return "tar"
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror or err})") from None
    if path.name.lower().endswith(ARCHIVE_SUFFIXES):
        raise DataError(f"{path}: truncated or corrupt archive (not a readable tar or zip file)")
    raise DataError(
        f"{path}: unknown archive type (expected a folder, {', '.join(ARCHIVE_SUFFIXES)})"
    )


def member_parts(name: str, archive: Path) -> tuple[str, ...]:
    """A member name as path parts, or a DataError if it is absolute or climbs out with `..`."""
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise DataError(f"{archive}: member {name!r} has an absolute path (refusing the archive)")
    parts = tuple(p for p in name.replace("\\", "/").split("/") if p not in ("", "."))
    if ".." in parts:
        raise DataError(f"{archive}: member {name!r} points outside the archive with '..'")
    return parts


def _check_link(member: tarfile.TarInfo, archive: Path) -> None:
    target = member.linkname
    if member.issym():  # relative to the link's own folder
        target = posixpath.join(posixpath.dirname(member.name), target)
    if member.linkname.startswith("/") or posixpath.normpath(target).startswith(".."):
        raise DataError(
            f"{archive}: link {member.name!r} -> {member.linkname!r} points outside the archive"
        )


def iter_members(archive: Path) -> Iterator[tuple[tuple[str, ...], Callable[[], bytes]]]:
    """(parts, read) for each regular file in archive order; `read()` works until the next step.

    Every member's name is checked, read or not; links are checked and never followed. A member
    larger than the file budget (`Limits`) is refused when read, before its bytes are.
    """
    kind = archive_kind(archive)
    limits = Limits.from_env()
    try:
        if kind == "zip":
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    parts = member_parts(info.filename, archive)
                    if parts and not info.is_dir() and not stat.S_ISLNK(info.external_attr >> 16):
                        read = _zip_reader(zf, info, f"{archive}:{info.filename}", limits)
                        yield parts, _reader(archive, read)
            return
        with tarfile.open(archive, "r|*") as tf:  # a stream: one pass, no seeking back
            for member in tf:
                parts = member_parts(member.name, archive)
                if member.issym() or member.islnk():
                    _check_link(member, archive)
                elif member.isfile() and parts:
                    read = _tar_reader(tf, member, f"{archive}:{member.name}", limits)
                    yield parts, _reader(archive, read)
    except DataError:
        raise
    except _CORRUPT as err:
        raise _corrupt(archive, err) from None


def _zip_reader(
    zf: zipfile.ZipFile, info: zipfile.ZipInfo, name: str, limits: Limits
) -> Callable[[], bytes]:
    def read() -> bytes:
        limits.check_file(info.file_size, name)
        if info.flag_bits & 0x1:
            raise DataError(f"{name}: the member is encrypted (expected plain zip members)")
        try:
            with zf.open(info) as member:
                data = member.read(info.file_size + 1)  # never more than the header declared
        except NotImplementedError as err:
            raise DataError(f"{name}: {err} (expected stored or deflated zip members)") from None
        if len(data) > info.file_size:
            raise DataError(f"{name}: holds more bytes than its header declares (corrupt zip)")
        return data

    return read


def _tar_reader(
    tf: tarfile.TarFile, member: tarfile.TarInfo, name: str, limits: Limits
) -> Callable[[], bytes]:
    def read() -> bytes:
        limits.check_file(member.size, name)
        return tf.extractfile(member).read()

    return read


def _corrupt(archive: Path, err: BaseException) -> DataError:
    reason = str(err) or type(err).__name__
    return DataError(f"{archive}: truncated or corrupt archive ({reason})")


def _reader(archive: Path, read: Callable[[], bytes]) -> Callable[[], bytes]:
    """`read`, with a damaged member reported as a DataError naming the archive."""

    def guarded() -> bytes:
        try:
            return read()
        except _CORRUPT as err:
            raise _corrupt(archive, err) from None

    return guarded


def first_file_names(archive: Path, limit: int = 16) -> list[str]:
    """Base names of the first regular files (cheap: stops early) to tell what an archive holds."""
    names: list[str] = []
    for parts, _ in iter_members(archive):
        names.append(parts[-1])
        if len(names) >= limit:
            break
    return names
