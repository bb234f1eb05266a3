"""fit / evaluate / predict over mini-batches, and the Callback protocol they call.

`batches` arguments are any object with `len()` (batches per epoch) and `epoch(e)`, which
yields (x, y) device batches in an order fixed by (seed, e) — `xpcnn.data.Batches` is one.
The library prints nothing: what a person sees comes from callbacks (`xpcnn.callbacks`).

Epochs: wherever an epoch is reported (history rows, `Interrupted`, `TrainingDiverged`, logs)
it is counted from 1, as a person says "epoch 1 of 8"; where one is an index into a sequence
(`fit`'s `start_epoch`, `Progress.epoch`, `batches.epoch(e)`) it counts from 0.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np

from xpcnn.backend import namespace, record, records, synchronize, to_numpy
from xpcnn.data.augment import translate
from xpcnn.distributed import Communicator
from xpcnn.losses import cross_entropy, log_softmax, one_hot

SYNC_EVERY = 20  # steps between the ranks' exchange of progress (loss, accuracy, a stop)


class Interrupted(Exception):
    """A callback asked to stop now (a signal): raised out of `fit` after the step in progress;
    `epoch` is the epoch in progress, or about to start when the stop came at an epoch's end.
    With several ranks all stop at the same step."""

    def __init__(self, epoch: int) -> None:
        super().__init__(f"stop requested in epoch {epoch}")
        self.epoch = epoch


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite: `epoch`, `step` (None: at the epoch's end), `loss` and
    `lr` say where."""

    def __init__(self, epoch: int, step: int | None, loss: float, lr: float) -> None:
        self.epoch, self.step, self.loss, self.lr = epoch, step, loss, lr
        where = f"epoch {epoch}" + (f", step {step}" if step is not None else "")
        super().__init__(f"training diverged in {where}: the loss is {loss} (lr {lr:g})")


def check_finite(progress: Progress, at_step: bool = True) -> None:
    """Raise TrainingDiverged when the epoch's running loss is NaN or infinite."""
    loss = progress.running()["loss"]
    if not math.isfinite(loss):
        step = progress.batch if at_step else None
        raise TrainingDiverged(progress.epoch + 1, step, loss, progress.lr)


@dataclass
class Progress:
    """What callbacks see during an epoch. `running()` reads the device accumulators (a host
    sync on a GPU), so call it every few steps, not every step; callbacks asking at the same
    step share one read."""

    epoch: int
    batch: int = 0
    batches: int = 0
    images: int = 0
    lr: float = 0.0
    started: float = field(default_factory=time.perf_counter)
    loss_sum: Any = 0.0
    correct: Any = 0
    read: tuple[int, dict[str, float]] | None = None  # (batch, values) of the last read
    comm: Any = field(default_factory=Communicator)

    def running(self) -> dict[str, float]:
        """Loss, accuracy, lr, images/s so far in the epoch; over all ranks (as of their last
        exchange, `sync`) when there are several."""
        if self.comm.size > 1:
            return self.read[1] if self.read is not None else self._values(0.0, 0.0, 0)
        if self.read is None or self.read[0] != self.batch:
            values = self._values(float(self.loss_sum), float(self.correct), self.images)
            self.read = (self.batch, values)
        return self.read[1]

    def sync(self, interrupt: bool) -> bool:
        """Exchange progress with the other ranks (one small host reduction); True when any
        rank asks to stop."""
        loss, correct, images, stops = self.comm.sum(
            [float(self.loss_sum), float(self.correct), self.images, float(interrupt)]
        )
        self.read = (self.batch, self._values(loss, correct, int(images)))
        return stops > 0

    def _values(self, loss_sum: float, correct: float, images: int) -> dict[str, float]:
        seconds = time.perf_counter() - self.started
        return {
            "loss": loss_sum / max(images, 1),
            "acc": correct / max(images, 1),
            "lr": self.lr,
            "images": images,
            "images_per_s": images / max(seconds, 1e-9),
        }


class Callback:
    """Hooks called by `fit`. Set `stop_training = True` to end after the current epoch, or
    `interrupt_requested = True` to stop after the step in progress (`Interrupted`)."""

    stop_training = False
    interrupt_requested = False

    def on_train_begin(self, fit_state: dict[str, Any]) -> None: ...

    def on_epoch_begin(self, progress: Progress) -> None: ...

    def on_batch_end(self, progress: Progress) -> None: ...

    def on_epoch_end(self, record: dict[str, Any]) -> None: ...

    def on_train_end(self, history: list[dict[str, Any]]) -> None: ...


class TrainStep:
    """One step of SGD-family training as one object (Chainer's Updater): forward, loss,
    backward, the gradients averaged over the ranks, the update; returns (summed loss, correct
    count) on the device.

    Where the backend records (`backend.record`: CuPy with XPCNN_CUDA_GRAPH=1), after `warmup`
    eager steps on batches of one shape the step's device work is recorded once, and from then
    on a batch of that shape is copied into the recording's input arrays and the whole step
    replays as one launch; other shapes (an epoch's last batch) run eagerly. What makes that
    possible holds on every backend: the step issues the same operations with the same Python
    arguments every time (the learning rate is read on the device), rebinds no state, and reads
    nothing back to the host.
    """

    warmup = 3

    def __init__(self, model: Any, optimizer: Any, label_smoothing: float = 0.0,
                 comm: Any = None) -> None:  # fmt: skip
        self.model, self.optimizer, self.label_smoothing = model, optimizer, label_smoothing
        self.comm = comm if comm is not None and comm.size > 1 else None
        self.shape, self.seen, self.recording = None, 0, None

    def __call__(self, x: Any, y: Any) -> tuple[Any, Any]:
        if self.recording is not None and tuple(x.shape) == self.shape:
            inputs, outputs, replay = self.recording
            inputs[0][...] = x
            inputs[1][...] = y
            replay()
            self.optimizer.finish()
            return outputs
        outputs = self.device_step(x, y)
        self.optimizer.finish()
        self.seen = self.seen + 1 if tuple(x.shape) == self.shape else 1
        self.shape = tuple(x.shape)
        if self.seen == self.warmup and self.comm is None and records():
            self._record(x, y)
        return outputs

    def device_step(self, x: Any, y: Any) -> tuple[Any, Any]:
        """The step's device work: all of it but the optimizer's host bookkeeping."""
        logits = self.model(x)
        loss, grad = cross_entropy(logits, y, self.label_smoothing)
        self.model.zero_grad()
        self.model.backward(grad, input_grad=False)
        if self.comm is not None:
            self.comm.average_gradients(self.model, x.shape[0])
        self.optimizer.apply()
        xp = namespace(logits)
        correct = xp.sum(xp.astype(xp.argmax(logits, axis=1) == y, xp.int64))
        return loss * x.shape[0], correct

    def _record(self, x: Any, y: Any) -> None:
        xp = namespace(x)
        inputs = (xp.asarray(x, copy=True), xp.asarray(y, copy=True))
        recorded = record(lambda: self.device_step(*inputs))
        if recorded is not None:
            self.recording = (inputs, recorded[0], recorded[1])


def train_step(
    model: Any, optimizer: Any, x: Any, y: Any, label_smoothing: float = 0.0, comm: Any = None
):
    """One step of SGD-family training; returns (summed loss, correct count) on the device.
    With a communicator of several ranks, the gradients are those of the mean loss over every
    rank's batch (one reduction). (A `TrainStep` made once does the same and can record.)"""
    return TrainStep(model, optimizer, label_smoothing, comm)(x, y)


def fit(
    model: Any,
    train: Any,
    *,
    optimizer: Any,
    epochs: int,
    schedule: Any = None,
    val: Any = None,
    label_smoothing: float = 0.0,
    start_epoch: int = 0,
    history: list[dict[str, Any]] | None = None,
    callbacks: Sequence[Callback] = (),
    comm: Any = None,
) -> list[dict[str, Any]]:
    """Train for epochs [start_epoch, epochs); return the history, one record per epoch.

    Each record: epoch (1-based), train_loss, train_acc, val_loss, val_acc (when `val`), lr,
    seconds, images_per_s. Same seed in `train` and same initial weights ⇒ same weights after.
    comm: an `xpcnn.distributed` communicator for data-parallel training: `train` and `val`
    are then this rank's shards, and the records are over all ranks.
    """
    comm = comm if comm is not None else Communicator()
    step = TrainStep(model, optimizer, label_smoothing, comm)
    history = list(history or [])
    if schedule is not None:  # one table on the device: the steps read it there
        optimizer.set_schedule(schedule, epochs * len(train))
    for callback in callbacks:
        callback.on_train_begin({"epochs": epochs, "start_epoch": start_epoch, "history": history})
    for epoch in range(start_epoch, epochs):
        model.train()
        progress = Progress(epoch=epoch, batches=len(train), comm=comm)
        for callback in callbacks:
            callback.on_epoch_begin(progress)
        for x, y in train.epoch(epoch):
            progress.lr = optimizer.lr
            loss_sum, correct = step(x, y)
            progress.loss_sum = progress.loss_sum + loss_sum
            progress.correct = progress.correct + correct
            progress.batch += 1
            progress.images += x.shape[0]
            if _stop_now(progress, callbacks):
                raise Interrupted(epoch + 2)  # the next one
            for callback in callbacks:
                callback.on_batch_end(progress)
        comm.average_buffers(model)
        synchronize()
        check_finite(progress, at_step=False)
        running = progress.running()
        seconds = time.perf_counter() - progress.started
        record = {
            "epoch": epoch + 1,
            "train_loss": running["loss"],
            "train_acc": running["acc"],
            "lr": progress.lr if progress.batch else optimizer.lr,  # the last step's
            "seconds": seconds,
            "images_per_s": running["images"] / max(seconds, 1e-9),
        }
        if val is not None:
            scores = evaluate(
                model, val, comm=comm, check=partial(_stop_if_asked, callbacks, epoch)
            )
            record["val_loss"], record["val_acc"] = scores["loss"], scores["accuracy"]
        history.append(record)
        for callback in callbacks:
            callback.on_epoch_end(record)
        asked = any(callback.interrupt_requested for callback in callbacks)
        if comm.size > 1:  # asked during validation or the checkpoint: decided together
            asked = comm.sum([float(asked)])[0] > 0
        if asked and epoch + 1 < epochs:
            raise Interrupted(epoch + 2)  # the next one
        if any(callback.stop_training for callback in callbacks):
            break
    for callback in callbacks:
        callback.on_train_end(history)
    return history


def _stop_now(progress: Progress, callbacks: Sequence[Callback]) -> bool:
    """Whether a callback asked to stop now; with several ranks, decided together at each
    exchange of progress (every SYNC_EVERY steps and at the epoch's end), so all stop at once."""
    asked = any(callback.interrupt_requested for callback in callbacks)
    if progress.comm.size == 1:
        return asked
    if progress.batch % SYNC_EVERY == 0 or progress.batch == progress.batches:
        return progress.sync(asked)
    return False


def _stop_if_asked(callbacks: Sequence[Callback], epoch: int) -> None:
    """Between validation batches: a stop asked for during a long evaluation ends it there."""
    if any(callback.interrupt_requested for callback in callbacks):
        raise Interrupted(epoch + 1)


def _log_probabilities(model: Any, x: Any, tta: bool, mirror: bool = True) -> Any:
    """log p(class | x); with `tta`, of the average over six views (airbench's multi-crop TTA):
    the image and its mirror image (weight 1/4 each), and both of those shifted one pixel
    up-left and down-right with reflected borders (1/8 each). Without `mirror` (images whose
    mirror image is not of their class: digits), the three unmirrored views (1/2, 1/4, 1/4)."""
    if not tta:
        return log_softmax(model(x))
    xp = namespace(x)
    halves = 2 if mirror else 1
    views = [(x, 0.5 / halves)] + [(translate(x, step), 0.25 / halves) for step in (-1, 1)]
    parts = []
    for view, weight in views:
        for image in (view, xp.flip(view, axis=3)) if mirror else (view,):
            parts.append(log_softmax(model(image)) + math.log(weight))
    total = parts[0]
    for part in parts[1:]:  # Σ weight·p in log space
        total = xp.logaddexp(total, part)
    return total


def evaluate(
    model: Any, batches: Any, tta: bool = False, comm: Any = None,
    check: Callable[[], None] | None = None, predictions: bool = False, mirror: bool = True,
) -> dict[str, Any]:  # fmt: skip
    """Mean cross-entropy and accuracy over every batch of epoch 0 (evaluation mode); with a
    communicator, over every rank's batches (each rank holds its own share), counted exactly.
    The one definition of a score: validation during training and a run's final score
    (`runs.scoring.score`, which asks for `predictions`: this process's predicted classes, in
    order, on the host). `check` runs before each batch of one process and may raise to abandon
    the evaluation (a stop request); with several ranks it does not run, as every rank must
    reach the final sum. `mirror`: TTA's views include mirror images (`Dataset.mirrored`)."""
    model.eval()
    alone = comm is None or comm.size == 1
    loss_sum, correct, count, predicted = 0.0, 0, 0, []
    for x, y in batches.epoch(0):
        if check is not None and alone:
            check()
        xp = namespace(x)
        log_p = _log_probabilities(model, x, tta, mirror)
        classes = xp.argmax(log_p, axis=1)
        if predictions:
            predicted.append(to_numpy(classes))
        hits = classes == y
        loss_sum = loss_sum - xp.sum(one_hot(y, log_p.shape[1], log_p.dtype) * log_p)
        correct = correct + xp.sum(xp.astype(hits, xp.int64))
        count += x.shape[0]
    model.train()
    loss, hits, count = (comm or Communicator()).sum([float(loss_sum), float(correct), count])
    scores = {"loss": loss / max(count, 1), "accuracy": hits / max(count, 1), "n": int(count)}
    if predictions:
        scores["predicted"] = np.concatenate(predicted) if predicted else np.zeros(0, np.int64)
    return scores


def predict(
    model: Any, batches: Iterable[Any] | Any, tta: bool = False, mirror: bool = True
) -> np.ndarray:
    """Class probabilities (N, K) on the host, in the order of the batches (`evaluate`'s `tta`
    and `mirror`)."""
    model.eval()
    source = batches.epoch(0) if hasattr(batches, "epoch") else batches
    chunks = []
    for item in source:
        x = item[0] if isinstance(item, tuple) else item
        log_p = _log_probabilities(model, x, tta, mirror)
        chunks.append(to_numpy(namespace(x).exp(log_p)))
    model.train()
    return np.concatenate(chunks, axis=0)
