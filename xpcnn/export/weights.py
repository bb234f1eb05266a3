"""safetensors weights: a model's state dict (the keys and layouts of its PyTorch twin) with what a
reader needs to use it, as metadata strings (JSON where a value is not a plain string):

    preset        the network's preset ("seed", "resnet", ...)
    model_args    JSON {"num_classes", "in_channels", "image_size"}: build_model(preset, **args)
    classes       JSON list of the class names, label i first
    mean, std     JSON lists, per channel: x = (images / 255 - mean) / std
    xpcnn         the version that wrote it; "format": "pt" as PyTorch writers put it

A PyTorch user reads it with `safetensors.torch.load_file` into `torch_twin(model)`; xpcnn reads it
back with `load_weights`. `safetensors` is imported when used: it is an optional extra.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import xpcnn
from xpcnn.backend import to_numpy
from xpcnn.checkpoint import CheckpointError
from xpcnn.export.onnx import ExportError
from xpcnn.files import atomic_file

FIELDS = ("preset", "model_args", "classes", "mean", "std")


def _import_safetensors() -> Any:
    try:
        import safetensors.numpy
    except ImportError:
        raise ExportError(
            None, "safetensors files need the safetensors package: pip install 'xpcnn[safetensors]'"
        ) from None
    return safetensors


@dataclass(frozen=True)
class Weights:
    """What a .safetensors file written by `to_safetensors` holds."""

    state: dict[str, np.ndarray]  # PyTorch keys and layouts
    preset: str
    model_args: dict[str, int]
    classes: list[str]
    mean: list[float]
    std: list[float]

    def build_model(self) -> Any:
        """The preset's network holding these weights."""
        from xpcnn.models import build_model

        model = build_model(self.preset, **self.model_args)
        model.load_state_dict(self.state)
        return model


def to_safetensors(
    model: Any,
    path: str | os.PathLike,
    *,
    preset: str,
    model_args: dict[str, int],
    classes: list[str],
    mean: list[float],
    std: list[float],
) -> Path:
    """Write `model`'s state dict and the run's metadata to `path` (atomically)."""
    safetensors = _import_safetensors()
    # np.asarray keeps 0-d entries (num_batches_tracked) 0-d; ascontiguousarray would not
    state = {k: np.asarray(to_numpy(v), order="C") for k, v in model.state_dict().items()}
    metadata = {
        "format": "pt",
        "xpcnn": xpcnn.__version__,
        "preset": preset,
        "model_args": json.dumps(model_args),
        "classes": json.dumps(list(classes)),
        "mean": json.dumps([float(m) for m in mean]),
        "std": json.dumps([float(s) for s in std]),
    }
    data = safetensors.numpy.save(state, metadata=metadata)
    path = Path(path)
    with atomic_file(path) as out:
        out.write(data)
    return path


def export_safetensors(checkpoint_path: str | os.PathLike, path: str | os.PathLike) -> str:
    """A run's checkpoint as a .safetensors file; one line saying what it holds."""
    from xpcnn.runs import load_run, restore_model

    checkpoint, record = load_run(checkpoint_path)
    model = restore_model(checkpoint, record)
    to_safetensors(
        model,
        path,
        preset=record.model,
        model_args=dict(record.model_args),
        classes=list(record.classes),
        mean=list(record.mean),
        std=list(record.std),
    )
    state = model.state_dict()
    count = sum(int(np.prod(v.shape)) for v in state.values())
    return f"{record.model}, {len(state)} tensors ({count:,} values), {len(record.classes)} classes"


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The tensors and the metadata strings of any .safetensors file (PyTorch's `save_file`
    writes no metadata of xpcnn's: `load_weights` refuses such a file, a run's `init` takes it)."""
    safetensors = _import_safetensors()
    try:
        with safetensors.safe_open(str(path), framework="numpy") as f:
            metadata = f.metadata() or {}
            state = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 (not a dict)
    except (OSError, safetensors.SafetensorError) as err:
        raise CheckpointError(path, f"not a readable safetensors file ({err})") from None
    return state, metadata


def load_weights(path: str | os.PathLike) -> Weights:
    """The state dict and metadata of a .safetensors file that `to_safetensors` wrote."""
    state, metadata = read_safetensors(path)
    missing = [field for field in FIELDS if field not in metadata]
    if missing:
        raise CheckpointError(path, "missing from its metadata (not written by xpcnn)", missing[0])
    try:
        values = {field: json.loads(metadata[field]) for field in FIELDS[1:]}
    except json.JSONDecodeError as err:
        raise CheckpointError(path, f"not JSON ({err})", "metadata") from None
    return Weights(state, metadata["preset"], **values)
