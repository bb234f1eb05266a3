"""Callbacks for `fit`, one job each (as Keras' `callbacks/`): progress bar, epoch log, NaN
stop, stop on a signal, dropout reseeding, and the writers of a run folder — checkpoint, history,
plots. None of them knows about the command line; the run layer wires them together. `fit` owns
the history: a callback that needs earlier epochs reads fit's list (`on_train_begin`'s
`fit_state["history"]`, appended before each `on_epoch_end`) and keeps no copy."""

from __future__ import annotations

import csv
import io
import json
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xpcnn.backend import manual_seed
from xpcnn.checkpoint import save_checkpoint
from xpcnn.files import atomic_link, write_text
from xpcnn.train import Callback, Progress, check_finite, predict

HISTORY_COLUMNS = (
    "epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds", "images_per_s",
)  # fmt: skip


class ProgressBar(Callback):
    """A tqdm bar per epoch (loss, accuracy, images/s), refreshed every `every` steps."""

    def __init__(self, every: int = 20, file: Any = None) -> None:
        self.every, self.file = every, file
        self.bar = None

    def on_train_begin(self, fit_state: dict[str, Any]) -> None:
        self.epochs = fit_state["epochs"]

    def on_epoch_begin(self, progress: Progress) -> None:
        from tqdm.auto import tqdm  # imported when used: `import xpcnn` stays light

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
        self.close()

    def close(self) -> None:
        """Take the half-drawn bar off the terminal (before an error message)."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class EpochLog(Callback):
    """One line per epoch through `log` (print, a logger, a list's append)."""

    def __init__(self, log: Callable[[str], None], epochs: int) -> None:
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


class TerminateOnNaN(Callback):
    """Stop as soon as the running loss is NaN or infinite (checked every `every` steps, a host
    sync each time on a GPU), rather than at the end of a long epoch."""

    def __init__(self, every: int = 20) -> None:
        self.every = every

    def on_batch_end(self, progress: Progress) -> None:
        if progress.batch % self.every == 0:
            check_finite(progress)


class ReseedDropout(Callback):
    """Seed the default generator (dropout) from (seed, epoch), so a resumed epoch draws the same
    masks as an uninterrupted one."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def on_epoch_begin(self, progress: Progress) -> None:
        manual_seed(self.seed, progress.epoch, 2)


# Ctrl-C; `docker stop`, Kubernetes and batch schedulers; the one `mpiexec` passes on to every rank
STOP_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGUSR1") if hasattr(signal, name)
)


class StopOnSignal(Callback):
    """Inside `catching_signals()`, any of STOP_SIGNALS asks `fit` to stop after the step,
    validation batch or checkpoint write in progress (`train.Interrupted`); `signum` is the one
    that arrived. A second signal stops at once (Ctrl-C: KeyboardInterrupt; the others: their
    default action)."""

    signum: int | None = None

    @contextmanager
    def catching_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def request_stop(signum: int, frame: Any) -> None:
            self.interrupt_requested, self.signum = True, signum
            for number in STOP_SIGNALS:
                at_once = signal.default_int_handler if number == signal.SIGINT else signal.SIG_DFL
                signal.signal(number, at_once)

        previous = {number: signal.signal(number, request_stop) for number in STOP_SIGNALS}
        try:
            yield
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)


@dataclass(frozen=True)
class Monitor:
    """Which epoch is best (Keras' MonitorCallback): the one whose `monitor` entry is highest
    (mode "max") or lowest ("min"), the first of equals; epochs without the entry do not count."""

    monitor: str = "val_acc"
    mode: str = "max"

    def improves(self, value: float, best: float | None) -> bool:
        return best is None or (value > best if self.mode == "max" else value < best)

    def best(self, history: Sequence[dict[str, Any]]) -> tuple[int, float] | None:
        """(epoch, value) of the best epoch of `history`, None when no epoch has the entry."""
        found = None
        for row in history:
            if self.monitor in row and self.improves(row[self.monitor], found and found[1]):
                found = (row["epoch"], row[self.monitor])
        return found


BEST = Monitor("val_acc", "max")  # the best epoch of a run: best.npz, the run's record


class ModelCheckpoint(Callback):
    """After each epoch, the model and optimizer state with `meta(history)` as its JSON record
    into `path` (atomically); with `best`, also into `best` whenever the epoch is the best so far
    by `monitor` (Keras' `save_best_only`), as a hard link to the file just written rather than
    a second write. The history is fit's (`on_train_begin`); `saved_epoch`: the epoch `path`
    holds (0: none yet)."""

    def __init__(
        self,
        path: str | Path,
        model: Any,
        optimizer: Any,
        meta: Callable[[list[dict[str, Any]]], dict[str, Any]],
        best: str | Path | None = None,
        monitor: Monitor = BEST,
    ) -> None:
        self.path, self.model, self.optimizer, self.meta = Path(path), model, optimizer, meta
        self.best_path, self.monitor = (Path(best) if best is not None else None), monitor
        self.history: list[dict[str, Any]] = []
        self.saved_epoch = 0

    def on_train_begin(self, fit_state: dict[str, Any]) -> None:
        self.history = fit_state["history"]
        self.saved_epoch = self.history[-1]["epoch"] if self.history else 0

    def on_epoch_end(self, record: dict[str, Any]) -> None:
        state, optim_state = self.model.state_dict(), self.optimizer.state_dict()
        save_checkpoint(self.path, state, optim_state, self.meta(self.history))
        self.saved_epoch = record["epoch"]
        best = self.monitor.best(self.history)
        if self.best_path is not None and best is not None and best[0] == record["epoch"]:
            atomic_link(self.path, self.best_path)


class HistoryLogger(Callback):
    """history.csv and history.json in `folder` after each epoch, each replaced atomically
    (Keras' CSVLogger), from fit's history (`on_train_begin`)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder, self.history = Path(folder), []

    def on_train_begin(self, fit_state: dict[str, Any]) -> None:
        self.history = fit_state["history"]

    def on_epoch_end(self, record: dict[str, Any]) -> None:
        write_history(self.history, self.folder)


def write_history(history: Sequence[dict[str, Any]], folder: Path) -> None:
    table = io.StringIO()
    writer = csv.DictWriter(table, HISTORY_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    write_text(folder / "history.csv", table.getvalue())
    write_text(folder / "history.json", json.dumps(list(history), indent=1) + "\n")


class PlotWriter(Callback):
    """curves.png (loss and accuracy per epoch) and, given `samples` (a Dataset) with their
    `batches`, samples.png (those images with the model's predictions) in `folder`. Drawing
    takes most of a second, longer than a whole epoch of a small network on a GPU, so it
    happens after an epoch only once training has run `patience` times as long as the last
    drawing took, and always at the end. Does nothing where matplotlib is not installed."""

    def __init__(
        self,
        folder: str | Path,
        model: Any,
        samples: Any = None,
        batches: Any = None,
        patience: float = 20.0,
        clock: Callable[[], float] = time.perf_counter,
        log: Callable[[str], None] = lambda line: None,
    ) -> None:
        self.folder, self.model, self.history = Path(folder), model, []
        self.samples, self.batches, self.patience, self.clock = samples, batches, patience, clock
        self.log, self.failed = log, False
        self.drawn_epoch, self.drawing_s, self.since = 0, 0.0, clock()

    def on_train_begin(self, fit_state: dict[str, Any]) -> None:
        self.history = fit_state["history"]

    def on_epoch_end(self, record: dict[str, Any]) -> None:
        if self.clock() - self.since >= self.patience * self.drawing_s:
            self.draw()

    def on_train_end(self, history: list[dict[str, Any]]) -> None:
        if self.history and self.drawn_epoch != self.history[-1]["epoch"]:
            self.draw()

    def draw(self) -> None:
        from xpcnn import plots

        if not plots.available() or self.failed:
            return
        started = self.clock()
        try:
            plots.plot_curves(self.history, self.folder / "curves.png")
            if self.samples is not None and len(self.samples):
                predicted = predict(self.model, self.batches).argmax(axis=1)
                plots.plot_samples(
                    self.samples.images, self.samples.labels, predicted, self.samples.classes,
                    self.folder / "samples.png",
                )  # fmt: skip
        except Exception as err:  # a picture never fails a run: say so once, draw no more
            self.failed = True
            self.log(f"plots: stopped drawing ({type(err).__name__}: {err})")
        self.since = self.clock()
        self.drawn_epoch, self.drawing_s = self.history[-1]["epoch"], self.since - started
