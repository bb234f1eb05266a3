"""Figures of a run with matplotlib's Agg backend — an optional extra (`pip install 'xpcnn[plot]'`).

`available()` says whether matplotlib imports; every function writes one PNG atomically
(`files.atomic_file`), so a viewer never sees a half-written picture.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from xpcnn.files import atomic_file

MISSING = "matplotlib is not installed: plots are skipped (pip install 'xpcnn[plot]')"


@cache
def available() -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot  # noqa: F401
    except ImportError:
        return False
    return True


def _pyplot() -> Any:
    if not available():
        raise RuntimeError(MISSING)
    import matplotlib.pyplot as plt

    return plt


def printable(text: str) -> str:
    """Text matplotlib can draw: a name decoded from non-UTF-8 bytes (surrogate escapes, as in
    a folder named in Latin-1) gets replacement characters instead of failing the drawing."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")


def _save(fig: Any, path: str | os.PathLike) -> Path:
    try:
        with atomic_file(path) as out:
            fig.savefig(out, format="png", dpi=110, bbox_inches="tight")
    finally:
        _pyplot().close(fig)
    return Path(path)


def plot_curves(history: Sequence[dict[str, float]], path: str | os.PathLike) -> Path:
    """Loss and accuracy against epoch, train and validation side by side."""
    plt = _pyplot()
    epochs = [r["epoch"] for r in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, title in ((ax_loss, "loss", "cross-entropy loss"), (ax_acc, "acc", "accuracy")):
        for split, style in (("train", "o-"), ("val", "s--")):
            values = [r.get(f"{split}_{key}") for r in history]
            if any(v is not None for v in values):
                ax.plot(epochs, values, style, label=split, markersize=4)
        ax.set(title=title, xlabel="epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    ax_acc.set_ylim(0, 1)
    if epochs:
        for ax in (ax_loss, ax_acc):
            ax.set_xticks(range(1, max(epochs) + 1, max(1, max(epochs) // 10)))
    return _save(fig, path)


def plot_samples(
    images: np.ndarray,
    labels: np.ndarray,
    predicted: np.ndarray,
    classes: Sequence[str],
    path: str | os.PathLike,
    columns: int = 6,
) -> Path:
    """A grid of uint8 (N, C, H, W) images titled "predicted (true)": green when right, red
    when wrong."""
    plt = _pyplot()
    classes = [printable(c) for c in classes]
    rows = max(1, -(-len(images) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(1.8 * columns, 2.0 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, image, true, guess in zip(axes.ravel(), images, labels, predicted, strict=False):
        ax.imshow(np.transpose(image, (1, 2, 0)).squeeze(), interpolation="nearest")
        right = int(true) == int(guess)
        title = classes[guess] if right else f"{classes[guess]}\n(true: {classes[true]})"
        ax.set_title(title, fontsize=8, color="tab:green" if right else "tab:red")
    fig.suptitle("validation images: predicted label (true label when wrong)", fontsize=10)
    return _save(fig, path)


def plot_confusion(
    matrix: np.ndarray, classes: Sequence[str], path: str | os.PathLike, title: str = ""
) -> Path:
    """Counts of (true, predicted) pairs; colour is the fraction of each true class."""
    plt = _pyplot()
    classes, title = [printable(c) for c in classes], printable(title)
    k = len(classes)
    fractions = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    size = max(4.0, 0.55 * k + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(fractions, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(k), classes, rotation=45, ha="right")
    ax.set_yticks(range(k), classes)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    if k <= 20:
        for i in range(k):
            for j in range(k):
                color = "white" if fractions[i, j] > 0.5 else "black"
                ax.text(j, i, str(int(matrix[i, j])), ha="center", va="center", color=color,
                        fontsize=7)  # fmt: skip
    return _save(fig, path)
