"""Checkpoints: one .npz of host NumPy arrays plus a JSON `meta` entry, written atomically.

Layout (readable with `numpy.load(path, allow_pickle=False)`):

    model/<key>     the model's state dict, PyTorch-compatible keys ("model/0.weight")
    optim/<key>     the optimizer's state ("optim/momentum.0.weight", "optim/steps")
    meta            0-d unicode array: JSON with the epoch, history, class names, normalisation,
                    model preset and arguments, optimizer and schedule, seed, data source, ...

Arrays are stored as host NumPy arrays, so a checkpoint written on a GPU loads on a CPU.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from xpcnn.backend import to_numpy

FORMAT = "xpcnn-checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """A missing, unreadable or mismatched checkpoint; the message names the file."""


@dataclass
class Checkpoint:
    model: dict[str, np.ndarray]
    optim: dict[str, np.ndarray]
    meta: dict[str, Any]
    path: Path

    @property
    def epoch(self) -> int:
        return int(self.meta["epoch"])


def save_checkpoint(
    path: str | os.PathLike, model_state: dict[str, Any], optim_state: dict[str, Any], meta: dict
) -> Path:
    """Write model and optimizer state and `meta` to `path` atomically (`atomic_file`)."""
    arrays = {f"model/{k}": to_numpy(v) for k, v in model_state.items()}
    arrays |= {f"optim/{k}": np.asarray(to_numpy(v)) for k, v in optim_state.items()}
    arrays["meta"] = np.array(json.dumps({"format": FORMAT, "format_version": VERSION, **meta}))
    with atomic_file(path) as out:
        np.savez(out, **arrays)
    return Path(path)


@contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Write `path` all or nothing: into a temporary file in the same folder, flushed and
    fsynced, then renamed over `path`, so a crash or kill leaves the old file whole."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
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


def load_checkpoint(path: str | os.PathLike, flag: str = "--checkpoint") -> Checkpoint:
    """Read a checkpoint fully into host memory; a CheckpointError names `flag` and the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{flag}: {str(path)!r} does not exist")
    try:
        with np.load(path, allow_pickle=False) as npz:
            entries = {name: npz[name] for name in npz.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as err:
        raise CheckpointError(
            f"{flag}: {str(path)!r} is not a readable checkpoint, corrupt or truncated "
            f"({_first_line(err)}); expected an .npz written by xpcnn train"
        ) from None
    if "meta" not in entries:
        raise CheckpointError(f"{flag}: {str(path)!r} is an .npz but not an xpcnn checkpoint")
    try:
        meta = json.loads(str(entries.pop("meta")[()]))
    except (ValueError, TypeError):
        raise CheckpointError(f"{flag}: {str(path)!r} has an unreadable meta entry") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{flag}: {str(path)!r} is an .npz but not an xpcnn checkpoint")
    missing = [
        k for k in ("epoch", "model", "classes", "mean", "std", "image_size") if k not in meta
    ]
    if missing:
        raise CheckpointError(f"{flag}: {str(path)!r} lacks {', '.join(missing)} in its meta")
    model = {k[len("model/") :]: v for k, v in entries.items() if k.startswith("model/")}
    optim = {k[len("optim/") :]: v for k, v in entries.items() if k.startswith("optim/")}
    return Checkpoint(model, optim, meta, path)


def restore_model(checkpoint: Checkpoint) -> Any:
    """The checkpoint's model preset, built from its stored arguments, with its weights."""
    from xpcnn.models import MODELS, build_model

    spec = checkpoint.meta["model"]
    name, path = spec.get("name"), str(checkpoint.path)
    if name not in MODELS:
        raise CheckpointError(f"{path!r} names model {name!r}, expected one of {', '.join(MODELS)}")
    model = build_model(name, **spec.get("kwargs", {}))
    try:
        model.load_state_dict(checkpoint.model)
    except ValueError as err:
        raise CheckpointError(
            f"{path!r}: its weights do not fit the {name!r} model it names "
            f"({_first_line(err)[:160]})"
        ) from None
    return model


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__
