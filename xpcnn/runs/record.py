"""RunRecord: the schema of a run's record (a checkpoint's `meta`), its validation field by field,
the migration of older records, and restoring a checkpoint's model and optimizer through it."""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import xpcnn
from xpcnn.callbacks import BEST
from xpcnn.checkpoint import Checkpoint, CheckpointError, first_line, load_checkpoint
from xpcnn.models import PRESETS, build_model
from xpcnn.runs.config import ConfigError, TrainConfig

# 1: before `schema` and the `tta` setting (xpcnn 0.1.0 as first released); 2: before the
# airbench `fast` preset (its runs name the network now called `fast-v1`); 3: before `init`,
# `time` and `mirrored`
SCHEMA = 4
MODEL_ARGS = ("num_classes", "in_channels", "image_size")
HISTORY_NUMBERS = ("train_loss", "train_acc", "lr", "seconds", "images_per_s")


class RecordError(CheckpointError):
    """A run record with a field missing, of the wrong type or out of range."""


@dataclass(frozen=True)
class RunRecord:
    """What a checkpoint says about its run: the settings, the model and the data it was trained
    on, and the epochs done. Every reader of a checkpoint's meta goes through `from_json`."""

    config: TrainConfig  # its `model` names the preset
    model_args: dict[str, int]  # num_classes, in_channels, image_size
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    data_size: int
    train_size: int
    val_size: int
    history: tuple[dict[str, Any], ...] = ()  # one row per finished epoch
    xpcnn_version: str = xpcnn.__version__
    backend: str = "numpy"
    mirrored: bool = True  # the data's mirror images are of their class (`Dataset.mirrored`)

    @property
    def model(self) -> str:
        return self.config.model

    @property
    def epoch(self) -> int:
        """The epochs finished."""
        return len(self.history)

    @property
    def best(self) -> tuple[int, float] | None:
        """(epoch, validation accuracy) of the best epoch, by the rule `best.npz` follows."""
        return BEST.best(self.history)

    @property
    def image_size(self) -> int:
        return self.model_args["image_size"]

    def build_model(self) -> Any:
        return build_model(self.model, **self.model_args)

    def after_epoch(self, row: dict[str, Any]) -> RunRecord:
        """The record once epoch `row["epoch"]` is done."""
        return replace(self, history=(*self.history, row))

    def with_history(self, history: list[dict[str, Any]]) -> RunRecord:
        return replace(self, history=tuple(history))

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "xpcnn_version": self.xpcnn_version,
            "backend": self.backend,
            "config": asdict(self.config),
            "model": {"name": self.model, "kwargs": dict(self.model_args)},
            "classes": list(self.classes),
            "mean": list(self.mean),
            "std": list(self.std),
            "image_size": self.image_size,
            "data_size": self.data_size,
            "train_size": self.train_size,
            "val_size": self.val_size,
            "epoch": self.epoch,
            "history": [dict(row) for row in self.history],
            "best": list(self.best) if self.best is not None else None,
            "mirrored": self.mirrored,
        }

    @classmethod
    def from_json(cls, meta: dict[str, Any], path: str | os.PathLike = "<record>") -> RunRecord:
        """Validate every field (RecordError naming `path` and the field), migrating records
        of older schemas."""
        check = _Checker(Path(path))
        meta = _migrate(dict(meta), check)
        config = check.config(meta)
        spec = check.mapping(meta, "model")
        name = check.get(spec, "model.name", str)
        if name not in PRESETS:
            check.fail("model.name", f"{name!r} is not a preset ({', '.join(PRESETS)})")
        if name != config.model:
            check.fail("model.name", f"{name!r} differs from config.model {config.model!r}")
        kwargs = {"in_channels": 3, **check.mapping(spec, "model.kwargs")}
        if set(kwargs) != set(MODEL_ARGS):
            check.fail("model.kwargs", f"expected exactly {', '.join(MODEL_ARGS)}")
        args = {k: check.count(kwargs, f"model.kwargs.{k}", minimum=1) for k in MODEL_ARGS}
        classes = check.sequence(meta, "classes")
        if len(classes) != args["num_classes"] or not all(isinstance(c, str) for c in classes):
            check.fail("classes", f"expected {args['num_classes']} class names (strings)")
        if len(set(classes)) != len(classes):
            check.fail("classes", "expected distinct class names")
        mean, std = (check.numbers(meta, k, args["in_channels"]) for k in ("mean", "std"))
        if min(std) <= 0:
            check.fail("std", "expected positive numbers")
        if args["image_size"] < PRESETS[name].min_image_size:
            check.fail("model.kwargs.image_size", f"below the {name} preset's minimum")
        if check.count(meta, "image_size", minimum=1) != args["image_size"]:
            check.fail("image_size", "differs from model.kwargs.image_size")
        sizes = {k: check.count(meta, k) for k in ("data_size", "train_size", "val_size")}
        if sizes["train_size"] < 1 or sizes["train_size"] + sizes["val_size"] > sizes["data_size"]:
            check.fail("train_size", "expected 1 <= train_size, train + val <= data_size")
        epoch = check.count(meta, "epoch")
        if epoch > config.epochs:
            check.fail("epoch", f"{epoch} is past the run's {config.epochs} epochs")
        history = check.history(meta, epoch)
        if check.best(meta, epoch) != BEST.best(history):
            check.fail("best", "differs from the best epoch of the history")
        return cls(
            config, args, tuple(classes), mean, std, **sizes, history=history,
            xpcnn_version=check.get(meta, "xpcnn_version", str),
            backend=check.get(meta, "backend", str), mirrored=check.get(meta, "mirrored", bool),
        )  # fmt: skip


def load_run(path: str | os.PathLike) -> tuple[Checkpoint, RunRecord]:
    """A checkpoint and its validated record."""
    checkpoint = load_checkpoint(path)
    return checkpoint, RunRecord.from_json(checkpoint.meta, checkpoint.path)


def restore_model(checkpoint: Checkpoint, record: RunRecord) -> Any:
    """The record's preset, built with its arguments, holding the checkpoint's weights."""
    model = record.build_model()
    try:
        model.load_state_dict(checkpoint.model)
    except ValueError as err:
        raise RecordError(
            checkpoint.path,
            f"its weights do not fit the {record.model!r} model it names ({first_line(err)[:160]})",
            "model",
        ) from None
    return model


def restore_optimizer(checkpoint: Checkpoint, optimizer: Any) -> None:
    """Load the checkpoint's optimizer state into `optimizer` (its names and shapes checked
    against the model)."""
    try:
        optimizer.load_state_dict(checkpoint.optim)
    except (ValueError, KeyError, TypeError) as err:
        raise RecordError(
            checkpoint.path, f"does not fit the model ({first_line(err)[:160]})", "optim"
        ) from None


def _migrate(meta: dict[str, Any], check: _Checker) -> dict[str, Any]:
    schema = meta.get("schema", 1)
    if not isinstance(schema, int) or not 1 <= schema <= SCHEMA:
        check.fail("schema", f"expected a schema from 1 to {SCHEMA} (a newer xpcnn wrote it?)")
    if schema == 1 and isinstance(meta.get("config"), dict):
        meta["config"] = {"tta": False, **meta["config"]}
    if schema <= 3 and isinstance(meta.get("config"), dict):
        meta["config"] = {"init": None, "time": None, **meta["config"]}
    if schema <= 3:  # before digits: every dataset was mirrored
        meta.setdefault("mirrored", True)
    if schema <= 2:
        for holder, key in ((meta.get("config"), "model"), (meta.get("model"), "name")):
            if isinstance(holder, dict) and holder.get(key) == "fast":
                holder[key] = "fast-v1"
    return meta


class _Checker:
    """Field readers that raise RecordError naming the file and the field."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, name: str, expected: str) -> None:
        raise RecordError(self.path, expected, name)

    def get(self, meta: dict[str, Any], name: str, kind: type) -> Any:
        key = name.rsplit(".", 1)[-1]
        if key not in meta:
            self.fail(name, "is missing")
        value = meta[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            self.fail(name, f"expected {kind.__name__}, got {type(value).__name__}")
        return value

    def mapping(self, meta: dict[str, Any], name: str) -> dict[str, Any]:
        return self.get(meta, name, dict)

    def sequence(self, meta: dict[str, Any], name: str) -> list[Any]:
        return self.get(meta, name, list)

    def count(self, meta: dict[str, Any], name: str, minimum: int = 0) -> int:
        value = self.get(meta, name, int)
        if value < minimum:
            self.fail(name, f"expected an integer >= {minimum}, got {value}")
        return value

    def numbers(self, meta: dict[str, Any], name: str, n: int) -> tuple[float, ...]:
        values = self.sequence(meta, name)
        if len(values) != n or not all(_finite(v) for v in values):
            self.fail(name, f"expected {n} finite numbers (one per channel)")
        return tuple(float(v) for v in values)

    def config(self, meta: dict[str, Any]) -> TrainConfig:
        stored = self.mapping(meta, "config")
        names = TrainConfig.names()
        if set(stored) != set(names):
            missing = sorted(set(names) - set(stored))
            extra = sorted(set(stored) - set(names))
            self.fail("config", f"expected its settings exactly (missing {missing}, "
                      f"unknown {extra})")  # fmt: skip
        config = TrainConfig(**stored)
        try:
            config.validate()
        except ConfigError as err:
            self.fail(f"config.{err.field}", f"{err.value!r}: {err.expected}")
        return config

    def history(self, meta: dict[str, Any], epoch: int) -> tuple[dict[str, Any], ...]:
        rows = self.sequence(meta, "history")
        if len(rows) != epoch:
            self.fail("history", f"expected {epoch} rows, one per finished epoch")
        for i, row in enumerate(rows):
            if not isinstance(row, dict) or row.get("epoch") != i + 1:
                self.fail(f"history[{i}]", f"expected an object with epoch {i + 1}")
            for key in (*HISTORY_NUMBERS, *(k for k in ("val_loss", "val_acc") if k in row)):
                if not _number(row.get(key)):
                    self.fail(f"history[{i}].{key}", "expected a number")
        return tuple(rows)

    def best(self, meta: dict[str, Any], epoch: int) -> tuple[int, float] | None:
        best = meta.get("best")
        if best is None:
            return None
        ok = isinstance(best, list) and len(best) == 2 and _number(best[1])
        if not ok or isinstance(best[0], bool) or not isinstance(best[0], int):
            self.fail("best", "expected null or [epoch, validation accuracy]")
        if not 1 <= best[0] <= epoch:
            self.fail("best", f"epoch {best[0]} is not a finished epoch")
        return int(best[0]), float(best[1])


def _number(value: Any) -> bool:
    """A JSON number (NaN and infinities included: a diverging epoch is still a record)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _finite(value: Any) -> bool:
    return _number(value) and math.isfinite(value)
