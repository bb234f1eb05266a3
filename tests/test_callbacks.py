"""The run-folder writers as callbacks: what they write after which epoch."""

import json

import numpy as np
import pytest

import xpcnn
from xpcnn.callbacks import ModelCheckpoint, PlotWriter
from xpcnn.models import build_model
from xpcnn.optim import SGD


def row(epoch, val_acc):
    return {"epoch": epoch, "train_loss": 1.0, "train_acc": 0.5, "lr": 0.1, "seconds": 1.0,
            "images_per_s": 1.0, "val_loss": 1.0, "val_acc": val_acc}  # fmt: skip


def fit_history(callback):
    """The history list fit owns and hands over at the start (it appends each epoch's row before
    `on_epoch_end`)."""
    history = []
    callback.on_train_begin({"epochs": 4, "start_epoch": 0, "history": history})
    return history


def saved_epoch(path):
    with np.load(path, allow_pickle=False) as npz:
        return json.loads(str(npz["meta"][()]))["epoch"]


def test_best_holds_the_best_epoch_while_the_checkpoint_moves_on(tmp_path):
    xpcnn.manual_seed(0)
    model = build_model("seed", num_classes=2, image_size=8)
    writer = ModelCheckpoint(
        tmp_path / "checkpoint.npz", model, SGD(model, lr=0.1),
        lambda history: {"epoch": history[-1]["epoch"]}, best=tmp_path / "best.npz",
    )  # fmt: skip
    history = fit_history(writer)
    for epoch, acc in enumerate([0.5, 0.8, 0.7], start=1):
        history.append(row(epoch, acc))
        writer.on_epoch_end(history[-1])
    assert saved_epoch(tmp_path / "checkpoint.npz") == 3
    assert saved_epoch(tmp_path / "best.npz") == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.npz", "checkpoint.npz"]


def test_plots_wait_while_drawing_would_outweigh_training(tmp_path):
    pytest.importorskip("matplotlib")
    times = iter([0.0, 0.0, 0.0, 1.0, 2.0, 3.0, 30.0, 30.0, 31.0])
    xpcnn.manual_seed(0)
    model = build_model("seed", num_classes=2, image_size=8)
    writer = PlotWriter(tmp_path, model, clock=lambda: next(times))
    history = fit_history(writer)

    def epoch_end(epoch):
        history.append(row(epoch, 0.5))
        writer.on_epoch_end(history[-1])

    epoch_end(1)  # drawn: nothing measured yet (0 s -> 1 s)
    assert writer.drawn_epoch == 1 and writer.drawing_s == 1.0
    epoch_end(2)  # 1 s of training < 20 x 1 s of drawing: waits
    epoch_end(3)
    assert writer.drawn_epoch == 1
    epoch_end(4)  # 29 s since the last drawing: drawn
    assert writer.drawn_epoch == 4
    writer.on_train_end(writer.history)  # nothing new since
    assert (tmp_path / "curves.png").is_file()
