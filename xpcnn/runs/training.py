"""Training a run: answer "fresh or resumed" once into a `Start`, then one straight path —
data, model, optimizer, callbacks, `fit`, the final score — writing into the run folder."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from xpcnn import plots
from xpcnn.backend import backend_name, manual_seed, quiet_float_errors
from xpcnn.callbacks import (
    EpochLog,
    HistoryLogger,
    ModelCheckpoint,
    PlotWriter,
    ReseedDropout,
    StopOnSignal,
    TerminateOnNaN,
)
from xpcnn.checkpoint import Checkpoint
from xpcnn.data import Batches, Dataset, channel_stats, load_dataset, train_val_indices
from xpcnn.distributed import Communicator
from xpcnn.models import PRESETS, build_model
from xpcnn.optim import make_schedule
from xpcnn.runs import budget
from xpcnn.runs.config import ConfigError, TrainConfig
from xpcnn.runs.folder import RunFolder, RunFolderError
from xpcnn.runs.record import RunRecord, restore_model, restore_optimizer
from xpcnn.runs.scoring import eval_batches, score
from xpcnn.runs.setup import init_from_data, load_init, make_optimizer
from xpcnn.train import Callback, Interrupted, TrainingDiverged, fit

Log = Callable[[str], None]
SAMPLES = 24  # validation images drawn in samples.png


class TrainingInterrupted(Exception):
    """A signal stopped training after a finished step: `signum` (Ctrl-C's SIGINT, SIGTERM from
        `docker stop` or a scheduler; None when a callback asked). `saved_epoch`: the epoch the run
        folder's checkpoint holds (0 when none finished); `epoch`: the epoch it stopped in (counted
    from 1, as `train.Interrupted`'s)."""

    def __init__(
        self,
        out: Path,
        epoch: int,
        saved_epoch: int,
        config: TrainConfig,
        signum: int | None = None,
    ) -> None:
        self.out, self.epoch, self.saved_epoch, self.config = out, epoch, saved_epoch, config
        self.signum = signum
        by = f" by {signal.Signals(signum).name}" if signum not in (None, signal.SIGINT) else ""
        super().__init__(f"interrupted{by} in epoch {epoch}/{config.epochs}")


class RunDiverged(TrainingDiverged):
    """TrainingDiverged in a run folder; `saved_epoch` is what its checkpoint keeps."""

    def __init__(self, err: TrainingDiverged, checkpoint: Path, saved_epoch: int) -> None:
        super().__init__(err.epoch, err.step, err.loss, err.lr)
        self.checkpoint, self.saved_epoch = checkpoint, saved_epoch
        kept = (
            f"{checkpoint} keeps epoch {saved_epoch}"
            if saved_epoch
            else "no epoch finished, so no checkpoint was written"
        )
        self.args = (f"{self.args[0]}; {kept}",)


@dataclass
class Start:
    """Where training begins, fresh or resumed: the record so far (its history holds the
    finished epochs), the model and optimizer in their state, the data split and statistics."""

    config: TrainConfig
    record: RunRecord
    dataset: Dataset
    train_set: Dataset
    val_set: Dataset
    model: Any
    optimizer: Any
    train_batches: Batches  # this rank's shuffled, augmented training batches


def train(
    options: dict[str, Any],
    out: str | os.PathLike | None = None,
    *,
    resume: bool = False,
    force: bool = False,
    log: Log = lambda line: None,
    callbacks: Sequence[Callback] = (),
    comm: Any = None,
) -> dict[str, Any]:
    """Train a run in folder `out` (default runs/<date-time>) and return its summary.

    options: TrainConfig settings chosen by the caller; the rest come from the preset's recipe,
        or with `resume` from the run's record (a chosen setting must then agree with it, except
        `epochs`, which can extend a run, and `data`, which may point to a moved copy).
    Raises ConfigError, RunFolderError, CheckpointError, DataError for bad input,
    TrainingDiverged on a NaN/Inf loss and TrainingInterrupted on a stop signal (Ctrl-C,
    SIGTERM); the last completed epoch's checkpoint stays.
    comm: an `xpcnn.distributed` communicator to train data-parallel on its ranks; rank 0
        alone logs, runs `callbacks` and writes the run folder, and its weights start every rank.
    """
    started = time.perf_counter()  # a time budget counts from here
    comm = comm if comm is not None else Communicator()
    out = Path(out) if out is not None else Path("runs") / time.strftime("%Y%m%d-%H%M%S")
    out = comm.broadcast(out)  # rank 0's clock names the folder
    if not comm.is_root:
        start = prepare(options, comm.broadcast(None), lambda line: None, comm, started)
        return {"out": out, "history": _fit(start, None, lambda line: None, (), comm)}
    with RunFolder.open(out, resume=resume, force=force) as folder:
        start = prepare(options, comm.broadcast(folder.resumed), log, comm, started, folder.path)
        log(f"run folder: {out}")
        folder.start()
        if not plots.available():
            log(plots.MISSING)
        history = _fit(start, folder, log, callbacks, comm)
        return _finish(start, history, folder, log)


def prepare(
    options: dict[str, Any],
    resumed: tuple[Checkpoint, RunRecord] | None,
    log: Log,
    comm: Any = None,
    started: float | None = None,
    folder: Path | None = None,
) -> Start:
    """Resolve the settings, load and split the data, build or restore model and optimizer
    (with several ranks: rank 0 loads the data first, so only it writes the decoded cache,
    and its weights are broadcast). A time budget counts from `started` (perf_counter) and
    probes the writes in the run's `folder`."""
    started = time.perf_counter() if started is None else started
    comm = comm if comm is not None else Communicator()
    if resumed is None:
        config = TrainConfig.resolve(options)
    else:
        checkpoint, stored = resumed
        config = stored.config.resumed(options, stored.epoch, checkpoint.path)
    if not comm.is_root:
        comm.barrier()  # rank 0 has decoded (and cached) the data
    dataset = load_dataset(config.data, split="train", size=config.image_size)
    if comm.is_root:
        comm.barrier()
    for note in dataset.notes:
        log(f"data: {note}")
    size = _square_size(dataset, config)
    if resumed is not None:
        _check_same_data(config, dataset, size, resumed[1])
    train_idx, val_idx = train_val_indices(dataset.labels, config.val_split, config.seed,
                                           config.limit)  # fmt: skip
    if len(train_idx) == 0:
        raise ConfigError("data", config.data, "leaves no training images after the split")
    train_set, val_set = dataset.subset(train_idx), dataset.subset(val_idx)
    manual_seed(config.seed)
    if resumed is None:
        mean, std = channel_stats(train_set.images)
        record = RunRecord(
            config,
            {"num_classes": len(dataset.classes), "in_channels": int(dataset.images.shape[1]),
             "image_size": size},
            tuple(dataset.classes), tuple(map(float, mean)), tuple(map(float, std)),
            data_size=len(dataset), train_size=len(train_set), val_size=len(val_set),
            backend=backend_name(), mirrored=dataset.mirrored,
        )  # fmt: skip
        model = build_model(record.model, **record.model_args)
        if config.init is None:
            init_from_data(model, config, train_set, mean, std)
        else:
            load_init(model, config)
    else:
        checkpoint, stored = resumed
        record = replace(stored, config=config)
        model = restore_model(checkpoint, record)
    comm.broadcast_state(model)  # before the optimizer copies it (Lookahead)
    train_batches = _train_batches(config, record, train_set, comm)
    if resumed is None and config.time is not None:  # resumed: the stored epochs are the plan
        measured = budget.plan(config, model, train_batches, val_set, dataset, mean, std, comm,
                               started, folder)  # fmt: skip
        config = budget.fitted(config, measured)
        record = replace(record, config=config)
        log(measured.describe())
    optimizer = make_optimizer(config, model, total_steps=config.epochs * len(train_batches))
    if resumed is not None:
        restore_optimizer(resumed[0], optimizer)
    log(
        f"data {config.data}: {len(dataset)} images {size}x{size}, {len(dataset.classes)} "
        f"classes; train {len(train_set)}, validation {len(val_set)}"
    )
    ranks = f"; {comm.size} ranks" if comm.size > 1 else ""
    recipe = config.describe(dataset.mirrored)
    log(f"model: {config.model}, {model.num_parameters():,} parameters; {recipe}; "
        f"backend {backend_name()}{ranks}")  # fmt: skip
    if not dataset.mirrored and (config.augment or config.tta):
        log(f"data: {config.data}'s images are not mirror images of their class: no flips in "
            "augmentation or TTA")  # fmt: skip
    if optimizer.lookahead is not None:
        log(f"lookahead: weights synced with their slow average every "
            f"{optimizer.lookahead.every} steps of {optimizer.lookahead.total_steps}")  # fmt: skip
    if resumed is None:
        log(str(model.summary((record.model_args["in_channels"], size, size))))
    else:
        log(f"resuming from {resumed[0].path} after epoch {record.epoch}/{config.epochs}")
    return Start(config, record, dataset, train_set, val_set, model, optimizer, train_batches)


def _train_batches(
    config: TrainConfig, record: RunRecord, train_set: Dataset, comm: Any
) -> Batches:
    """This rank's training batches, normalised and augmented as the preset says."""
    preset = PRESETS[config.model]
    augment = preset.augmentation if config.augment else None
    if augment is not None and not train_set.mirrored:  # digits: crops only
        augment = replace(augment, flip=False)
    return Batches(
        train_set.images, train_set.labels, config.batch_size, shuffle=True, seed=config.seed,
        mean=np.asarray(record.mean, np.float32), std=np.asarray(record.std, np.float32),
        augment=augment, shard=(comm.rank, comm.size),
        alternate_flip=config.augment and preset.alternate_flip and train_set.mirrored,
        drop_last=preset.drop_last and len(train_set) >= config.batch_size,
    )  # fmt: skip


def _fit(
    start: Start, folder: RunFolder | None, log: Log, callbacks: Sequence[Callback], comm: Any
) -> list:
    """Train from `start`; with a `folder` (rank 0), write it after every epoch."""
    config, record, model = start.config, start.record, start.model
    mean, std = np.asarray(record.mean, np.float32), np.asarray(record.std, np.float32)
    train_batches = start.train_batches
    # validation: each rank scores its contiguous share, the counts are summed
    share = np.array_split(np.arange(len(start.val_set)), comm.size)[comm.rank]
    val_set = start.val_set.subset(share)
    val_batches = eval_batches(val_set, mean, std) if len(start.val_set) else None
    steps = len(train_batches)
    schedule = make_schedule(config.schedule, config.lr, config.epochs * steps, steps)
    history = list(record.history)

    def meta(done: list[dict[str, Any]]) -> dict[str, Any]:
        return record.with_history(done).to_json()

    stopper = StopOnSignal()
    writers: list[Callback] = []
    last = None
    if folder is not None:
        samples = start.val_set.subset(_sample_picks(start.val_set.labels, SAMPLES))
        last = ModelCheckpoint(folder.checkpoint, model, start.optimizer, meta, folder.best)
        writers = [
            *callbacks,
            last,
            HistoryLogger(folder.path),
            PlotWriter(folder.path, model, samples, eval_batches(samples, mean, std), log=log),
            EpochLog(log, config.epochs),
        ]
    all_callbacks = [ReseedDropout(config.seed), TerminateOnNaN(), *writers, stopper]
    out = folder.path if folder is not None else Path(".")
    checkpoint = out / "checkpoint.npz"
    with quiet_float_errors(), stopper.catching_signals():
        try:
            history = fit(
                model, train_batches, optimizer=start.optimizer, epochs=config.epochs,
                schedule=schedule, val=val_batches, label_smoothing=config.label_smoothing,
                start_epoch=record.epoch, history=history, callbacks=all_callbacks, comm=comm,
            )  # fmt: skip
        except Interrupted as stop:
            saved = last.saved_epoch if last is not None else 0
            raise TrainingInterrupted(out, stop.epoch, saved, config, stopper.signum) from None
        except TrainingDiverged as err:
            saved = last.saved_epoch if last is not None else 0
            raise RunDiverged(err, checkpoint, saved) from None
        except OSError as err:  # a full disk, a folder made read-only: what is safe on disk
            saved = last.saved_epoch if last is not None else 0
            kept = f"{checkpoint} keeps epoch {saved}" if saved else "no epoch was saved"
            where = Path(err.filename) if err.filename else out
            raise RunFolderError(
                where, f"cannot be written ({err.strerror or err}); {kept}"
            ) from None
    if record.epoch >= config.epochs:
        log(f"{checkpoint} already holds all {config.epochs} epochs")
    return history


def _finish(start: Start, history: list, folder: RunFolder, log: Log) -> dict[str, Any]:
    """Report the best epoch, score the test split (else the validation split), draw its
    confusion matrix."""
    config, record = start.config, start.record.with_history(history)
    summary: dict[str, Any] = {"out": folder.path, "history": history, "best": record.best}
    if record.best is not None:
        epoch, acc = record.best
        log(f"best validation accuracy {acc:.4f} at epoch {epoch} ({folder.best})")
    if start.dataset.has_test:
        scored, name = load_dataset(config.data, split="test", size=config.image_size), "test"
    elif len(start.val_set):
        scored, name = start.val_set, "validation"
    else:
        return summary
    final = score(start.model, scored, record.mean, record.std, tta=config.tta)
    summary[name] = final
    with_tta = " with TTA" if config.tta else ""
    log(f"{name} accuracy{with_tta} {final['accuracy']:.4f} ({final['n']} images)")
    if plots.available():
        try:
            plots.plot_confusion(
                final["confusion"], start.dataset.classes, folder.path / "confusion.png",
                title=f"{name} split{with_tta}, accuracy {final['accuracy']:.3f}",
            )  # fmt: skip
        except Exception as err:  # a picture never fails a run
            log(f"plots: could not draw confusion.png ({type(err).__name__}: {err})")
    return summary


def _square_size(dataset: Dataset, config: TrainConfig) -> int:
    h, w = dataset.images.shape[2:]
    if h != w:
        raise ConfigError(
            "image_size", None, f"the images are {h}x{w} (height x width); the models take "
            "square images, so an image size is needed to resize them",
        )  # fmt: skip
    smallest = PRESETS[config.model].min_image_size
    if h < smallest:
        raise ConfigError(
            "image_size", None, f"the images are {h}x{w}; the {config.model} preset needs at "
            f"least {smallest}x{smallest}, so an image size is needed to enlarge them",
        )  # fmt: skip
    return int(h)


def _check_same_data(config: TrainConfig, dataset: Dataset, size: int, run: RunRecord) -> None:
    """Resuming needs the run's own data: its classes, image size and number of images."""
    if dataset.classes != list(run.classes):
        found = f"has classes {dataset.classes}, the run {list(run.classes)}"
    elif size != run.image_size or dataset.images.shape[1] != run.model_args["in_channels"]:
        found = (f"has {dataset.images.shape[1]}x{size}x{size} images, the run "
                 f"{run.model_args['in_channels']}x{run.image_size}x{run.image_size}")  # fmt: skip
    elif len(dataset) != run.data_size:
        found = f"has {len(dataset)} images, the run was trained on {run.data_size}"
    else:
        return
    raise ConfigError("data", config.data, f"{found}; resume with the data the run was trained on")


def _sample_picks(labels: np.ndarray, n: int) -> np.ndarray:
    """Up to n indices taking classes in turn (the first of each class, then the second, ...)."""
    rank = np.zeros(len(labels), dtype=np.int64)
    for c in np.unique(labels):
        where = np.flatnonzero(labels == c)
        rank[where] = np.arange(len(where))
    order = np.lexsort((labels, rank))
    return order[:n]
