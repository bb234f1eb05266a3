"""CIFAR-10 in its official formats (generated here, a few records each) and its download."""

import hashlib
import http.server
import io
import os
import pickle
import tarfile
import threading

import numpy as np
import pytest

from xpcnn.data import CIFAR10_CLASSES, DataError, load_dataset
from xpcnn.data import cifar10 as cifar10_module
from xpcnn.data.download import download

pytestmark = pytest.mark.usefixtures("data_home")

TRAIN_FILES = [f"data_batch_{i}" for i in range(1, 6)]


def make_batches(seed=0, per_batch=3):
    """{name: (images uint8 (n, 3, 32, 32), labels int64)} for the 5 train batches and the test."""
    rng = np.random.default_rng(seed)
    return {
        name: (
            rng.integers(0, 256, (per_batch, 3, 32, 32), dtype=np.uint8),
            rng.integers(0, 10, per_batch).astype(np.int64),
        )
        for name in [*TRAIN_FILES, "test_batch"]
    }


def binary_record_bytes(images, labels):
    records = np.concatenate([labels.astype(np.uint8)[:, None], images.reshape(len(images), -1)], 1)
    return records.tobytes()


def add_bytes(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_binary_archive(path, batches):
    with tarfile.open(path, "w:gz") as tar:
        add_bytes(tar, "cifar-10-batches-bin/readme.html", b"<html></html>")
        add_bytes(tar, "cifar-10-batches-bin/batches.meta.txt", "\n".join(CIFAR10_CLASSES).encode())
        for name, (images, labels) in batches.items():
            add_bytes(tar, f"cifar-10-batches-bin/{name}.bin", binary_record_bytes(images, labels))
    return path


def python_batch_pickle(images, labels):
    """Protocol 2 naming numpy.core, as the official pickles (Python 2, NumPy 1) do."""
    batch = {
        b"batch_label": b"x",
        b"labels": labels.tolist(),
        b"data": images.reshape(len(images), -1),
    }
    return pickle.dumps(batch, protocol=2).replace(b"cnumpy._core.", b"cnumpy.core.")


def write_python_archive(path, batches, replace=None):
    with tarfile.open(path, "w:gz") as tar:
        meta = {b"label_names": [c.encode() for c in CIFAR10_CLASSES], b"num_cases_per_batch": 3}
        add_bytes(tar, "cifar-10-batches-py/batches.meta", pickle.dumps(meta, protocol=2))
        for name, (images, labels) in batches.items():
            data = (replace or {}).get(name) or python_batch_pickle(images, labels)
            add_bytes(tar, f"cifar-10-batches-py/{name}", data)
    return path


def expected(batches, names):
    return (
        np.concatenate([batches[n][0] for n in names]),
        np.concatenate([batches[n][1] for n in names]),
    )


@pytest.mark.parametrize("split", ["train", "test", "all"])
def test_binary_archive_parses_back_exactly(tmp_path, split):
    batches = make_batches()
    archive = write_binary_archive(tmp_path / "cifar-10-binary.tar.gz", batches)
    names = {"train": TRAIN_FILES, "test": ["test_batch"], "all": [*TRAIN_FILES, "test_batch"]}
    images, labels = expected(batches, names[split])
    dataset = load_dataset(archive, split=split)
    np.testing.assert_array_equal(dataset.images, images)
    np.testing.assert_array_equal(dataset.labels, labels)
    assert dataset.images.dtype == np.uint8 and dataset.labels.dtype == np.int64
    assert dataset.classes == CIFAR10_CLASSES and dataset.has_test


def test_extracted_binary_folder_parses_back_exactly(tmp_path):
    batches = make_batches()
    archive = write_binary_archive(tmp_path / "cifar-10-binary.tar.gz", batches)
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path / "extracted", filter="data")
    dataset = load_dataset(tmp_path / "extracted" / "cifar-10-batches-bin", split="test")
    np.testing.assert_array_equal(dataset.images, batches["test_batch"][0])
    np.testing.assert_array_equal(dataset.labels, batches["test_batch"][1])
    assert len(load_dataset(tmp_path / "extracted", split="train")) == 15  # the parent works too


def test_python_archive_parses_back_exactly(tmp_path):
    batches = make_batches(seed=1)
    archive = write_python_archive(tmp_path / "cifar-10-python.tar.gz", batches)
    dataset = load_dataset(archive, split="train")
    images, labels = expected(batches, TRAIN_FILES)
    np.testing.assert_array_equal(dataset.images, images)
    np.testing.assert_array_equal(dataset.labels, labels)
    assert dataset.classes == CIFAR10_CLASSES


class RunsShell:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_python_batch_with_a_malicious_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    evil = pickle.dumps({b"data": RunsShell(f"touch {marker}"), b"labels": [0]}, protocol=2)
    archive = write_python_archive(
        tmp_path / "cifar-10-python.tar.gz", make_batches(), replace={"data_batch_2": evil}
    )
    with pytest.raises(
        DataError, match=r"data_batch_2: unsafe or corrupt pickle .*refusing global"
    ):
        load_dataset(archive)
    assert not marker.exists()


def test_truncated_binary_batch_names_the_file(tmp_path):
    batches = make_batches()
    archive = tmp_path / "cifar.tar"
    with tarfile.open(archive, "w") as tar:
        for name, (images, labels) in batches.items():
            add_bytes(
                tar, f"cifar-10-batches-bin/{name}.bin", binary_record_bytes(images, labels)[:-5]
            )
    with pytest.raises(DataError, match=r"data_batch_1.bin: .* not a whole number of 3073-byte"):
        load_dataset(archive)


def test_truncated_archive_is_a_data_error(tmp_path):
    archive = write_binary_archive(tmp_path / "cifar-10-binary.tar.gz", make_batches(per_batch=50))
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(DataError, match=r"cut.tar.gz: truncated or corrupt archive"):
        load_dataset(cut)


def test_unknown_split_is_refused(tmp_path):
    with pytest.raises(DataError, match=r"split='val'"):
        load_dataset(tmp_path, split="val")


# ---- download against a local HTTP server --------------------------------------------------


class Server:
    """Serves `payload` at /file; mode 'ok', 'drop' (every response stops halfway) or
    'drop-once' (only the first)."""

    def __init__(self):
        self.payload, self.mode, self.requests = b"", "ok", 0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests += 1
                drop = server.mode == "drop" or (
                    server.mode == "drop-once" and server.requests == 1
                )
                self.send_response(200)
                self.send_header("Content-Length", str(len(server.payload)))
                self.end_headers()
                self.wfile.write(
                    server.payload[: len(server.payload) // 2] if drop else server.payload
                )
                self.wfile.flush()
                self.close_connection = True

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/file"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()


@pytest.fixture
def server():
    srv = Server()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


def test_download_writes_the_file_after_its_checksum(server, tmp_path):
    server.payload = os.urandom(100_000)
    dest = download(server.url, tmp_path / "f.bin", hashlib.md5(server.payload).hexdigest(), False)
    assert dest.read_bytes() == server.payload
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]


def test_download_with_wrong_checksum_retries_once_and_leaves_nothing(server, tmp_path):
    server.payload = os.urandom(10_000)
    with pytest.raises(DataError, match=r"checksum mismatch \(md5 [0-9a-f]{32}, expected 0{32}\)"):
        download(server.url, tmp_path / "f.bin", "0" * 32, progress=False)
    assert server.requests == 2
    assert list(tmp_path.iterdir()) == []


def test_download_dropped_mid_file_is_retried(server, tmp_path):
    server.payload, server.mode = os.urandom(200_000), "drop-once"
    dest = download(server.url, tmp_path / "f.bin", hashlib.md5(server.payload).hexdigest(), False)
    assert server.requests == 2 and dest.read_bytes() == server.payload


def test_download_dropped_twice_fails_and_leaves_nothing(server, tmp_path):
    server.payload, server.mode = os.urandom(200_000), "drop"
    with pytest.raises(DataError, match=r"download interrupted after 100000 of 200000 bytes"):
        download(server.url, tmp_path / "f.bin", hashlib.md5(server.payload).hexdigest(), False)
    assert list(tmp_path.iterdir()) == []


def test_download_failure_keeps_an_existing_file(server, tmp_path):
    (tmp_path / "f.bin").write_bytes(b"earlier bytes")
    server.payload, server.mode = os.urandom(1000), "drop"
    with pytest.raises(DataError):
        download(server.url, tmp_path / "f.bin", hashlib.md5(server.payload).hexdigest(), False)
    assert (tmp_path / "f.bin").read_bytes() == b"earlier bytes"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_cifar10_is_downloaded_once_then_read_from_the_cache(
    server, tmp_path, data_home, monkeypatch
):
    batches = make_batches()
    server.payload = write_binary_archive(tmp_path / "served.tar.gz", batches).read_bytes()
    monkeypatch.setenv("XPCNN_CIFAR10_URL", server.url)
    monkeypatch.setattr(cifar10_module, "CIFAR10_MD5", hashlib.md5(server.payload).hexdigest())

    first = load_dataset("cifar10", split="test", progress=False)
    np.testing.assert_array_equal(first.images, batches["test_batch"][0])
    assert (data_home / "cifar-10-binary.tar.gz").read_bytes() == server.payload
    assert server.requests == 1

    second = load_dataset("cifar10", split="test", progress=False)
    np.testing.assert_array_equal(second.images, first.images)
    assert any("cache" in note for note in second.notes)
    for cache in (data_home / "decoded").iterdir():  # without decoded caches: the archive
        cache.unlink()
    assert len(load_dataset("cifar10", split="train", progress=False)) == 15
    assert server.requests == 1


def test_cifar10_download_failure_leaves_the_data_home_empty(server, data_home, monkeypatch):
    server.payload, server.mode = os.urandom(5000), "drop"
    monkeypatch.setenv("XPCNN_CIFAR10_URL", server.url)
    with pytest.raises(DataError, match=r"download interrupted"):
        load_dataset("cifar10", progress=False)
    assert not data_home.exists() or list(data_home.rglob("*")) == []
