"""One definition of a score: a run's final score (`runs.scoring.score`) is validation's
(`train.evaluate`), with the confusion matrix and per-class accuracy from the same predictions."""

import numpy as np
import pytest

from xpcnn.backend import manual_seed, to_numpy
from xpcnn.data import Dataset
from xpcnn.models import build_model
from xpcnn.runs.scoring import eval_batches, score
from xpcnn.train import evaluate, predict


@pytest.mark.parametrize("tta", [False, True])
def test_the_final_score_is_validations_score(tta):
    rng = np.random.default_rng(0)
    dataset = Dataset(rng.integers(0, 256, (37, 3, 8, 8), dtype=np.uint8),
                      rng.integers(0, 3, 37).astype(np.int64), ["a", "b", "c"])  # fmt: skip
    mean, std = np.full(3, 0.5, np.float32), np.full(3, 0.25, np.float32)
    manual_seed(0)
    model = build_model("seed", num_classes=3, image_size=8)
    final = score(model, dataset, mean, std, tta=tta, batch_size=16)
    during = evaluate(model, eval_batches(dataset, mean, std, batch_size=16), tta=tta)
    assert (final["loss"], final["accuracy"], final["n"]) == (
        during["loss"], during["accuracy"], during["n"],
    )  # fmt: skip
    expected = predict(model, eval_batches(dataset, mean, std, batch_size=16), tta=tta)
    assert np.array_equal(final["predicted"], expected.argmax(axis=1))
    confusion = final["confusion"]
    assert confusion.sum() == 37 and np.trace(confusion) == round(final["accuracy"] * 37)
    assert to_numpy(confusion).shape == (3, 3)
