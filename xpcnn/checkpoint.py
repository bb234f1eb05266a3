"""The checkpoint container: one .npz of host NumPy arrays plus one JSON string, written atomically.

Layout (readable with `numpy.load(path, allow_pickle=False)`):

    model/<key>     the model's state dict, PyTorch-compatible keys ("model/0.weight")
    optim/<key>     the optimizer's state ("optim/momentum.0.weight", "optim/steps")
    meta            0-d unicode array: a JSON object; what it holds is the caller's business
                    (`xpcnn.runs.record.RunRecord` for a training run)

Arrays are stored as host NumPy arrays, so a checkpoint written on a GPU loads on a CPU. This
module knows nothing of runs, models or the command line.
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from xpcnn.backend import to_numpy
from xpcnn.data.limits import GB, Limits
from xpcnn.files import atomic_file, read_npz

FORMAT = "xpcnn-checkpoint"
MAX_META_DEPTH = 64  # a run record nests 4 deep; anything deeper is forged


class CheckpointError(ValueError):
    """A missing, unreadable or malformed checkpoint: `path`, what was `expected`, and the
    `field` of its record at fault (None for the file as a whole)."""

    def __init__(self, path: str | os.PathLike, expected: str, field: str | None = None) -> None:
        self.path, self.expected, self.field = Path(path), expected, field
        where = f"{str(path)!r}" + (f": {field}" if field else "")
        super().__init__(f"{where}: {expected}")


@dataclass
class Checkpoint:
    model: dict[str, np.ndarray]
    optim: dict[str, np.ndarray]
    meta: dict[str, Any]
    path: Path


def save_checkpoint(
    path: str | os.PathLike, model_state: dict[str, Any], optim_state: dict[str, Any], meta: dict
) -> Path:
    """Write model and optimizer state and the JSON object `meta` to `path` atomically."""
    arrays = {f"model/{k}": to_numpy(v) for k, v in model_state.items()}
    arrays |= {f"optim/{k}": np.asarray(to_numpy(v)) for k, v in optim_state.items()}
    arrays["meta"] = np.array(json.dumps({"format": FORMAT, **meta}))
    with atomic_file(path) as out:
        np.savez(out, **arrays)
    return Path(path)


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read a checkpoint fully into host memory; raises CheckpointError naming the file."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(path, "does not exist")
    if not path.is_file():
        raise CheckpointError(path, "is not a regular file (expected an .npz checkpoint)")
    try:
        with open(path, "rb") as f:
            if f.read(4) != b"PK\x03\x04":  # not a zip: a bare .npy, text, ... never parsed
                raise ValueError("not a zip archive")
        entries = read_npz(path, Limits.from_env().data_gb * GB)
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as err:
        raise CheckpointError(
            path, f"is not a readable checkpoint, corrupt or truncated ({first_line(err)}); "
            "expected an .npz written by xpcnn train",
        ) from None  # fmt: skip
    if "meta" not in entries:
        raise CheckpointError(path, "is an .npz but not an xpcnn checkpoint (no meta entry)")
    meta = _parse_meta(path, entries.pop("meta"))
    model = {k[len("model/") :]: v for k, v in entries.items() if k.startswith("model/")}
    optim = {k[len("optim/") :]: v for k, v in entries.items() if k.startswith("optim/")}
    return Checkpoint(model, optim, meta, path)


def _parse_meta(path: Path, entry: np.ndarray) -> dict[str, Any]:
    if entry.shape != () or entry.dtype.kind != "U":
        raise CheckpointError(path, "has a meta entry that is not a JSON string", "meta")
    text = str(entry[()])
    if _nesting(text) > MAX_META_DEPTH:
        raise CheckpointError(path, f"nests deeper than {MAX_META_DEPTH} levels", "meta")
    try:
        meta = json.loads(text)
    except ValueError:
        raise CheckpointError(path, "is not valid JSON", "meta") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(path, "is an .npz but not an xpcnn checkpoint")
    return meta


def _nesting(text: str) -> int:
    """The deepest bracket nesting of a JSON text (strings included: an upper bound), checked
    before parsing so that a forged file cannot exhaust the parser's recursion."""
    depth = deepest = 0
    for char in text:
        if char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__
