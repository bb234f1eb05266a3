"""fit / evaluate / predict over mini-batches, with callbacks for progress and checkpoints.

`batches` arguments are any object with `len()` (batches per epoch) and `epoch(e)`, which
yields (x, y) device batches in an order fixed by (seed, e) — `xpcnn.data.Batches` is one.
The library prints nothing: what a person sees comes from callbacks (`ProgressBar`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from xpcnn.backend import namespace, synchronize, to_numpy
from xpcnn.losses import cross_entropy, log_softmax, one_hot


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


@dataclass
class Progress:
    """What callbacks see during an epoch. `running()` reads the device accumulators (a host
    sync on a GPU), so call it every few steps, not every step."""

    epoch: int
    batch: int = 0
    batches: int = 0
    images: int = 0
    lr: float = 0.0
    started: float = field(default_factory=time.perf_counter)
    loss_sum: Any = 0.0
    correct: Any = 0

    def running(self) -> dict[str, float]:
        loss = float(self.loss_sum) / max(self.images, 1)
        seconds = time.perf_counter() - self.started
        return {
            "loss": loss,
            "acc": float(self.correct) / max(self.images, 1),
            "lr": self.lr,
            "images_per_s": self.images / max(seconds, 1e-9),
        }


class Callback:
    """Hooks called by `fit`. Set `stop_training = True` to end after the current epoch."""

    stop_training = False

    def on_train_begin(self, fit_state: dict[str, Any]) -> None: ...

    def on_epoch_begin(self, progress: Progress) -> None: ...

    def on_batch_end(self, progress: Progress) -> None: ...

    def on_epoch_end(self, record: dict[str, Any]) -> None: ...

    def on_train_end(self, history: list[dict[str, Any]]) -> None: ...


def train_step(model: Any, optimizer: Any, x: Any, y: Any, label_smoothing: float = 0.0):
    """One step of SGD-family training; returns (summed loss, correct count) on the device."""
    logits = model(x)
    loss, grad = cross_entropy(logits, y, label_smoothing)
    model.zero_grad()
    model.backward(grad, input_grad=False)
    optimizer.step()
    space = namespace(logits)
    correct = space.sum(space.astype(space.argmax(logits, axis=1) == y, space.int64))
    return loss * x.shape[0], correct


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
) -> list[dict[str, Any]]:
    """Train for epochs [start_epoch, epochs); return the history, one record per epoch.

    Each record: epoch (1-based), train_loss, train_acc, val_loss, val_acc (when `val`), lr,
    seconds, images_per_s. Same seed in `train` and same initial weights ⇒ same weights after.
    """
    history = list(history or [])
    for callback in callbacks:
        callback.on_train_begin({"epochs": epochs, "start_epoch": start_epoch})
    for epoch in range(start_epoch, epochs):
        model.train()
        progress = Progress(epoch=epoch, batches=len(train))
        for callback in callbacks:
            callback.on_epoch_begin(progress)
        for x, y in train.epoch(epoch):
            if schedule is not None:
                optimizer.lr = schedule(optimizer.steps)
            progress.lr = optimizer.lr
            loss_sum, correct = train_step(model, optimizer, x, y, label_smoothing)
            progress.loss_sum = progress.loss_sum + loss_sum
            progress.correct = progress.correct + correct
            progress.batch += 1
            progress.images += x.shape[0]
            for callback in callbacks:
                callback.on_batch_end(progress)
        synchronize()
        running = progress.running()
        seconds = time.perf_counter() - progress.started
        if not math.isfinite(running["loss"]):
            raise TrainingDiverged(
                f"training diverged in epoch {epoch + 1}: the loss is {running['loss']} "
                f"(lr {optimizer.lr:g}); try a smaller --lr"
            )
        record = {
            "epoch": epoch + 1,
            "train_loss": running["loss"],
            "train_acc": running["acc"],
            "lr": optimizer.lr,
            "seconds": seconds,
            "images_per_s": progress.images / max(seconds, 1e-9),
        }
        if val is not None:
            scores = evaluate(model, val)
            record["val_loss"], record["val_acc"] = scores["loss"], scores["accuracy"]
        history.append(record)
        for callback in callbacks:
            callback.on_epoch_end(record)
        if any(callback.stop_training for callback in callbacks):
            break
    for callback in callbacks:
        callback.on_train_end(history)
    return history


def _log_probabilities(model: Any, x: Any, tta: bool) -> Any:
    log_p = log_softmax(model(x))
    if tta:  # average the probabilities of the image and its mirror image, in log space
        space = namespace(x)
        flipped = log_softmax(model(space.flip(x, axis=3)))
        log_p = space.logaddexp(log_p, flipped) - math.log(2.0)
    return log_p


def evaluate(model: Any, batches: Any, tta: bool = False) -> dict[str, float]:
    """Mean cross-entropy and accuracy over every batch of epoch 0 (evaluation mode)."""
    model.eval()
    loss_sum, correct, count = 0.0, 0, 0
    for x, y in batches.epoch(0):
        space = namespace(x)
        log_p = _log_probabilities(model, x, tta)
        hits = space.argmax(log_p, axis=1) == y
        loss_sum = loss_sum - space.sum(one_hot(y, log_p.shape[1], log_p.dtype) * log_p)
        correct = correct + space.sum(space.astype(hits, space.int64))
        count += x.shape[0]
    model.train()
    return {
        "loss": float(loss_sum) / max(count, 1),
        "accuracy": float(correct) / max(count, 1),
        "n": count,
    }


def predict(model: Any, batches: Iterable[Any] | Any, tta: bool = False) -> np.ndarray:
    """Class probabilities (N, K) on the host, in the order of the batches."""
    model.eval()
    source = batches.epoch(0) if hasattr(batches, "epoch") else batches
    chunks = []
    for item in source:
        x = item[0] if isinstance(item, tuple) else item
        chunks.append(to_numpy(namespace(x).exp(_log_probabilities(model, x, tta))))
    model.train()
    return np.concatenate(chunks, axis=0)


class ProgressBar(Callback):
    """A tqdm bar per epoch (loss, accuracy, images/s), refreshed every `every` steps."""

    def __init__(self, every: int = 20, file: Any = None) -> None:
        self.every, self.file = every, file
        self.bar = None

    def on_train_begin(self, fit_state: dict[str, Any]) -> None:
        self.epochs = fit_state["epochs"]

    def on_epoch_begin(self, progress: Progress) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(
            total=progress.batches,
            desc=f"epoch {progress.epoch + 1}/{self.epochs}",
            unit="batch",
            leave=False,
            file=self.file,
            dynamic_ncols=True,
        )

    def on_batch_end(self, progress: Progress) -> None:
        if progress.batch % self.every == 0 or progress.batch == progress.batches:
            running = progress.running()
            self.bar.set_postfix(
                loss=f"{running['loss']:.3f}",
                acc=f"{running['acc']:.3f}",
                img_s=f"{running['images_per_s']:.0f}",
            )
            self.bar.update(progress.batch - self.bar.n)

    def on_epoch_end(self, record: dict[str, Any]) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
