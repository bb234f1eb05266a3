"""What the `xpcnn` commands do, as library functions: train a run folder, evaluate a checkpoint,
predict images, describe the system. They print nothing: messages go to a `log` function and
progress to callbacks, so the CLI (or a script) decides where text goes.

A run folder holds:

    checkpoint.npz   the last completed epoch (weights, optimizer, meta) — resume and evaluate
    best.npz         the epoch with the best validation accuracy (when there is a validation split)
    history.csv      one row per epoch; history.json the same records
    curves.png       loss and accuracy per epoch;  samples.png  validation images with predictions
    confusion.png    the confusion matrix of the final evaluation (test split, else validation)
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import platform
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

import xpcnn
from xpcnn import plots
from xpcnn.backend import backend_name, manual_seed
from xpcnn.checkpoint import (
    Checkpoint,
    atomic_file,
    load_checkpoint,
    restore_model,
    save_checkpoint,
)
from xpcnn.data import (
    Augment,
    Batches,
    Dataset,
    channel_stats,
    load_dataset,
    stratified_split,
    stratified_subset,
)
from xpcnn.data.images import resize_images
from xpcnn.models import build_model
from xpcnn.optim import OPTIMIZERS, make_schedule
from xpcnn.train import Callback, Progress, TrainingDiverged, fit, predict

CHECKPOINT, BEST = "checkpoint.npz", "best.npz"
RUN_FILES = (
    CHECKPOINT, BEST, "history.csv", "history.json", "curves.png", "samples.png", "confusion.png",
)  # fmt: skip
EVAL_BATCH = 256
SAMPLES = 24

Log = Callable[[str], None]


def _quiet(message: str) -> None:
    pass


class UsageError(ValueError):
    """Bad input from the person running a command; the message names the flag or file."""


class TrainingInterrupted(Exception):
    """Ctrl-C (SIGINT) stopped training after a finished step. `saved_epoch`: the epoch the run
    folder's checkpoint holds (0 when none finished); `epoch`: the 0-based epoch it stopped in."""

    def __init__(self, out: Path, epoch: int, saved_epoch: int, config: TrainConfig) -> None:
        self.out, self.epoch, self.saved_epoch, self.config = out, epoch, saved_epoch, config
        super().__init__(f"interrupted in epoch {epoch + 1}/{config.epochs}")


@dataclass(frozen=True)
class TrainConfig:
    """The settings of a run; the defaults are the recipe `xpcnn train` uses."""

    data: str = "cifar10"
    model: str = "seed"
    epochs: int = 15
    batch_size: int = 64
    optimizer: str = "sgd"
    lr: float | None = None  # None: 0.05 for SGD, 0.001 for Adam and AdamW
    momentum: float = 0.9  # SGD only
    nesterov: bool | None = None  # None: on when momentum > 0 (SGD only)
    weight_decay: float = 5e-4
    schedule: str = "onecycle"
    label_smoothing: float = 0.0
    augment: bool = True  # random crop (pad 4, reflect) and horizontal flip
    val_split: float = 0.2
    seed: int = 42
    limit: int | None = None  # train on a stratified subset of this many training images
    image_size: int | None = None  # None: the images' own (square) size

    def resolved(self) -> TrainConfig:
        """Fill the settings whose default depends on others."""
        lr = self.lr if self.lr is not None else (0.05 if self.optimizer == "sgd" else 1e-3)
        nesterov = self.nesterov
        if nesterov is None:
            nesterov = self.optimizer == "sgd" and self.momentum > 0
        if self.optimizer == "sgd" and nesterov and self.momentum <= 0:
            raise UsageError("--nesterov needs --momentum > 0 (or pass --no-nesterov)")
        return replace(self, lr=lr, nesterov=nesterov)


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def split_indices(
    labels: np.ndarray, val_split: float, seed: int, limit: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(train_idx, val_idx) of a training source: a stratified validation split, then with
    `limit` a stratified subset of `limit` training images and a validation subset in the same
    proportion (so a quick run also validates quickly). Same arguments ⇒ same indices."""
    if val_split > 0:
        train_idx, val_idx = stratified_split(labels, val_split, seed=seed)
    else:
        train_idx, val_idx = np.arange(len(labels), dtype=np.int64), np.zeros(0, np.int64)
    if limit is not None:
        train_idx = train_idx[stratified_subset(labels[train_idx], limit, seed=seed)]
        if len(val_idx):
            n_val = max(1, round(limit * val_split / (1.0 - val_split)))
            val_idx = val_idx[stratified_subset(labels[val_idx], n_val, seed=seed)]
    return train_idx, val_idx


def make_optimizer(config: TrainConfig, model: Any) -> Any:
    kwargs: dict[str, Any] = {"lr": config.lr, "weight_decay": config.weight_decay}
    if config.optimizer == "sgd":
        kwargs |= {"momentum": config.momentum, "nesterov": config.nesterov}
    try:
        return OPTIMIZERS[config.optimizer](model, **kwargs)
    except ValueError as err:
        raise UsageError(f"--optimizer {config.optimizer}: {err}") from None


# --- train -------------------------------------------------------------------------------------


def train(
    options: dict[str, Any],
    out: str | os.PathLike | None = None,
    *,
    resume: bool = False,
    force: bool = False,
    log: Log = _quiet,
    callbacks: Sequence[Callback] = (),
) -> dict[str, Any]:
    """Train a run in folder `out` (default runs/<date-time>) and return its summary.

    options: TrainConfig settings chosen by the caller; the rest take their defaults, or with
        `resume` the checkpoint's (a chosen setting must then agree with it, except `epochs`,
        which can extend a run, and `data`, which may point to a moved copy of the same data).
    Raises UsageError, CheckpointError, DataError for bad input, TrainingDiverged on a NaN/Inf
    loss and TrainingInterrupted on Ctrl-C; the last completed epoch's checkpoint stays.
    """
    unknown = set(options) - {f.name for f in fields(TrainConfig)}
    if unknown:
        raise TypeError(f"train: unknown options {sorted(unknown)}")
    out = Path(out) if out is not None else Path("runs") / time.strftime("%Y%m%d-%H%M%S")
    checkpoint = _prepare_out(out, resume, force)
    if checkpoint is not None:
        config = _resumed_config(checkpoint, options)
    else:
        config = TrainConfig(**options).resolved()
    if config.data.lower() not in ("cifar10", "cifar-10") and Path(config.data).exists():
        # absolute, so that eval and --resume find it from any folder
        config = replace(config, data=str(Path(config.data).resolve()))

    dataset = load_dataset(config.data, split="train", size=config.image_size)
    for note in dataset.notes:
        log(f"data: {note}")
    size = _square_size(dataset, "--data")
    if checkpoint is not None and dataset.classes != checkpoint.meta["classes"]:
        raise UsageError(
            f"--data: {config.data} has classes {dataset.classes}, the checkpoint "
            f"{checkpoint.meta['classes']}; resume with the data the run was trained on"
        )
    train_idx, val_idx = split_indices(dataset.labels, config.val_split, config.seed, config.limit)
    if len(train_idx) == 0:
        raise UsageError(f"--data: {config.data} leaves no training images after the split")
    train_set, val_set = dataset.subset(train_idx), dataset.subset(val_idx)
    if checkpoint is not None:
        mean, std = (np.asarray(checkpoint.meta[k], np.float32) for k in ("mean", "std"))
    else:
        mean, std = channel_stats(train_set.images)
    augment = Augment() if config.augment else None
    train_batches = Batches(
        train_set.images, train_set.labels, config.batch_size, shuffle=True, seed=config.seed,
        mean=mean, std=std, augment=augment,
    )  # fmt: skip
    val_batches = _batches(val_set, mean, std) if len(val_set) else None

    manual_seed(config.seed)
    model_kwargs = {
        "num_classes": len(dataset.classes),
        "in_channels": int(dataset.images.shape[1]),
        "image_size": size,
    }
    if checkpoint is not None:
        model = restore_model(checkpoint)
    else:
        model = build_model(config.model, **model_kwargs)
    optimizer = make_optimizer(config, model)
    if checkpoint is not None:
        optimizer.load_state_dict(checkpoint.optim)
    steps_per_epoch = len(train_batches)
    schedule = make_schedule(
        config.schedule, config.lr, config.epochs * steps_per_epoch, steps_per_epoch
    )
    start_epoch = checkpoint.epoch if checkpoint is not None else 0
    history = checkpoint.meta["history"] if checkpoint is not None else []

    meta = {
        "xpcnn_version": xpcnn.__version__,
        "backend": backend_name(),
        "config": asdict(config),
        "model": {"name": config.model, "kwargs": model_kwargs},
        "classes": list(dataset.classes),
        "mean": [float(v) for v in mean],
        "std": [float(v) for v in std],
        "image_size": size,
        "data_size": len(dataset),
        "train_size": len(train_set),
        "val_size": len(val_set),
    }
    log(
        f"data {config.data}: {len(dataset)} images {size}x{size}, {len(dataset.classes)} "
        f"classes; train {len(train_set)}, validation {len(val_set)}"
    )
    log(
        f"model: {config.model}, {model.num_parameters():,} parameters; {_describe(config)}; "
        f"backend {backend_name()}"
    )
    if checkpoint is not None:
        log(f"resuming from {checkpoint.path} after epoch {start_epoch}/{config.epochs}")
    log(f"run folder: {out}")
    if checkpoint is None:
        _start_out(out)
    if not plots.available():
        log(plots.MISSING)

    recorder = RunRecorder(out, model, optimizer, meta, history, val_set, mean, std)
    stopper = StopOnSignal()
    all_callbacks = [
        ReseedDropout(config.seed),
        DivergenceCheck(),
        *callbacks,
        recorder,
        EpochLine(log, config.epochs),
        stopper,
    ]
    with np.errstate(over="ignore", invalid="ignore"), stopper.catching_sigint():
        try:
            history = fit(
                model, train_batches, optimizer=optimizer, epochs=config.epochs,
                schedule=schedule, val=val_batches, label_smoothing=config.label_smoothing,
                start_epoch=start_epoch, history=history, callbacks=all_callbacks,
            )  # fmt: skip
        except StopRequested as stop:
            raise TrainingInterrupted(out, stop.epoch, recorder.saved_epoch, config) from None
        except TrainingDiverged as err:
            kept = (
                f"{out / CHECKPOINT} keeps epoch {recorder.saved_epoch}"
                if recorder.saved_epoch
                else "no epoch finished, so no checkpoint was written"
            )
            raise TrainingDiverged(f"{err}; {kept}") from None
    if start_epoch >= config.epochs:
        log(f"{out / CHECKPOINT} already holds all {config.epochs} epochs")

    summary: dict[str, Any] = {"out": out, "history": history, "best": recorder.best}
    if recorder.best is not None:
        epoch, acc = recorder.best
        log(f"best validation accuracy {acc:.4f} at epoch {epoch} ({out / BEST})")
    final, name = None, ""
    if dataset.has_test:
        test_set = load_dataset(config.data, split="test", size=config.image_size)
        final, name = score(model, test_set, mean, std), "test"
    elif len(val_set):
        final, name = score(model, val_set, mean, std), "validation"
    if final is not None:
        summary[name] = final
        log(f"{name} accuracy {final['accuracy']:.4f} ({final['n']} images)")
        if plots.available():
            plots.plot_confusion(
                final["confusion"], dataset.classes, out / "confusion.png",
                title=f"{name} split, accuracy {final['accuracy']:.3f}",
            )  # fmt: skip
    return summary


def _prepare_out(out: Path, resume: bool, force: bool) -> Checkpoint | None:
    """Check the run folder before any work: the checkpoint to resume, or None for a new run
    (in a new or empty folder, or with --force)."""
    if resume and force:
        raise UsageError("--resume and --force: choose one")
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out: {str(out)!r} is a file, expected a folder")
    if resume:
        return load_checkpoint(out / CHECKPOINT, flag="--resume")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise UsageError(
                f"--out: {str(out)!r} already exists and is not empty; pass --resume to "
                "continue its run or --force to overwrite it"
            )
    return None


def _start_out(out: Path) -> None:
    """Create the run folder, or clear the run files of an earlier run in it (--force)."""
    out.mkdir(parents=True, exist_ok=True)
    for name in RUN_FILES:
        (out / name).unlink(missing_ok=True)


def _resumed_config(checkpoint: Checkpoint, options: dict[str, Any]) -> TrainConfig:
    stored = TrainConfig(**checkpoint.meta["config"])
    for name, value in options.items():
        if name in ("epochs", "data") or value == getattr(stored, name):
            continue
        raise UsageError(
            f"--resume: {flag(name)} {value} differs from the run's {getattr(stored, name)} "
            f"({checkpoint.path}); resume with the run's own settings or start a new --out"
        )
    chosen = {k: v for k, v in options.items() if k in ("epochs", "data")}
    if chosen.get("epochs", stored.epochs) < checkpoint.epoch:
        raise UsageError(
            f"--epochs {chosen['epochs']}: the run already finished epoch {checkpoint.epoch}"
        )
    return replace(stored, **chosen)


def _square_size(dataset: Dataset, what: str) -> int:
    h, w = dataset.images.shape[2:]
    if h != w:
        raise UsageError(
            f"{what}: the images are {h}x{w} (height x width); the models take square images, "
            "pass --image-size N to resize them"
        )
    return int(h)


def _describe(config: TrainConfig) -> str:
    parts = [f"{config.optimizer} lr {config.lr:g} ({config.schedule})"]
    if config.optimizer == "sgd" and config.momentum:
        parts.append(f"{'nesterov ' if config.nesterov else ''}momentum {config.momentum:g}")
    parts.append(f"weight decay {config.weight_decay:g}")
    parts.append(f"batch {config.batch_size}, {config.epochs} epoch{'s' * (config.epochs != 1)}")
    parts.append("augment crop+flip" if config.augment else "no augmentation")
    if config.label_smoothing:
        parts.append(f"label smoothing {config.label_smoothing:g}")
    return ", ".join(parts)


def _batches(dataset: Dataset, mean: np.ndarray, std: np.ndarray, batch_size: int = EVAL_BATCH):
    return Batches(dataset.images, dataset.labels, batch_size, shuffle=False, mean=mean, std=std)


def score(
    model: Any,
    dataset: Dataset,
    mean: Any,
    std: Any,
    tta: bool = False,
    batch_size: int = EVAL_BATCH,
) -> dict[str, Any]:
    """Accuracy, mean cross-entropy, per-class accuracy and the confusion matrix (true × predicted)
    of `model` on a labelled dataset."""
    if len(dataset) == 0:
        raise UsageError(f"{dataset.source or 'the data'}: no images to score")
    probabilities = predict(model, _batches(dataset, mean, std, batch_size), tta=tta)
    labels = np.asarray(dataset.labels, dtype=np.int64)
    k = probabilities.shape[1]
    predicted = probabilities.argmax(axis=1)
    confusion = np.bincount(labels * k + predicted, minlength=k * k).reshape(k, k)
    picked = probabilities[np.arange(len(labels)), labels]
    per_class = {
        dataset.classes[c]: float(confusion[c, c] / confusion[c].sum())
        for c in range(min(k, len(dataset.classes)))
        if confusion[c].sum()
    }
    return {
        "accuracy": float((predicted == labels).mean()),
        "loss": float(-np.log(np.maximum(picked, 1e-12)).mean()),
        "n": len(labels),
        "per_class": per_class,
        "confusion": confusion,
        "predicted": predicted,
    }


# --- callbacks of a training run ----------------------------------------------------------------


class ReseedDropout(Callback):
    """Seed the default generator (dropout) from (seed, epoch), so a resumed epoch draws the same
    masks as an uninterrupted one."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def on_epoch_begin(self, progress: Progress) -> None:
        manual_seed(self.seed, progress.epoch, 2)


class DivergenceCheck(Callback):
    """Stop as soon as the running loss is NaN or infinite (checked every `every` steps), rather
    than at the end of a long epoch."""

    def __init__(self, every: int = 20) -> None:
        self.every = every

    def on_batch_end(self, progress: Progress) -> None:
        if progress.batch % self.every == 0:
            loss = progress.running()["loss"]
            if not math.isfinite(loss):
                raise TrainingDiverged(
                    f"training diverged in epoch {progress.epoch + 1}, step {progress.batch}: "
                    f"the loss is {loss} (lr {progress.lr:g}); try a smaller --lr"
                )


class StopRequested(Exception):
    def __init__(self, epoch: int) -> None:
        super().__init__(f"stop requested in epoch {epoch + 1}")
        self.epoch = epoch


class StopOnSignal(Callback):
    """Ctrl-C sets a flag; training stops after the step (or checkpoint write) in progress.
    A second Ctrl-C stops at once."""

    def __init__(self) -> None:
        self.requested = False
        self.epoch = 0

    @contextmanager
    def catching_sigint(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def request_stop(signum: int, frame: Any) -> None:
            self.requested = True
            signal.signal(signal.SIGINT, signal.default_int_handler)

        previous = signal.signal(signal.SIGINT, request_stop)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    def on_epoch_begin(self, progress: Progress) -> None:
        self.epoch = progress.epoch
        self._stop_if_requested()

    def on_batch_end(self, progress: Progress) -> None:
        self._stop_if_requested()

    def on_epoch_end(self, record: dict[str, Any]) -> None:
        self.epoch = record["epoch"]  # the next epoch, should the stop come now
        self._stop_if_requested()

    def _stop_if_requested(self) -> None:
        if self.requested:
            raise StopRequested(self.epoch)


class EpochLine(Callback):
    """One line per epoch through `log`."""

    def __init__(self, log: Log, epochs: int) -> None:
        self.log, self.epochs = log, epochs

    def on_epoch_end(self, record: dict[str, Any]) -> None:
        width = len(str(self.epochs))
        line = (
            f"epoch {record['epoch']:{width}d}/{self.epochs}  "
            f"train loss {record['train_loss']:.4f} acc {record['train_acc']:.4f}"
        )
        if "val_loss" in record:
            line += f"  val loss {record['val_loss']:.4f} acc {record['val_acc']:.4f}"
        line += (
            f"  lr {record['lr']:.3g}  {record['seconds']:.1f} s "
            f"({record['images_per_s']:.0f} img/s)"
        )
        self.log(line)


class RunRecorder(Callback):
    """After each epoch: checkpoint.npz (and best.npz), history.csv/.json, curves.png and
    samples.png in the run folder."""

    def __init__(
        self,
        out: Path,
        model: Any,
        optimizer: Any,
        meta: dict[str, Any],
        history: list[dict[str, Any]],
        val_set: Dataset,
        mean: Any,
        std: Any,
    ) -> None:
        self.out, self.model, self.optimizer, self.meta = out, model, optimizer, meta
        self.history = list(history)
        self.saved_epoch = self.history[-1]["epoch"] if self.history else 0
        earlier = [(r["epoch"], r["val_acc"]) for r in self.history if "val_acc" in r]
        self.best = max(earlier, key=lambda e: e[1]) if earlier else None
        picks = _sample_picks(val_set.labels, SAMPLES)
        self.samples = val_set.subset(picks)
        self.mean, self.std = mean, std

    def on_epoch_end(self, record: dict[str, Any]) -> None:
        self.history.append(record)
        state = self.model.state_dict()
        optim_state = self.optimizer.state_dict()
        meta = {**self.meta, "epoch": record["epoch"], "history": self.history}
        if "val_acc" in record and (self.best is None or record["val_acc"] > self.best[1]):
            self.best = (record["epoch"], record["val_acc"])
        meta["best"] = self.best
        save_checkpoint(self.out / CHECKPOINT, state, optim_state, meta)
        if self.best is not None and self.best[0] == record["epoch"]:
            save_checkpoint(self.out / BEST, state, optim_state, meta)
        self.saved_epoch = record["epoch"]
        write_history(self.history, self.out)
        if plots.available():
            plots.plot_curves(self.history, self.out / "curves.png")
            if len(self.samples):
                predicted = score(self.model, self.samples, self.mean, self.std)["predicted"]
                plots.plot_samples(
                    self.samples.images, self.samples.labels, predicted,
                    self.samples.classes, self.out / "samples.png",
                )  # fmt: skip


def _sample_picks(labels: np.ndarray, n: int) -> np.ndarray:
    """Up to n indices taking classes in turn (the first of each class, then the second, ...)."""
    rank = np.zeros(len(labels), dtype=np.int64)
    for c in np.unique(labels):
        where = np.flatnonzero(labels == c)
        rank[where] = np.arange(len(where))
    order = np.lexsort((labels, rank))
    return order[:n]


HISTORY_COLUMNS = (
    "epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds", "images_per_s",
)  # fmt: skip


def write_history(history: Sequence[dict[str, Any]], out: Path) -> None:
    """history.csv and history.json, each replaced atomically."""
    table = io.StringIO()
    writer = csv.DictWriter(table, HISTORY_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    _write_text(out / "history.csv", table.getvalue())
    _write_text(out / "history.json", json.dumps(list(history), indent=1) + "\n")


def _write_text(path: Path, text: str) -> None:
    with atomic_file(path, "w") as out:
        out.write(text)


# --- eval and predict ---------------------------------------------------------------------------


def evaluate_checkpoint(
    checkpoint_path: str | os.PathLike,
    data: str | None = None,
    split: str | None = None,
    *,
    tta: bool = False,
    batch_size: int = EVAL_BATCH,
    out: str | os.PathLike | None = None,
    log: Log = _quiet,
) -> dict[str, Any]:
    """Score a checkpoint on a split of `data` (default: the data it was trained on).

    split: "test" (the default when the source has one), "all" (the default for an image folder
        or archive: all of it), or "val"/"train", re-derived from the checkpoint's seed,
        validation fraction and limit. Writes confusion.png to `out` (default: the checkpoint's
        folder) when matplotlib is installed.
    """
    checkpoint = load_checkpoint(checkpoint_path)
    meta = checkpoint.meta
    config = meta.get("config", {})
    data = data if data is not None else config.get("data", "cifar10")
    dataset, split = _eval_dataset(checkpoint, data, split)
    for note in dataset.notes:
        log(f"data: {note}")
    dataset = _fit_to_checkpoint(dataset, checkpoint, "--data")
    model = restore_model(checkpoint)
    result = score(model, dataset, meta["mean"], meta["std"], tta=tta, batch_size=batch_size)
    result["split"], result["data"] = split, str(data)
    folder = Path(out) if out is not None else checkpoint.path.parent
    if plots.available():
        folder.mkdir(parents=True, exist_ok=True)
        result["confusion_png"] = plots.plot_confusion(
            result["confusion"], meta["classes"], folder / "confusion.png",
            title=f"{Path(str(data)).name} {split}{' +TTA' if tta else ''}, "
            f"accuracy {result['accuracy']:.3f}",
        )  # fmt: skip
    else:
        log(plots.MISSING)
    return result


def _eval_dataset(checkpoint: Checkpoint, data: str, split: str | None) -> tuple[Dataset, str]:
    config = checkpoint.meta.get("config", {})
    size = config.get("image_size")
    if split in (None, "test"):
        dataset = load_dataset(data, split="test", size=size)
        if dataset.has_test:
            return dataset, "test"
        if split == "test":
            raise UsageError(
                f"--split test: {data} has no test split (an image folder or archive is one "
                "set); use --split all, val or train"
            )
        return dataset, "all"
    if split == "all":
        return load_dataset(data, split="all", size=size), "all"
    if split not in ("train", "val"):
        raise UsageError(f"--split {split}: expected test, val, train or all")
    dataset = load_dataset(data, split="train", size=size)
    if len(dataset) != checkpoint.meta.get("data_size"):
        raise UsageError(
            f"--split {split}: {data} has {len(dataset)} training images but the checkpoint was "
            f"trained on {checkpoint.meta.get('data_size')}; the split can only be re-derived "
            "from the same data"
        )
    val_split = float(config.get("val_split", 0.2))
    if split == "val" and val_split <= 0:
        raise UsageError("--split val: the checkpoint was trained without a validation split")
    train_idx, val_idx = split_indices(
        dataset.labels, val_split, int(config.get("seed", 42)), config.get("limit")
    )
    return dataset.subset(val_idx if split == "val" else train_idx), split


def _fit_to_checkpoint(dataset: Dataset, checkpoint: Checkpoint, what: str) -> Dataset:
    """Labels renumbered to the checkpoint's classes, images resized to its size."""
    known = checkpoint.meta["classes"]
    if dataset.classes != known:
        strangers = [c for c in dataset.classes if c not in known]
        if strangers:
            raise UsageError(
                f"{what}: class {strangers[0]!r} is not one the checkpoint knows "
                f"({', '.join(known)})"
            )
        relabel = np.array([known.index(c) for c in dataset.classes], dtype=np.int64)
        dataset = replace(dataset, labels=relabel[dataset.labels], classes=list(known))
    size = int(checkpoint.meta["image_size"])
    if dataset.images.shape[1] != checkpoint.meta["model"]["kwargs"].get("in_channels", 3):
        raise UsageError(f"{what}: images have {dataset.images.shape[1]} channels")
    if dataset.images.shape[2:] != (size, size):
        dataset = replace(dataset, images=resize_images(dataset.images, (size, size)))
    return dataset


def predict_images(
    checkpoint_path: str | os.PathLike, images: Sequence[str | os.PathLike], top: int = 3,
    tta: bool = False,
) -> list[tuple[str, list[tuple[str, float]]]]:  # fmt: skip
    """For each image file: its `top` most probable classes with their probabilities."""
    from PIL import Image, UnidentifiedImageError

    checkpoint = load_checkpoint(checkpoint_path)
    size = int(checkpoint.meta["image_size"])
    pixels = np.zeros((len(images), 3, size, size), dtype=np.uint8)
    for i, name in enumerate(images):
        if not Path(name).is_file():
            raise UsageError(f"IMAGE: {str(name)!r} does not exist")
        try:
            with Image.open(name) as image:
                rgb = image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
        except (UnidentifiedImageError, OSError, ValueError) as err:
            raise UsageError(
                f"IMAGE: {str(name)!r} cannot be decoded ({str(err).splitlines()[0]}); "
                "expected a PNG, JPEG or BMP image"
            ) from None
        pixels[i] = np.asarray(rgb).transpose(2, 0, 1)
    model = restore_model(checkpoint)
    dataset = Dataset(pixels, np.zeros(len(images), np.int64), checkpoint.meta["classes"])
    meta = checkpoint.meta
    probabilities = predict(model, _batches(dataset, meta["mean"], meta["std"]), tta=tta)
    classes = meta["classes"]
    results = []
    for name, p in zip(images, probabilities, strict=True):
        best = np.argsort(-p, kind="stable")[:top]
        results.append((str(name), [(classes[c], float(p[c])) for c in best]))
    return results


# --- info ---------------------------------------------------------------------------------------


def system_info() -> dict[str, str]:
    """Backend, device, library versions and the BLAS in use, for `xpcnn info`."""
    from importlib import metadata

    from xpcnn.backend import device_info

    def version(package: str) -> str:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return "not installed"

    name = backend_name()
    info = {
        "xpcnn": xpcnn.__version__,
        "backend": f"{name} (XPCNN_BACKEND={os.environ.get('XPCNN_BACKEND', '') or 'unset'})",
    }
    device = device_info()
    info["device"] = device["device"]
    if "gpu" in device:
        info["gpu"] = (
            f"{device['gpu']}, {device['memory_total_gib']} GiB "
            f"({device['memory_free_gib']} GiB free), CUDA runtime {device['cuda_runtime']}"
        )
    info["python"] = platform.python_version()
    info["numpy"] = np.__version__
    installed = (version(p) for p in ("cupy", "cupy-cuda12x", "cupy-cuda11x"))
    info["cupy"] = next((v for v in installed if v != "not installed"), "not installed")
    info["array-api-compat"] = version("array-api-compat")
    info["array-api-strict"] = version("array-api-strict")
    info["matplotlib"] = version("matplotlib")
    info["blas"], info["threads"] = _blas()
    info["cpus"] = str(
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    )
    return info


def _blas() -> tuple[str, str]:
    """(BLAS name and version, thread count): threadpoolctl when installed, else NumPy's build
    configuration and the usual thread environment variables."""
    try:
        from threadpoolctl import threadpool_info

        pools = [p for p in threadpool_info() if p.get("user_api") == "blas"]
        if pools:
            pool = pools[0]
            return (
                f"{pool.get('internal_api')} {pool.get('version') or ''}".strip(),
                str(pool.get("num_threads")),
            )
    except ImportError:
        pass
    blas = "unknown"
    try:
        config = np.show_config(mode="dicts")
        found = config["Build Dependencies"]["blas"]
        blas = f"{found.get('name', 'unknown')} {found.get('version', '')}".strip()
    except (TypeError, KeyError, AttributeError):
        pass
    for variable in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS"):
        if os.environ.get(variable):
            return blas, f"{os.environ[variable]} ({variable})"
    return blas, f"{os.cpu_count()} (default: one per CPU; install threadpoolctl to be sure)"
