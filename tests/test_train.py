import numpy as np
import pytest

import xpcnn
from xpcnn.backend import to_numpy
from xpcnn.data import Batches
from xpcnn.models import build_model
from xpcnn.optim import SGD, Adam, OneCycle
from xpcnn.train import Callback, TrainingDiverged, evaluate, fit, predict


def synthetic(n=64, size=32, classes=10, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 3, size, size), dtype=np.uint8)
    labels = np.arange(n) % classes
    return images, labels


def test_seed_network_overfits_64_images():
    xpcnn.manual_seed(0)
    images, labels = synthetic()
    model = build_model("seed")
    train = Batches(images, labels, batch_size=16, seed=0, mean=[0.5] * 3, std=[0.25] * 3)
    history = fit(model, train, optimizer=Adam(model, lr=1e-3), epochs=25)
    scores = evaluate(
        model, Batches(images, labels, 64, shuffle=False, mean=[0.5] * 3, std=[0.25] * 3)
    )
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert scores["accuracy"] == 1.0 and scores["n"] == 64


def train_once(seed, epochs=2):
    xpcnn.manual_seed(seed)
    images, labels = synthetic(n=48, size=8)
    model = build_model("fast", image_size=8, width=8)
    train = Batches(images, labels, batch_size=16, seed=seed)
    optimizer = SGD(model, lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    history = fit(
        model,
        train,
        optimizer=optimizer,
        epochs=epochs,
        label_smoothing=0.1,
        schedule=OneCycle(0.05, total_steps=epochs * len(train)),
    )
    return model, history


def test_same_seed_gives_identical_weights():
    first, history_a = train_once(seed=3)
    second, history_b = train_once(seed=3)
    for (key, a), (_, b) in zip(
        first.state_dict().items(), second.state_dict().items(), strict=True
    ):
        assert np.array_equal(to_numpy(a), to_numpy(b)), key
    assert [r["train_loss"] for r in history_a] == [r["train_loss"] for r in history_b]


def test_different_seed_gives_different_weights():
    first, _ = train_once(seed=3)
    second, _ = train_once(seed=4)
    assert not np.array_equal(
        to_numpy(first.state_dict()["0.weight"]), to_numpy(second.state_dict()["0.weight"])
    )


def test_resuming_at_an_epoch_boundary_matches_an_uninterrupted_run():
    images, labels = synthetic(n=48, size=8)

    def run(epoch_ranges):
        xpcnn.manual_seed(1)
        model = build_model("fast", image_size=8, width=8)
        train = Batches(images, labels, batch_size=16, seed=1)
        optimizer = SGD(model, lr=0.05, momentum=0.9)
        history = []
        for start, stop in epoch_ranges:
            history = fit(
                model, train, optimizer=optimizer, epochs=stop, start_epoch=start, history=history
            )
        return model, history

    whole, history = run([(0, 3)])
    pieces, pieced_history = run([(0, 1), (1, 3)])
    assert [r["epoch"] for r in pieced_history] == [1, 2, 3]
    assert np.array_equal(
        to_numpy(whole.state_dict()["0.weight"]), to_numpy(pieces.state_dict()["0.weight"])
    )


def test_history_records_and_validation():
    xpcnn.manual_seed(0)
    images, labels = synthetic(n=32, size=8)
    model = build_model("fast", image_size=8, width=8)
    train = Batches(images, labels, batch_size=8, seed=0)
    val = Batches(images, labels, batch_size=16, shuffle=False)
    history = fit(model, train, optimizer=SGD(model, lr=0.01), epochs=2, val=val)
    assert [r["epoch"] for r in history] == [1, 2]
    for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds", "images_per_s"):
        assert np.isfinite(history[-1][key]), key


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_nan_loss_stops_training():
    xpcnn.manual_seed(0)
    images, labels = synthetic(n=32, size=8)
    model = build_model("seed", image_size=8)
    train = Batches(images, labels, batch_size=8, seed=0)
    with pytest.raises(TrainingDiverged, match="diverged"):
        fit(model, train, optimizer=SGD(model, lr=1e12), epochs=3)


def test_callback_can_stop_training_and_sees_every_batch():
    class StopAfterFirstEpoch(Callback):
        batches = 0

        def on_batch_end(self, progress):
            self.batches += 1

        def on_epoch_end(self, record):
            self.stop_training = True

    xpcnn.manual_seed(0)
    images, labels = synthetic(n=32, size=8)
    model = build_model("seed", image_size=8)
    stopper = StopAfterFirstEpoch()
    history = fit(
        model,
        Batches(images, labels, 8),
        optimizer=SGD(model, lr=0.01),
        epochs=5,
        callbacks=[stopper],
    )
    assert len(history) == 1 and stopper.batches == 4


def test_predict_returns_probabilities_in_order_and_tta_averages_six_views():
    xpcnn.manual_seed(0)
    images, labels = synthetic(n=20, size=8)
    model = build_model("seed", image_size=8)
    probabilities = predict(model, Batches(images, labels, 8, shuffle=False))
    assert probabilities.shape == (20, 10)
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    with_tta = predict(model, Batches(images, labels, 8, shuffle=False), tta=True)
    assert not np.allclose(probabilities, with_tta)
    # airbench's views, built here with NumPy's reflect padding: the image and its mirror (1/4
    # each), both shifted by one pixel up-left and down-right (1/8 each)
    padded = np.pad(images, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="reflect")
    views = [(images, 0.25), (padded[:, :, 2:, 2:], 0.125), (padded[:, :, :-2, :-2], 0.125)]
    expected = 0
    for view, weight in views:
        for image in (view, view[:, :, :, ::-1]):
            batches = Batches(np.ascontiguousarray(image), labels, 8, shuffle=False)
            expected = expected + weight * predict(model, batches)
    assert np.allclose(with_tta, expected, atol=1e-6)


def test_tta_without_mirror_averages_the_three_unmirrored_views():
    xpcnn.manual_seed(0)
    images, labels = synthetic(n=20, size=8)
    model = build_model("seed", image_size=8)
    batches = Batches(images, labels, 8, shuffle=False)
    shifts_only = predict(model, batches, tta=True, mirror=False)
    assert not np.allclose(shifts_only, predict(model, batches, tta=True))
    padded = np.pad(images, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="reflect")
    views = [(images, 0.5), (padded[:, :, 2:, 2:], 0.25), (padded[:, :, :-2, :-2], 0.25)]
    expected = sum(
        weight * predict(model, Batches(np.ascontiguousarray(view), labels, 8, shuffle=False))
        for view, weight in views
    )
    assert np.allclose(shifts_only, expected, atol=1e-6)


def test_tta_loss_stays_finite_for_confident_models():
    xpcnn.manual_seed(0)
    images, labels = synthetic(n=16, size=8)
    model = build_model("seed", image_size=8)
    model.layers[-1].params["bias"] = model.layers[-1].params["bias"] + xpcnn.backend.asarray(
        np.array([0.0] * 9 + [5000.0], dtype=np.float32)
    )
    scores = evaluate(model, Batches(images, labels, 8, shuffle=False), tta=True)
    assert np.isfinite(scores["loss"]) and scores["loss"] > 1000
