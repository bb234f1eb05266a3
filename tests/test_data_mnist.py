"""MNIST and Fashion-MNIST as IDX files (written here, a few images each) and their download."""

import dataclasses
import gzip
import hashlib
import http.server
import struct
import threading

import numpy as np
import pytest

from xpcnn.data import DataError, load_dataset
from xpcnn.data import mnist as mnist_module

pytestmark = pytest.mark.usefixtures("data_home")


def idx_bytes(array, magic=None):
    """An IDX ubyte file: magic 0x0000080<ndim>, big-endian uint32 dimensions, then the bytes."""
    magic = 0x0800 | array.ndim if magic is None else magic
    return struct.pack(f">I{array.ndim}I", magic, *array.shape) + array.astype(np.uint8).tobytes()


def make_split(seed, n):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n)


def write_idx_folder(folder, train=(0, 6), test=(1, 4), gz=True):
    """The four files of an MNIST release in `folder`; returns {split: (images, labels)}."""
    folder.mkdir(parents=True, exist_ok=True)
    splits = {"train": make_split(*train), "test": make_split(*test)}
    for split, (images, labels) in splits.items():
        for stem, array in zip(mnist_module.FILES[split], (images, labels), strict=True):
            data = idx_bytes(array)
            (folder / (stem + ".gz" if gz else stem)).write_bytes(
                gzip.compress(data) if gz else data
            )
    return splits


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("split", ["train", "test"])
def test_idx_folder_parses_back_exactly(tmp_path, split, gz):
    splits = write_idx_folder(tmp_path / "digits", gz=gz)
    dataset = load_dataset(tmp_path / "digits", split=split)
    np.testing.assert_array_equal(dataset.images, splits[split][0][:, None])
    np.testing.assert_array_equal(dataset.labels, splits[split][1])
    assert dataset.images.shape[1:] == (1, 28, 28) and dataset.images.dtype == np.uint8
    assert dataset.classes == [str(d) for d in range(10)] and dataset.has_test


def test_idx_folder_all_is_train_then_test(tmp_path):
    write_idx_folder(tmp_path / "digits")
    assert len(load_dataset(tmp_path / "digits", split="all")) == 10


def test_a_fashion_folder_gets_fashion_class_names(tmp_path):
    write_idx_folder(tmp_path / "fashion-mnist")
    classes = load_dataset(tmp_path / "fashion-mnist", split="test").classes
    assert classes[0] == "T-shirt/top" and classes[9] == "Ankle boot"


@pytest.mark.parametrize("split", ["train", "all"])
def test_digits_are_not_mirrored_clothes_are(tmp_path, split):
    write_idx_folder(tmp_path / "digits")
    write_idx_folder(tmp_path / "fashion-mnist")
    assert load_dataset(tmp_path / "digits", split=split).mirrored is False
    assert load_dataset(tmp_path / "fashion-mnist", split=split).mirrored is True


def test_training_on_digits_crops_but_never_flips(tmp_path):
    from xpcnn.runs.training import prepare

    write_idx_folder(tmp_path / "digits", train=(0, 40))
    lines = []
    start = prepare({"data": str(tmp_path / "digits"), "model": "seed"}, None, lines.append)
    augment = start.train_batches.augment
    assert augment.crop_padding == 4 and augment.flip is False
    log = "\n".join(lines)
    assert "not mirror images of their class: no flips in augmentation or TTA" in log
    assert "augment crop 4; backend" in log  # the recipe line promises no flip


def replace_file(folder, stem, data):
    (folder / (stem + ".gz")).write_bytes(gzip.compress(data))


@pytest.mark.parametrize(
    ("stem", "data", "message"),
    [
        ("train-images-idx3-ubyte", idx_bytes(np.zeros((2, 28, 28)), magic=0x0801),
         r"train-images-idx3-ubyte.gz: magic is 0x00000801, expected 0x00000803"),
        ("train-labels-idx1-ubyte", idx_bytes(np.zeros((6, 28, 28))),
         r"train-labels-idx1-ubyte.gz: magic is 0x00000803, expected 0x00000801"),
        ("train-images-idx3-ubyte", b"\x00\x00",
         r"train-images-idx3-ubyte.gz: magic is a short file"),
        ("train-images-idx3-ubyte", struct.pack(">II", 0x0803, 6),
         r"train-images-idx3-ubyte.gz: header ends before its 3 dimensions"),
        ("train-images-idx3-ubyte", idx_bytes(np.zeros((6, 28, 28)))[:-1],
         r"train-images-idx3-ubyte.gz: fewer bytes than its header's 6x28x28"),
        ("train-images-idx3-ubyte", idx_bytes(np.zeros((6, 28, 28))) + b"\x00",
         r"train-images-idx3-ubyte.gz: more bytes than its header's 6x28x28"),
        ("train-images-idx3-ubyte", struct.pack(">IIII", 0x0803, 6, 0, 28),
         r"train-images-idx3-ubyte.gz: image size 0x28"),
        ("train-labels-idx1-ubyte", idx_bytes(np.arange(5)),
         r"train-labels-idx1-ubyte.gz: 5 labels for 6 images"),
        ("train-labels-idx1-ubyte", idx_bytes(np.array([0, 1, 2, 3, 4, 10])),
         r"train-labels-idx1-ubyte.gz: label 10, expected 0 to 9"),
    ],
)  # fmt: skip
def test_bad_idx_file_is_one_line_naming_file_and_field(tmp_path, stem, data, message):
    write_idx_folder(tmp_path / "digits")
    replace_file(tmp_path / "digits", stem, data)
    with pytest.raises(DataError, match=message) as err:
        load_dataset(tmp_path / "digits", split="train")
    assert "\n" not in str(err.value)


def test_header_over_the_data_budget_is_refused_before_reading(tmp_path, monkeypatch):
    write_idx_folder(tmp_path / "digits")
    huge = struct.pack(">IIII", 0x0803, 4_000_000_000, 28, 28)  # 3 TB declared, 16 bytes stored
    replace_file(tmp_path / "digits", "train-images-idx3-ubyte", huge)
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.gz.* MB is more than the"):
        load_dataset(tmp_path / "digits", split="train")


def test_header_over_the_image_budget_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("XPCNN_MAX_IMAGE_MP", "0.0001")
    write_idx_folder(tmp_path / "digits")
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.gz: a 28x28 image is more"):
        load_dataset(tmp_path / "digits", split="train")


def test_corrupt_gzip_names_the_file(tmp_path):
    write_idx_folder(tmp_path / "digits")
    file = tmp_path / "digits" / "t10k-images-idx3-ubyte.gz"
    file.write_bytes(file.read_bytes()[:30])
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte.gz: corrupt gzip stream"):
        load_dataset(tmp_path / "digits", split="test")


def test_a_folder_missing_the_labels_says_which(tmp_path):
    write_idx_folder(tmp_path / "digits")
    (tmp_path / "digits" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"digits: no t10k-labels-idx1-ubyte\(.gz\)"):
        load_dataset(tmp_path / "digits", split="test")


# ---- download against a local HTTP server --------------------------------------------------


@pytest.fixture
def files_server():
    """Serves {name: bytes} at /<name>; `requests` lists the paths asked for."""
    files, requests = {}, []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            requests.append(self.path)
            data = files.get(self.path.lstrip("/"))
            self.send_response(200 if data is not None else 404)
            self.send_header("Content-Length", str(len(data or b"")))
            self.end_headers()
            self.wfile.write(data or b"")

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, args=(0.02,), daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/", files, requests
    httpd.shutdown()
    httpd.server_close()


@pytest.mark.parametrize(
    ("name", "release"),
    [("mnist", mnist_module.MNIST), ("fashion-mnist", mnist_module.FASHION_MNIST)],
)
def test_release_is_downloaded_once_then_read_from_the_data_home(
    files_server, tmp_path, data_home, monkeypatch, name, release
):
    url, files, requests = files_server
    splits = write_idx_folder(tmp_path / "served")
    files.update({p.name: p.read_bytes() for p in (tmp_path / "served").iterdir()})
    md5 = {stem: hashlib.md5(files[stem + ".gz"]).hexdigest() for stem in release.md5}
    monkeypatch.setitem(mnist_module.RELEASES, name, dataclasses.replace(release, md5=md5))
    monkeypatch.setenv(release.url_variable, url)

    test = load_dataset(name, split="test", progress=False)
    np.testing.assert_array_equal(test.images[:, 0], splits["test"][0])
    assert test.classes == list(release.classes)
    assert sorted(p.name for p in (data_home / release.name).iterdir()) == sorted(files)
    assert len(requests) == 4

    assert len(load_dataset(name, split="train", progress=False)) == 6
    assert len(requests) == 4  # nothing fetched twice


def test_download_with_a_wrong_checksum_saves_nothing(
    files_server, tmp_path, data_home, monkeypatch
):
    url, files, _ = files_server
    write_idx_folder(tmp_path / "served")
    files.update({p.name: p.read_bytes() for p in (tmp_path / "served").iterdir()})
    monkeypatch.setenv("XPCNN_MNIST_URL", url)  # the official MD5s: the served files differ
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.gz: checksum mismatch"):
        load_dataset("mnist", progress=False)
    assert list((data_home / "mnist").iterdir()) == []


@pytest.mark.parametrize(
    ("model", "stem"),
    [("seed", "Conv2D(1, 32"), pytest.param("resnet20", "Conv2D(1, 16", marks=pytest.mark.slow)],
)
def test_grey_idx_folder_trains_a_preset_end_to_end(tmp_path, monkeypatch, capsys, model, stem):
    from xpcnn.cli import main

    write_idx_folder(tmp_path / "mnist-folder", train=(0, 80), test=(1, 20))
    monkeypatch.chdir(tmp_path)
    argv = ["train", "--data", "mnist-folder", "--model", model, "--epochs", "1", "--limit", "64"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"{stem}, kernel_size=(3, 3)" in out and "image of shape (1, 28, 28)" in out
    assert "(20 images)" in out  # scored on the folder's own t10k split


def test_a_digits_run_predicts_grey_files_without_mirror_views(tmp_path):
    from PIL import Image

    from xpcnn.runs import load_run, predict_images, restore_model, train
    from xpcnn.runs.scoring import eval_batches
    from xpcnn.train import predict

    splits = write_idx_folder(tmp_path / "digits", train=(0, 40), test=(1, 3))
    train({"data": str(tmp_path / "digits"), "epochs": 1, "batch_size": 16}, tmp_path / "run")
    checkpoint, record = load_run(tmp_path / "run" / "checkpoint.npz")
    assert record.mirrored is False
    digits = splits["test"][0]
    files = []
    for i, digit in enumerate(digits):
        files.append(tmp_path / f"{i}.png")
        Image.fromarray(digit).save(files[-1])  # mode "L": read back as RGB, made grey again
    predicted = predict_images(tmp_path / "run" / "checkpoint.npz", files, top=10, tta=True)
    model = restore_model(checkpoint, record)
    test = load_dataset(tmp_path / "digits", split="test")
    batches = eval_batches(test, record.mean, record.std)
    expected = predict(model, batches, tta=True, mirror=False)
    for (_, top), probabilities in zip(predicted, expected, strict=True):
        for label, p in top:
            assert p == pytest.approx(float(probabilities[int(label)]), abs=1e-6)
