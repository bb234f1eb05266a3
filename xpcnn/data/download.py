"""Download a file once: temp file, MD5 check, atomic rename; one retry; no partial files."""

from __future__ import annotations

import hashlib
import http.client
import sys
import urllib.error
import urllib.request
from pathlib import Path

from xpcnn.data.dataset import DataError
from xpcnn.files import atomic_file

_CHUNK = 1 << 20


def file_md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def download(
    url: str, dest: Path, md5: str, progress: bool = True, retries: int = 1, timeout: float = 60
) -> Path:
    """`dest`, fetched from `url` unless it is already there with the right MD5.

    The bytes go to a temporary file beside `dest`, which is renamed to `dest` only once its MD5
    matches; on any failure the temporary file is removed and `dest` is left as it was.
    """
    dest = Path(dest)
    if dest.is_file() and file_md5(dest) == md5:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(retries + 1):
        try:
            _fetch(url, dest, md5, progress, timeout)
            return dest
        except DataError:
            if attempt == retries:
                raise
    raise AssertionError("unreachable")


def _fetch(url: str, dest: Path, md5: str, progress: bool, timeout: float) -> None:
    from tqdm import tqdm  # imported when used: `import xpcnn` stays light

    try:
        digest, received = hashlib.md5(), 0
        with atomic_file(dest) as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            total = int(resp.headers.get("Content-Length") or 0)
            with tqdm(
                total=total or None,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=dest.name,
                file=sys.stderr,
                disable=not progress,
            ) as bar:
                while chunk := resp.read(_CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
            if total and received != total:
                raise DataError(
                    f"{url}: download interrupted after {received} of {total} bytes; "
                    "nothing was saved"
                )
            if digest.hexdigest() != md5:
                raise DataError(
                    f"{url}: checksum mismatch (md5 {digest.hexdigest()}, expected {md5}); "
                    "nothing was saved"
                )
    except (urllib.error.URLError, http.client.HTTPException, OSError) as err:
        reason = getattr(err, "reason", None) or err
        raise DataError(f"{url}: download failed ({reason}); nothing was saved") from None
