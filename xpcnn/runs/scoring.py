"""Scoring a model: accuracy, loss, per-class accuracy and confusion on a labelled dataset;
evaluating a checkpoint on a split of its data; classifying image files."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from xpcnn.data import Batches, Dataset, load_dataset, train_val_indices
from xpcnn.data.images import read_image_files, resize_images, to_grey
from xpcnn.runs.record import RunRecord, load_run, restore_model
from xpcnn.train import evaluate, predict

EVAL_BATCH = 256  # images per evaluation batch: no gradients are kept, so it can be large
SPLITS = ("test", "val", "train", "all")


class ScoringError(ValueError):
    """Data that cannot be scored as asked: the argument at fault (`what`: "split" or "data"),
    its `value`, and what was `expected`."""

    def __init__(self, what: str, value: Any, expected: str) -> None:
        self.what, self.value, self.expected = what, value, expected
        super().__init__(f"{what}={value!r}: {expected}")


def eval_batches(dataset: Dataset, mean: Any, std: Any, batch_size: int = EVAL_BATCH) -> Batches:
    return Batches(dataset.images, dataset.labels, batch_size, shuffle=False, mean=mean, std=std)


def score(
    model: Any, dataset: Dataset, mean: Any, std: Any, tta: bool = False,
    batch_size: int = EVAL_BATCH,
) -> dict[str, Any]:  # fmt: skip
    """Accuracy, mean cross-entropy (as validation during training computes them:
    `train.evaluate`), per-class accuracy and the confusion matrix (true × predicted) of `model`
    on a labelled dataset."""
    if len(dataset) == 0:
        raise ScoringError("data", dataset.source, "has no images to score")
    batches = eval_batches(dataset, mean, std, batch_size)
    scores = evaluate(model, batches, tta, predictions=True, mirror=dataset.mirrored)
    labels, predicted = np.asarray(dataset.labels, dtype=np.int64), scores["predicted"]
    k = max(len(dataset.classes), int(predicted.max()) + 1, int(labels.max()) + 1)
    confusion = np.bincount(labels * k + predicted, minlength=k * k).reshape(k, k)
    per_class = {
        dataset.classes[c]: float(confusion[c, c] / confusion[c].sum())
        for c in range(min(k, len(dataset.classes)))
        if confusion[c].sum()
    }
    return {
        "accuracy": scores["accuracy"],
        "loss": scores["loss"],
        "n": scores["n"],
        "per_class": per_class,
        "confusion": confusion,
        "predicted": predicted,
    }


def evaluate_checkpoint(
    checkpoint_path: str | os.PathLike,
    data: str | None = None,
    split: str | None = None,
    *,
    tta: bool | None = None,
    batch_size: int = EVAL_BATCH,
    out: str | os.PathLike | None = None,
    log: Callable[[str], None] = lambda line: None,
) -> dict[str, Any]:
    """Score a checkpoint on a split of `data` (default: the data it was trained on).

    split: "test" (the default when the source has one), "all" (the default for an image folder
        or archive: all of it), or "val"/"train", re-derived from the run's seed, validation
        fraction and limit. tta: None uses the run's recipe. Writes confusion.png to `out`
        (default: the checkpoint's folder) when matplotlib is installed.
    """
    from xpcnn import plots

    checkpoint, record = load_run(checkpoint_path)
    data = data if data is not None else record.config.data
    tta = record.config.tta if tta is None else tta
    dataset, split = _eval_dataset(record, data, split)
    for note in dataset.notes:
        log(f"data: {note}")
    dataset = fit_to_record(dataset, record)
    model = restore_model(checkpoint, record)
    result = score(model, dataset, record.mean, record.std, tta=tta, batch_size=batch_size)
    result.update(split=split, data=str(data), tta=tta)
    folder = Path(out) if out is not None else checkpoint.path.parent
    if plots.available():
        folder.mkdir(parents=True, exist_ok=True)
        result["confusion_png"] = plots.plot_confusion(
            result["confusion"], record.classes, folder / "confusion.png",
            title=f"{Path(str(data)).name} {split}{' +TTA' if tta else ''}, "
            f"accuracy {result['accuracy']:.3f}",
        )  # fmt: skip
    else:
        log(plots.MISSING)
    return result


def _eval_dataset(record: RunRecord, data: str, split: str | None) -> tuple[Dataset, str]:
    size = record.config.image_size
    if split not in (None, *SPLITS):
        raise ScoringError("split", split, f"expected one of {', '.join(SPLITS)}")
    if split in (None, "test"):
        dataset = load_dataset(data, split="test", size=size)
        if dataset.has_test:
            return dataset, "test"
        if split == "test":
            raise ScoringError(
                "split", split, f"{data} has no test split (an image folder or archive is "
                "one set); use all, val or train",
            )  # fmt: skip
        return dataset, "all"
    if split == "all":
        return load_dataset(data, split="all", size=size), "all"
    dataset = load_dataset(data, split="train", size=size)
    if len(dataset) != record.data_size:
        raise ScoringError(
            "split", split, f"{data} has {len(dataset)} training images but the run was "
            f"trained on {record.data_size}; the split can only be re-derived from the same data",
        )  # fmt: skip
    config = record.config
    if split == "val" and config.val_split <= 0:
        raise ScoringError("split", split, "the run was trained without a validation split")
    train_idx, val_idx = train_val_indices(
        dataset.labels, config.val_split, config.seed, config.limit
    )
    return dataset.subset(val_idx if split == "val" else train_idx), split


def fit_to_record(dataset: Dataset, record: RunRecord) -> Dataset:
    """Labels renumbered to the run's classes, images resized to its size; a class the run does
    not know or another number of channels is a ScoringError."""
    known = list(record.classes)
    if dataset.classes != known:
        strangers = [c for c in dataset.classes if c not in known]
        if strangers:
            raise ScoringError(
                "data",
                dataset.source,
                f"class {strangers[0]!r} is not one the run knows ({', '.join(known)})",
            )
        relabel = np.array([known.index(c) for c in dataset.classes], dtype=np.int64)
        dataset = replace(dataset, labels=relabel[dataset.labels], classes=known)
    channels = record.model_args["in_channels"]
    if dataset.images.shape[1] != channels:
        raise ScoringError(
            "data",
            dataset.source,
            f"images have {dataset.images.shape[1]} channels, the run {channels}",
        )
    size = record.image_size
    if dataset.images.shape[2:] != (size, size):
        dataset = replace(dataset, images=resize_images(dataset.images, (size, size)))
    return dataset


def predict_images(
    checkpoint_path: str | os.PathLike, images: Sequence[str | os.PathLike], top: int = 3,
    tta: bool | None = None,
) -> list[tuple[str, list[tuple[str, float]]]]:  # fmt: skip
    """For each image file: its `top` most probable classes with their probabilities. tta: None
    uses the run's recipe (without mirror views when the run's data had none: digits)."""
    checkpoint, record = load_run(checkpoint_path)
    pixels = read_image_files(images, (record.image_size, record.image_size))
    if record.model_args["in_channels"] == 1:  # a run on grey images (MNIST): their luminance
        pixels = to_grey(pixels)
    model = restore_model(checkpoint, record)
    dataset = Dataset(pixels, np.zeros(len(pixels), np.int64), list(record.classes))
    tta = record.config.tta if tta is None else tta
    batches = eval_batches(dataset, record.mean, record.std)
    probabilities = predict(model, batches, tta=tta, mirror=record.mirrored)
    results = []
    for name, p in zip(images, probabilities, strict=True):
        best = np.argsort(-p, kind="stable")[:top]
        results.append((str(name), [(record.classes[c], float(p[c])) for c in best]))
    return results
