"""A run with a time budget instead of a number of epochs: the budget read from "30m", "1h30m",
"90s"; the run's first steps and a validation pass timed; the epochs that fit chosen once, before
training, so the learning-rate schedule spans exactly the steps the run will take.

What an epoch costs: its steps, its validation, its writes to the run folder (checkpoint,
best model, history: a probe checkpoint is written there and timed) and (PlotWriter draws only
while drawing stays under a twentieth of the training time) up to 5% for the figures. The final
score (with TTA's views), the figures drawn after the first epoch and at the end (a probe figure
is timed), and what the run has already spent (loading the data, planning) come off the budget
first. Resuming keeps the plan: the chosen epochs are the run's stored `epochs`.
"""

from __future__ import annotations

import itertools
import math
import re
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from xpcnn import plots
from xpcnn.backend import synchronize, to_numpy
from xpcnn.checkpoint import save_checkpoint
from xpcnn.data import Batches, Dataset
from xpcnn.runs.config import ConfigError, TrainConfig
from xpcnn.runs.scoring import eval_batches
from xpcnn.runs.setup import make_optimizer
from xpcnn.train import TrainStep, evaluate, fit

_DURATION = re.compile(r"(?:(\d+(?:\.\d*)?)h)?(?:(\d+(?:\.\d*)?)m)?(?:(\d+(?:\.\d*)?)s)?")
TIMED_STEPS = 3  # after one untimed step (first-call costs: caches, kernel compilation)
FIGURES_SHARE = 0.05  # PlotWriter's patience of 20: drawing takes at most 1/21 of the time
TEST_SHARE = 0.2  # an official test split's size against its training split's (CIFAR: 10k/50k)


def parse_duration(text: str) -> float:
    """Seconds in "90s", "30m", "1h30m", "1.5h" or a plain number of seconds; ValueError else."""
    text = text.strip().lower()
    match = _DURATION.fullmatch(text)
    if text and match and any(match.groups()):
        hours, minutes, seconds = (float(group or 0) for group in match.groups())
        total = 3600 * hours + 60 * minutes + seconds
    else:
        try:
            total = float(text)
        except ValueError:
            total = math.nan
    if not (math.isfinite(total) and total > 0):
        raise ValueError(f"expected a duration such as 90s, 30m or 1h30m, got {text!r}")
    return total


def format_duration(seconds: float) -> str:
    """1h02m, 29m12s, 48s."""
    seconds = max(round(seconds), 0)
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


@dataclass(frozen=True)
class Plan:
    """What was measured (seconds) and the epochs chosen: `epoch` the cost of one, `final` of
    the final score, `spent` before training starts."""

    budget: float
    step: float
    steps: int
    validation: float
    writes: float
    final: float  # the final score and the figures drawn once or twice a run
    spent: float

    @property
    def epoch(self) -> float:
        figures = 1 + FIGURES_SHARE if plots.available() else 1
        return (self.steps * self.step + self.validation + self.writes) * figures

    @property
    def epochs(self) -> int:
        """The most epochs whose planned time fits; 0 when not even one does."""
        left = self.budget - self.spent - self.final
        return max(int(left // self.epoch), 0) if self.epoch > 0 else 0

    def describe(self) -> str:
        n = self.epochs
        ends = self.spent + n * self.epoch + self.final
        return (
            f"time budget {format_duration(self.budget)}: {self.step:.3g} s a step, "
            f"{self.steps} steps, {self.validation:.3g} s of validation and {self.writes:.2g} s "
            f"of checkpoints an epoch, {self.final:.3g} s for the final score: {n} epoch"
            f"{'s' * (n != 1)}, ending after about {format_duration(ends)}"
        )


def plan(
    config: TrainConfig,
    model: Any,
    train_batches: Batches,
    val_set: Dataset,
    dataset: Dataset,
    mean: Any,
    std: Any,
    comm: Any,
    started: float,
    folder: Path | None = None,
) -> Plan:
    """Time this run's steps (on a provisional optimizer; the model's state is put back after),
    a validation pass and, in the run's `folder`, a checkpoint's write and a figure's drawing;
    plan the epochs of `config.time` seconds counted from `started` (a `time.perf_counter()`
    value). Every rank times its steps; rank 0's plan is everyone's."""
    saved = {key: np.array(to_numpy(value)) for key, value in model.state_dict().items()}
    optimizer = make_optimizer(config, model, total_steps=len(train_batches))
    step = TrainStep(model, optimizer, config.label_smoothing, comm)
    times = []
    batches = itertools.chain.from_iterable(map(train_batches.epoch, itertools.count()))
    for index in range(TIMED_STEPS + 1):  # a step's time includes making its batch
        begun = time.perf_counter()
        step(*next(batches))
        synchronize()
        if index:
            times.append(time.perf_counter() - begun)
    step_seconds = float(np.median(times))
    share = np.array_split(np.arange(len(val_set)), comm.size)[comm.rank]
    per_image = _eval_seconds_per_image(model, val_set.subset(share[:512]), mean, std)
    validation = per_image * len(share)
    if len(train_batches) <= TIMED_STEPS:  # short epochs: fit's own work per epoch counts too
        epochs = TIMED_STEPS + 1
        val = eval_batches(val_set.subset(share), mean, std) if len(share) else None
        begun = time.perf_counter()
        fit(model, train_batches, optimizer=optimizer, epochs=epochs, val=val, comm=comm)
        whole = (time.perf_counter() - begun) / epochs  # an epoch's steps and validation
        step_seconds = max(step_seconds, (whole - validation) / len(train_batches))
    writes = 3 * _write_seconds(folder, model, optimizer)  # checkpoint, best, history
    model.load_state_dict(saved)  # the provisional optimizer's momentum is dropped with it
    views = (6 if dataset.mirrored else 3) if config.tta else 1
    final_images = len(dataset) * TEST_SHARE if dataset.has_test else len(val_set)
    measured = Plan(
        budget=float(config.time),
        step=step_seconds,
        steps=len(train_batches),
        validation=validation,
        writes=writes,
        final=per_image * final_images * views + 5 * _draw_seconds(folder),  # rank 0 scores
        spent=time.perf_counter() - started,
    )
    return comm.broadcast(measured)  # one plan: every rank trains the same epochs


def fitted(config: TrainConfig, measured: Plan) -> TrainConfig:
    """`config` with the planned epochs; ConfigError when not even one fits."""
    if measured.epochs < 1:
        needed = measured.spent + measured.epoch + measured.final
        raise ConfigError(
            "time", format_duration(config.time), f"one epoch does not fit: it takes about "
            f"{format_duration(needed)} with what was spent so far and the final score here",
        )  # fmt: skip
    return replace(config, epochs=measured.epochs)


def _eval_seconds_per_image(model: Any, sample: Dataset, mean: Any, std: Any) -> float:
    if len(sample) == 0:
        return 0.0
    batches = eval_batches(sample, mean, std)
    begun = time.perf_counter()
    evaluate(model, batches)
    synchronize()
    return (time.perf_counter() - begun) / len(sample)


def _probe_folder(folder: Path | None) -> Path | None:
    """The run folder, or before it is made the nearest folder above it (the same disk)."""
    if folder is None:
        return None
    return next((f for f in (folder, *folder.absolute().parents) if f.is_dir()), None)


def _write_seconds(folder: Path | None, model: Any, optimizer: Any) -> float:
    """One checkpoint written (and fsynced) into the run folder, as ModelCheckpoint writes it."""
    folder = _probe_folder(folder)
    if folder is None:
        return 0.0
    probe = folder / ".xpcnn-budget-probe.npz"
    begun = time.perf_counter()
    save_checkpoint(probe, model.state_dict(), optimizer.state_dict(), {})
    seconds = time.perf_counter() - begun
    probe.unlink(missing_ok=True)
    return seconds


def _draw_seconds(folder: Path | None) -> float:
    """One figure drawn into the run folder (curves, samples, confusion: five a run)."""
    folder = _probe_folder(folder)
    if folder is None or not plots.available():
        return 0.0
    probe = folder / ".xpcnn-budget-probe.png"
    row = {"epoch": 1, "train_loss": 1.0, "train_acc": 0.5, "val_loss": 1.0, "val_acc": 0.5}
    begun = time.perf_counter()
    try:
        plots.plot_curves([row, {**row, "epoch": 2}], probe)
    except Exception:  # noqa: BLE001 (PlotWriter reports drawing failures; planning goes on)
        return 0.0
    finally:
        probe.unlink(missing_ok=True)
    return time.perf_counter() - begun
