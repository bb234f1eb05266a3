"""CIFAR-100's python release (generated here, a few records each) and its download."""

import hashlib
import os
import pickle
import tarfile

import numpy as np
import pytest
from test_data_cifar10 import RunsShell, Server, add_bytes

from xpcnn.data import DataError, load_dataset
from xpcnn.data import cifar100 as cifar100_module

pytestmark = pytest.mark.usefixtures("data_home")

FINE = [f"fine{i}" for i in range(100)]
COARSE = [f"coarse{i}" for i in range(20)]


def make_split(seed, n):
    rng = np.random.default_rng(seed)
    return {
        "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        "fine_labels": rng.integers(0, 100, n).tolist(),
        "coarse_labels": rng.integers(0, 20, n).tolist(),
    }


def batch_pickle(split):
    """Protocol 2 with bytes keys, naming numpy.core, as the official (Python 2) pickles do."""
    batch = {b"filenames": [b"x.png"] * len(split["data"]), b"batch_label": b"training batch"}
    batch.update({k.encode(): v for k, v in split.items()})
    return pickle.dumps(batch, protocol=2).replace(b"cnumpy._core.", b"cnumpy.core.")


def meta_pickle(fine=FINE, coarse=COARSE):
    meta = {b"fine_label_names": [n.encode() for n in fine],
            b"coarse_label_names": [n.encode() for n in coarse]}  # fmt: skip
    return pickle.dumps(meta, protocol=2)


def write_archive(path, splits, replace=None):
    members = {"meta": meta_pickle(), **{s: batch_pickle(v) for s, v in splits.items()}}
    members.update(replace or {})
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            add_bytes(tar, f"cifar-100-python/{name}", data)
    return path


@pytest.fixture
def splits():
    return {"train": make_split(0, 7), "test": make_split(1, 3)}


@pytest.mark.parametrize("split", ["train", "test"])
def test_archive_parses_back_exactly_with_fine_labels(tmp_path, splits, split):
    archive = write_archive(tmp_path / "cifar-100-python.tar.gz", splits)
    dataset = load_dataset(archive, split=split)
    np.testing.assert_array_equal(dataset.images, splits[split]["data"].reshape(-1, 3, 32, 32))
    np.testing.assert_array_equal(dataset.labels, splits[split]["fine_labels"])
    assert dataset.classes == FINE and dataset.has_test and dataset.labels.dtype == np.int64


def test_extracted_folder_parses_back_exactly(tmp_path, splits):
    archive = write_archive(tmp_path / "cifar-100-python.tar.gz", splits)
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path / "extracted", filter="data")
    dataset = load_dataset(tmp_path / "extracted", split="all")
    assert len(dataset) == 10 and dataset.classes == FINE
    np.testing.assert_array_equal(dataset.labels[7:], splits["test"]["fine_labels"])


def test_malicious_pickle_is_refused(tmp_path, splits):
    marker = tmp_path / "pwned"
    evil = pickle.dumps({b"data": RunsShell(f"touch {marker}")}, protocol=2)
    archive = write_archive(tmp_path / "c.tar.gz", splits, replace={"train": evil})
    with pytest.raises(DataError, match=r"c.tar.gz:train: unsafe or corrupt pickle .*refusing"):
        load_dataset(archive)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("member", "data", "message"),
    [
        ("train", {"fine_labels": [0] * 6}, r"train: 6 'fine_labels' for 7 images"),
        ("train", {"fine_labels": [100] * 7}, r"train: 'fine_labels' runs from 100 to 100, exp"),
        ("train", {"fine_labels": ["a"] * 7}, r"train: 'fine_labels' is not a list of integers"),
        ("train", {"data": np.zeros((7, 3071), np.uint8)}, r"train: 'data' is \(7, 3071\), exp"),
        ("train", {"data": np.zeros((7, 3072), np.float32)}, r"train: 'data' is not a uint8"),
        ("meta", FINE[:99], r"meta: 'fine_label_names' has 99 names, expected 100"),
    ],
)  # fmt: skip
def test_bad_member_is_one_line_naming_file_and_field(tmp_path, splits, member, data, message):
    if member == "meta":
        bad = meta_pickle(fine=data)
    else:
        bad = batch_pickle({**splits["train"], **data})
    archive = write_archive(tmp_path / "c.tar.gz", splits, replace={member: bad})
    with pytest.raises(DataError, match=message) as err:
        load_dataset(archive)
    assert "\n" not in str(err.value)


def test_archive_without_the_test_batch_says_so(tmp_path, splits):
    archive = write_archive(
        tmp_path / "c.tar.gz", {"train": splits["train"], "test": splits["test"]}
    )
    with tarfile.open(archive) as tar, tarfile.open(tmp_path / "d.tar.gz", "w:gz") as out:
        for m in tar.getmembers():
            if not m.name.endswith("/test"):
                out.addfile(m, tar.extractfile(m))
    with pytest.raises(DataError, match=r"d.tar.gz: no test \(expected the CIFAR-100 python"):
        load_dataset(tmp_path / "d.tar.gz", split="test")


# ---- download against a local HTTP server --------------------------------------------------


@pytest.fixture
def server():
    srv = Server()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


def test_cifar100_is_downloaded_once_then_fine_and_coarse_read_from_it(
    server, tmp_path, splits, data_home, monkeypatch
):
    server.payload = write_archive(tmp_path / "served.tar.gz", splits).read_bytes()
    monkeypatch.setenv("XPCNN_CIFAR100_URL", server.url)
    monkeypatch.setattr(cifar100_module, "CIFAR100_MD5", hashlib.md5(server.payload).hexdigest())

    fine = load_dataset("cifar100", split="test", progress=False)
    np.testing.assert_array_equal(fine.labels, splits["test"]["fine_labels"])
    assert fine.classes == FINE
    assert (data_home / "cifar-100-python.tar.gz").read_bytes() == server.payload

    coarse = load_dataset("cifar100-coarse", split="test", progress=False)
    np.testing.assert_array_equal(coarse.labels, splits["test"]["coarse_labels"])
    np.testing.assert_array_equal(coarse.images, fine.images)
    assert coarse.classes == COARSE and server.requests == 1

    again = load_dataset("cifar100", split="test", progress=False)  # its own decoded cache
    assert again.classes == FINE and any("cache" in note for note in again.notes)
    assert server.requests == 1


def test_cifar100_with_a_wrong_checksum_saves_nothing(server, data_home, monkeypatch):
    server.payload = os.urandom(5000)
    monkeypatch.setenv("XPCNN_CIFAR100_URL", server.url)
    with pytest.raises(DataError, match=r"checksum mismatch"):
        load_dataset("cifar100", progress=False)
    assert not data_home.exists() or list(data_home.rglob("*")) == []
