"""Splits, channel statistics, augmentation on the device, and batches."""

from pathlib import Path

import numpy as np
import pytest

import xpcnn.data
from xpcnn.backend import Generator, asarray, to_numpy
from xpcnn.data import (
    Augment,
    Batches,
    channel_stats,
    cutout,
    horizontal_flip,
    random_crop,
    stratified_split,
    stratified_subset,
)

# ---- splits -----------------------------------------------------------------------------------

CIFAR_LABELS = np.repeat(np.arange(10), 5000)


def test_notebook_split_is_40000_10000_with_1000_per_class_in_validation():
    train, val = stratified_split(CIFAR_LABELS, 0.2, seed=42)
    assert (len(train), len(val)) == (40_000, 10_000)
    np.testing.assert_array_equal(np.bincount(CIFAR_LABELS[val]), [1000] * 10)
    np.testing.assert_array_equal(np.sort(np.concatenate([train, val])), np.arange(50_000))


def test_split_depends_only_on_labels_and_seed():
    first, second = stratified_split(CIFAR_LABELS, seed=42), stratified_split(CIFAR_LABELS, seed=42)
    np.testing.assert_array_equal(first[1], second[1])
    assert not np.array_equal(stratified_split(CIFAR_LABELS, seed=7)[1], first[1])


def test_imbalanced_split_keeps_each_class_proportion_and_the_exact_total():
    labels = np.repeat([0, 1, 2], [701, 211, 88])
    _, val = stratified_split(labels, n_val=333, seed=0)
    assert len(val) == 333
    per_class = np.bincount(labels[val])
    expected = np.array([701, 211, 88]) * 333 / 1000
    assert np.all(np.abs(per_class - expected) < 1)


def test_subset_of_n_is_stratified():
    idx = stratified_subset(CIFAR_LABELS, 1000, seed=3)
    assert len(idx) == 1000 and len(np.unique(idx)) == 1000
    np.testing.assert_array_equal(np.bincount(CIFAR_LABELS[idx]), [100] * 10)


# ---- channel statistics -----------------------------------------------------------------------


def test_channel_stats_match_a_direct_computation_across_chunks():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (37, 3, 5, 4), dtype=np.uint8)
    images[:, 1] //= 2
    mean, std = channel_stats(images, chunk=8)
    scaled = images.astype(np.float64) / 255
    np.testing.assert_allclose(mean, scaled.mean(axis=(0, 2, 3)), rtol=1e-6)
    np.testing.assert_allclose(std, scaled.std(axis=(0, 2, 3)), rtol=1e-5)
    assert mean.dtype == std.dtype == np.float32 and mean.shape == (3,)


# ---- augmentation -----------------------------------------------------------------------------


def batch(n=64, c=3, h=8, w=8, seed=0):
    """Float32 batch of distinct values on the active backend, and its host copy."""
    host = np.random.default_rng(seed).standard_normal((n, c, h, w)).astype(np.float32)
    return asarray(host), host


@pytest.mark.parametrize(
    "augment",
    [
        lambda x, rng: random_crop(x, 2, rng, mode="reflect"),
        lambda x, rng: random_crop(x, 3, rng, mode="zero"),
        lambda x, rng: horizontal_flip(x, rng),
        lambda x, rng: cutout(x, 4, rng),
        Augment(crop_padding=2, cutout=3),
    ],
)
def test_augmentation_keeps_shape_and_float32_and_is_reproducible(augment):
    x, _ = batch()
    out = augment(x, Generator(5))
    assert out.shape == x.shape and out.dtype == x.dtype
    np.testing.assert_array_equal(to_numpy(out), to_numpy(augment(x, Generator(5))))


def test_flip_mirrors_about_half_the_batch_and_leaves_the_rest():
    x, host = batch(n=2000, h=4, w=4)
    out = to_numpy(horizontal_flip(x, Generator(1)))
    flipped = np.all(out == host[..., ::-1], axis=(1, 2, 3))
    kept = np.all(out == host, axis=(1, 2, 3))
    assert np.all(flipped ^ kept)
    assert 0.45 < flipped.mean() < 0.55


@pytest.mark.parametrize(("mode", "pad_mode"), [("reflect", "reflect"), ("zero", "constant")])
def test_crop_is_a_translation_of_the_padded_image(mode, pad_mode):
    padding = 2
    # 400 draws: a fair generator of any stream misses one of the 25 offsets with probability
    # below 25·(24/25)^400 ≈ 2e-6 (in 100 draws it is about 0.4)
    x, host = batch(n=400, h=6, w=7)
    out = to_numpy(random_crop(x, padding, Generator(2), mode=mode))
    padded = np.pad(host, ((0, 0), (0, 0), (padding, padding), (padding, padding)), mode=pad_mode)
    offsets = set()
    for i in range(len(host)):  # find each image's window in its padded original
        matches = [
            (dy, dx)
            for dy in range(2 * padding + 1)
            for dx in range(2 * padding + 1)
            if np.array_equal(out[i], padded[i, :, dy : dy + 6, dx : dx + 7])
        ]
        assert len(matches) == 1, f"image {i} is no crop of its padded original"
        offsets.add(matches[0])
    assert len(offsets) == (2 * padding + 1) ** 2


def test_cutout_zeroes_one_clipped_square_per_image_and_nothing_else():
    x, host = batch(n=200, h=8, w=8)
    out = to_numpy(cutout(x, 4, Generator(3)))
    holes = out != host
    assert np.all(out[holes] == 0)
    per_image = holes.all(axis=1).sum(axis=(1, 2))  # all channels zeroed together
    assert per_image.max() == 16 and per_image.min() >= 4  # a corner clips it to 2x2 at least


def test_augmentation_and_batching_code_imports_no_array_library():
    package = Path(xpcnn.data.__file__).parent
    for module in (package / "augment.py", package / "batches.py"):
        text = module.read_text()
        for library in ("import numpy", "import cupy", "from numpy", "from cupy"):
            assert library not in text, f"{module.name} has {library!r}"


# ---- batches ----------------------------------------------------------------------------------


def tiny_dataset(n=10, c=3, h=4, w=4):
    images = np.random.default_rng(0).integers(0, 256, (n, c, h, w), dtype=np.uint8)
    return images, np.arange(n, dtype=np.int64)  # label = index: shows which image came


@pytest.mark.parametrize(("drop_last", "sizes"), [(False, [4, 4, 2]), (True, [4, 4])])
def test_an_epoch_visits_each_example_once_in_batches(drop_last, sizes):
    images, labels = tiny_dataset()
    batches = Batches(images, labels, batch_size=4, drop_last=drop_last)
    ys = [to_numpy(y) for _, y in batches.epoch(0)]
    assert len(batches) == len(sizes) and [len(y) for y in ys] == sizes
    seen = np.concatenate(ys)
    assert len(np.unique(seen)) == len(seen) == sum(sizes)
    if not drop_last:
        np.testing.assert_array_equal(np.sort(seen), labels)


def test_x_is_normalised_float32_and_y_is_int64():
    images, labels = tiny_dataset()
    mean, std = np.array([0.1, 0.5, 0.9]), np.array([0.2, 0.25, 0.3])
    batches = Batches(images, labels, batch_size=10, shuffle=False, mean=mean, std=std)
    ((x, y),) = list(batches.epoch(0))
    assert x.dtype == asarray(np.zeros(1, np.float32)).dtype and x.shape == (10, 3, 4, 4)
    assert y.dtype == asarray(np.zeros(1, np.int64)).dtype
    want = (images / 255.0 - mean[:, None, None]) / std[:, None, None]
    np.testing.assert_allclose(to_numpy(x), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(to_numpy(y), labels)


def order(batches, epoch=None):
    stream = batches if epoch is None else batches.epoch(epoch)
    return np.concatenate([to_numpy(y) for _, y in stream])


def test_epoch_order_comes_from_seed_and_epoch_alone():
    images, labels = tiny_dataset(n=50)
    run = Batches(images, labels, batch_size=8, seed=3)
    epochs = [order(run) for _ in range(3)]  # iterating runs epoch 0, 1, 2
    assert not np.array_equal(epochs[0], epochs[1])
    resumed = Batches(images, labels, batch_size=8, seed=3)
    resumed.set_epoch(2)
    np.testing.assert_array_equal(order(resumed), epochs[2])
    np.testing.assert_array_equal(order(Batches(images, labels, 8, seed=3), epoch=1), epochs[1])
    assert not np.array_equal(order(Batches(images, labels, 8, seed=4), epoch=1), epochs[1])


def test_augmented_batches_are_reproducible_per_epoch():
    images, labels = tiny_dataset(n=20, h=8, w=8)

    def epoch_4(augment):
        return [
            to_numpy(x) for x, _ in Batches(images, labels, 8, seed=1, augment=augment).epoch(4)
        ]

    first = epoch_4(Augment(crop_padding=2, cutout=2))
    again = epoch_4(Augment(crop_padding=2, cutout=2))
    plain = epoch_4(None)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, p) for a, p in zip(first, plain, strict=True))


def test_dataset_subset_keeps_classes_and_picks_rows():
    labels = np.repeat(np.arange(3), 4)
    dataset = xpcnn.data.Dataset(
        np.arange(12, dtype=np.uint8).reshape(12, 1, 1, 1), labels, list("abc")
    )
    _, val = stratified_split(dataset.labels, n_val=3, seed=0)
    subset = dataset.subset(val)
    assert subset.classes == ["a", "b", "c"] and len(subset) == 3
    np.testing.assert_array_equal(subset.images.ravel(), val)
    np.testing.assert_array_equal(subset.class_counts(), [1, 1, 1])


def test_a_constant_channel_is_centred_not_divided_by_zero():
    images = np.zeros((4, 3, 2, 2), np.uint8)
    images[:, 0] = np.arange(4, dtype=np.uint8)[:, None, None] * 60
    images[:, 1] = 9
    mean, std = channel_stats(images)
    assert std[1] == 1.0 and std[2] == 1.0 and 0 < std[0] < 1
    assert mean[1] == np.float32(9 / 255)


def test_alternating_flip_mirrors_each_image_on_every_other_epoch():
    images, labels = tiny_dataset(n=40, h=4, w=4)
    batches = Batches(images, labels, batch_size=16, seed=5, alternate_flip=True)

    def mirrored(epoch):
        """Which images (by label = index) epoch `epoch` shows mirrored."""
        flags = np.zeros(40, dtype=bool)
        for x, y in batches.epoch(epoch):
            x, y = to_numpy(x), to_numpy(y)
            plain = (images[y].astype(np.float32) / 255).astype(np.float32)
            flags[y] = ~np.all(np.isclose(x, plain), axis=(1, 2, 3))
            assert np.allclose(np.where(flags[y][:, None, None, None], x[..., ::-1], x), plain)
        return flags

    first = mirrored(0)
    assert 8 < first.sum() < 32  # a random half, drawn once
    np.testing.assert_array_equal(mirrored(1), ~first)
    np.testing.assert_array_equal(mirrored(2), first)
    np.testing.assert_array_equal(mirrored(5), ~first)
    again = Batches(images, labels, batch_size=16, seed=5, alternate_flip=True)
    assert all(np.array_equal(to_numpy(a), to_numpy(b)) for (a, _), (b, _) in
               zip(again.epoch(3), batches.epoch(3), strict=True))  # fmt: skip
