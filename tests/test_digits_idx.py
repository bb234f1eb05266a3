"""benchmarks/digits_idx.py: scikit-learn's digits as an MNIST folder (synthetic images here)."""

import gzip
import importlib.util
import struct
from pathlib import Path

import numpy as np
import pytest

from xpcnn.data import load_dataset
from xpcnn.data.mnist import FILES

pytestmark = pytest.mark.usefixtures("data_home")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "digits_idx.py"


@pytest.fixture(scope="module")
def digits_idx():
    """The script as a module (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location("digits_idx", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_split(seed, n):
    rng = np.random.default_rng(seed)
    images_8x8 = rng.integers(0, 256, (n, 8, 8), dtype=np.uint8)
    return images_8x8, rng.integers(0, 10, n, dtype=np.uint8)


def write_folder(digits_idx, folder):
    """The four .gz files of an MNIST release, upsampled from random 8x8 images."""
    folder.mkdir()
    splits = {}
    for split, seed, n in (("train", 0, 7), ("test", 1, 3)):
        images_8x8, labels = make_split(seed, n)
        images = digits_idx.upsample(images_8x8)
        for stem, array in zip(FILES[split], (images, labels), strict=True):
            digits_idx.write_idx(folder / f"{stem}.gz", array)
        splits[split] = images, labels
    return splits


@pytest.mark.parametrize("split", ["train", "test"])
def test_written_folder_loads_back_the_exact_pixels_and_labels(digits_idx, tmp_path, split):
    written = write_folder(digits_idx, tmp_path / "digits")[split]
    dataset = load_dataset(tmp_path / "digits", split=split)
    np.testing.assert_array_equal(dataset.images, written[0][:, None])
    np.testing.assert_array_equal(dataset.labels, written[1])
    assert dataset.images.shape[1:] == (1, 28, 28)
    assert dataset.classes == [str(d) for d in range(10)] and dataset.has_test


@pytest.mark.parametrize(("array", "magic"), [
    (np.arange(5, dtype=np.uint8), 0x00000801),
    (np.arange(24, dtype=np.uint8).reshape(2, 3, 4), 0x00000803),
])  # fmt: skip
def test_write_idx_writes_magic_big_endian_dims_then_bytes(digits_idx, tmp_path, array, magic):
    digits_idx.write_idx(tmp_path / "a.gz", array)
    expected = struct.pack(f">I{array.ndim}I", magic, *array.shape) + array.tobytes()
    assert gzip.decompress((tmp_path / "a.gz").read_bytes()) == expected


def test_write_idx_writes_plain_bytes_without_gz_suffix(digits_idx, tmp_path):
    digits_idx.write_idx(tmp_path / "labels", np.array([7, 1], dtype=np.uint8))
    assert (tmp_path / "labels").read_bytes() == b"\x00\x00\x08\x01\x00\x00\x00\x02\x07\x01"


def test_write_idx_gives_the_same_bytes_every_time(digits_idx, tmp_path):
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    digits_idx.write_idx(tmp_path / "a.gz", array)
    first = (tmp_path / "a.gz").read_bytes()
    digits_idx.write_idx(tmp_path / "a.gz", array)
    assert (tmp_path / "a.gz").read_bytes() == first


@pytest.mark.parametrize("array", [
    np.zeros((2, 3), dtype=np.uint8),
    np.zeros(4, dtype=np.int64),
])  # fmt: skip
def test_write_idx_refuses_what_idx_ubyte_cannot_hold(digits_idx, tmp_path, array):
    with pytest.raises(ValueError, match="uint8 array of 1 or 3 dimensions"):
        digits_idx.write_idx(tmp_path / "a.gz", array)
    assert list(tmp_path.iterdir()) == []


def test_upsample_puts_each_digit_in_a_20x20_box_with_a_4_pixel_zero_border(digits_idx):
    images = digits_idx.upsample(np.full((3, 8, 8), 200, dtype=np.uint8))
    assert images.shape == (3, 28, 28) and images.dtype == np.uint8
    border = np.ones((28, 28), dtype=bool)
    border[4:24, 4:24] = False
    assert images[:, border].max() == 0
    assert (images[:, 4:24, 4:24] == 200).all()


def test_upsample_resizes_smoothly_between_neighbouring_pixels(digits_idx):
    image = np.zeros((1, 8, 8), dtype=np.uint8)
    image[0, :, 4:] = 255  # a vertical edge between columns 3 and 4
    row = digits_idx.upsample(image)[0, 14, 4:24]
    assert row[0] == 0 and row[-1] == 255
    assert (np.diff(row.astype(int)) >= 0).all()  # no ringing
    assert ((row > 0) & (row < 255)).sum() >= 2  # grey levels across the edge


def test_to_grey_maps_16_block_counts_onto_0_to_255(digits_idx):
    grey = digits_idx.to_grey(np.array([0.0, 8.0, 16.0]))
    assert grey.dtype == np.uint8 and grey.tolist() == [0, 128, 255]


def test_stratified_split_takes_each_class_in_proportion(digits_idx):
    labels = np.repeat(np.arange(3), [50, 30, 20])
    train, test = digits_idx.stratified_split(labels, test=10, seed=0)
    assert np.bincount(labels[test]).tolist() == [5, 3, 2]
    assert sorted(np.concatenate([train, test]).tolist()) == list(range(100))


def test_stratified_split_gives_the_leftover_places_to_the_largest_remainders(digits_idx):
    labels = np.repeat(np.arange(3), [4, 3, 3])  # 5 test: shares 2, 1.5, 1.5
    _, test = digits_idx.stratified_split(labels, test=5, seed=0)
    assert len(test) == 5 and np.bincount(labels[test]).tolist() == [2, 2, 1]


def test_stratified_split_depends_on_the_seed_only(digits_idx):
    labels = np.repeat(np.arange(10), 20)
    first = digits_idx.stratified_split(labels, test=40, seed=3)[1]
    again = digits_idx.stratified_split(labels, test=40, seed=3)[1]
    other = digits_idx.stratified_split(labels, test=40, seed=4)[1]
    assert first.tolist() == again.tolist() and first.tolist() != other.tolist()


@pytest.mark.slow  # imports scikit-learn: seconds
def test_main_writes_sklearns_1797_digits_as_an_mnist_folder(digits_idx, tmp_path):
    pytest.importorskip("sklearn")
    digits_idx.main([str(tmp_path / "digits"), "--test", "400", "--seed", "0"])
    train = load_dataset(tmp_path / "digits", split="train")
    test = load_dataset(tmp_path / "digits", split="test")
    assert (len(train), len(test)) == (1397, 400)
    assert np.bincount(test.labels).min() >= 39 and np.bincount(test.labels).max() <= 41
    assert train.images[:, :, :4].max() == 0 and train.images.max() == 255
