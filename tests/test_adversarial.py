"""Bad input through the command line, one case (at least) per class of failure: each ends in
exit 2 and exactly one line on stderr, no traceback, nothing already on disk changed — or, where
the input is valid after all, in a run that works. Memory cases run under an address-space limit
so that a regression fails instead of swapping."""

import io
import json
import os
import pickle
import resource
import shutil
import struct
import subprocess
import sys
import tarfile
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from cli_harness import write_folder
from PIL import Image

MEMORY_LIMIT = 3 * 2**30  # bytes of address space for the child: far below a bomb's claim


def run(*args, cwd: Path, env: dict | None = None, limit_memory: bool = False):
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))

    environment = {**os.environ, "XPCNN_DATA": str(cwd / "home"), "PYTHONWARNINGS": "ignore",
                   **(env or {})}  # fmt: skip
    return subprocess.run(
        [sys.executable, "-m", "xpcnn", *map(str, args)], cwd=cwd, env=environment,
        capture_output=True, text=True, timeout=120, preexec_fn=limit if limit_memory else None,
    )  # fmt: skip


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under `root` with its size and time, but the data home (`home/`): a decoded
    cache of data that loaded is new, not something on disk that changed."""
    return {
        str(p.relative_to(root)): (p.lstat().st_size, p.lstat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if not p.is_dir() and p.relative_to(root).parts[0] != "home"
    }


def refused(result, *expected: str) -> None:
    """Exit 2, one line on stderr naming what was expected, no traceback."""
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("xpcnn: error: "), result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    for text in expected:
        assert text in lines[0], lines[0]


def refused_and_unchanged(tmp_path: Path, *args, expected=(), **kwargs):
    before = snapshot(tmp_path)
    result = run(*args, cwd=tmp_path, **kwargs)
    refused(result, *expected)
    assert snapshot(tmp_path) == before
    return result


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A finished 1-epoch run on 16x16 images: its run folder."""
    work = tmp_path_factory.mktemp("trained")
    folder = write_folder(work / "colours", per_class=8)
    result = run("train", "--data", folder, "--epochs", 1, "--batch-size", 8, "--out",
                 work / "run", cwd=work)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    return work / "run"


def png_claiming(width: int, height: int) -> bytes:
    """A PNG header claiming width x height pixels, with (almost) no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b""))
            + chunk(b"IEND", b""))  # fmt: skip


def png(size=(8, 8), colour=(200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "PNG")
    return buffer.getvalue()


def folder_with(tmp_path: Path, extra: dict[str, bytes], per_class: int = 3) -> Path:
    root = tmp_path / "images"
    for label in ("a", "b"):
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            (root / label / f"{i}.png").write_bytes(png(colour=(40 + 100 * (label == "a"), 9, 9)))
    for name, data in extra.items():
        (root / name).write_bytes(data)
    return root


# 1. Memory -------------------------------------------------------------------------------------


def test_a_tar_member_claiming_gigabytes_is_refused_before_reading(tmp_path):
    archive = tmp_path / "claims.tar"
    with tarfile.open(archive, "w") as tf:
        info = tarfile.TarInfo("a/x.png")
        info.size = 6 * 2**30
        tf.addfile(info)  # the header alone: the 6 GiB are never there
    refused_and_unchanged(tmp_path, "train", "--data", archive, "--out", tmp_path / "run",
                          expected=("claims.tar",), limit_memory=True)  # fmt: skip


def test_a_zip_that_expands_past_the_file_budget_is_refused(tmp_path):
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a/0.png", png())
        zf.writestr("a/x.png", bytes(3 * 2**20))  # 3 MiB of zeros, a few KB compressed
    refused_and_unchanged(
        tmp_path, "train", "--data", archive, "--out", tmp_path / "run",
        expected=("bomb.zip:a/x.png", "XPCNN_MAX_FILE_MB"), env={"XPCNN_MAX_FILE_MB": "1"},
        limit_memory=True,
    )  # fmt: skip


def test_images_over_the_pixel_budget_are_refused_before_decoding(tmp_path):
    root = folder_with(tmp_path, {"a/big.png": png((1100, 1000))})
    refused_and_unchanged(
        tmp_path, "train", "--data", root, "--image-size", 8, "--out", tmp_path / "run",
        expected=("big.png", "1000x1100", "XPCNN_MAX_IMAGE_MP"), env={"XPCNN_MAX_IMAGE_MP": "1"},
        limit_memory=True,
    )  # fmt: skip


def test_an_absurd_image_size_is_refused_before_loading(tmp_path):
    root = folder_with(tmp_path, {})
    refused_and_unchanged(tmp_path, "train", "--data", root, "--image-size", 100000, "--out",
                          tmp_path / "run", expected=("--image-size 100000", "megapixels"),
                          limit_memory=True)  # fmt: skip


def test_an_npz_header_claiming_2_to_the_40_elements_is_refused(tmp_path):
    forged = tmp_path / "forged.npz"
    header = np.lib.format.header_data_from_array_1_0(np.zeros(1, np.float32))
    header["shape"] = (2**40,)
    member = io.BytesIO()
    np.lib.format.write_array_header_1_0(member, header)
    with zipfile.ZipFile(forged, "w") as zf:
        zf.writestr("meta.npy", member.getvalue() + b"\0" * 16)
    refused_and_unchanged(tmp_path, "eval", "--checkpoint", forged,
                          expected=("forged.npz", "header claims"), limit_memory=True)  # fmt: skip


def test_a_device_file_as_data_is_refused(tmp_path):
    refused_and_unchanged(tmp_path, "train", "--data", "/dev/zero", "--out", tmp_path / "run",
                          expected=("/dev/zero", "not a regular file"))  # fmt: skip


# 2. Pillow's bomb guard ------------------------------------------------------------------------


def test_a_png_claiming_ten_gigapixels_is_one_line_in_train_eval_and_predict(tmp_path, trained):
    bomb = png_claiming(100000, 100000)
    root = folder_with(tmp_path, {"a/bomb.png": bomb})
    refused_and_unchanged(tmp_path, "train", "--data", root, "--out", tmp_path / "run",
                          expected=("bomb.png",))  # fmt: skip
    refused_and_unchanged(tmp_path, "eval", "--checkpoint", trained / "checkpoint.npz",
                          "--data", root, "--out", tmp_path / "plots",
                          expected=("bomb.png",))  # fmt: skip
    (tmp_path / "bomb.png").write_bytes(bomb)
    refused_and_unchanged(tmp_path, "predict", "--checkpoint", trained / "checkpoint.npz",
                          tmp_path / "bomb.png", expected=("IMAGE", "bomb.png"))  # fmt: skip


# 3. zip features -------------------------------------------------------------------------------


def _patched_zip(tmp_path: Path, name: str, local: tuple[int, bytes], central: tuple[int, bytes]):
    archive = tmp_path / name
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("a/0.png", png())
        zf.writestr("b/0.png", png())
    data = bytearray(archive.read_bytes())
    for signature, (offset, value) in ((b"PK\x03\x04", local), (b"PK\x01\x02", central)):
        start = data.find(signature)
        data[start + offset : start + offset + len(value)] = value
    archive.write_bytes(bytes(data))
    return archive


def test_an_encrypted_zip_member_is_one_line(tmp_path):
    archive = _patched_zip(tmp_path, "secret.zip", (6, b"\x01\x00"), (8, b"\x01\x00"))
    refused_and_unchanged(tmp_path, "train", "--data", archive, "--out", tmp_path / "run",
                          expected=("secret.zip", "encrypted"))  # fmt: skip


def test_an_unknown_zip_compression_method_is_one_line(tmp_path):
    archive = _patched_zip(tmp_path, "odd.zip", (8, b"\x63\x00"), (10, b"\x63\x00"))
    refused_and_unchanged(tmp_path, "train", "--data", archive, "--out", tmp_path / "run",
                          expected=("odd.zip",))  # fmt: skip


# 4. Non-regular files --------------------------------------------------------------------------


def test_a_fifo_and_a_dangling_link_among_the_images_are_skipped_not_waited_on(tmp_path):
    root = folder_with(tmp_path, {}, per_class=4)
    os.mkfifo(root / "a" / "fifo.png")
    (root / "b" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    started = time.monotonic()
    result = run("train", "--data", root, "--epochs", 1, "--out", tmp_path / "run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert time.monotonic() - started < 60
    assert "skipped 2 image names that are not regular files or dangling links" in result.stdout


def test_predict_on_a_folder_says_it_is_a_folder(tmp_path, trained):
    refused_and_unchanged(tmp_path, "predict", "--checkpoint", trained / "checkpoint.npz",
                          tmp_path, expected=("is a folder",))  # fmt: skip


# 5. CIFAR-10 python batches --------------------------------------------------------------------


def _cifar_python(tmp_path: Path, labels, label_names=None) -> Path:
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    data = np.zeros((4, 3072), np.uint8)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": data, b"labels": labels if name == "data_batch_1" else [0, 1, 0, 1]}
        (root / name).write_bytes(pickle.dumps(batch, protocol=2))
    names = label_names if label_names is not None else [f"c{i}".encode() for i in range(10)]
    (root / "batches.meta").write_bytes(pickle.dumps({b"label_names": names}, protocol=2))
    return root


@pytest.mark.parametrize(
    "labels, label_names, expected",
    [
        (7, None, "'labels' is a int"),
        (np.array([2**64 - 1, 0, 0, 0], np.uint64), None, "'labels' are not integers"),
        ([0, 1, "x", 0], None, "'labels' are not integers"),
        ([0, 1, 0, 1], {b"a": 1}, "'label_names' is not a list"),
    ],
    ids=["int", "uint64-wraps", "strings", "names-dict"],
)
def test_a_malformed_cifar_python_batch_is_one_line(tmp_path, labels, label_names, expected):
    root = _cifar_python(tmp_path, labels, label_names)
    refused_and_unchanged(tmp_path, "train", "--data", root, "--out", tmp_path / "run",
                          expected=(expected,))  # fmt: skip


def test_non_utf8_keys_in_a_cifar_batch_do_not_crash(tmp_path):
    root = _cifar_python(tmp_path, [0, 1, 0, 1])
    batch = pickle.loads((root / "data_batch_2").read_bytes())
    batch[b"\xff\xfe"] = 1
    (root / "data_batch_2").write_bytes(pickle.dumps(batch, protocol=2))
    result = run("train", "--data", root, "--epochs", 1, "--limit", 8, "--out", tmp_path / "run",
                 cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]


# 6. Checkpoints --------------------------------------------------------------------------------


def _forged(trained: Path, target: Path, change) -> Path:
    with np.load(trained / "checkpoint.npz", allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    meta = json.loads(str(arrays.pop("meta")[()]))
    change(meta, arrays)
    np.savez(target, meta=np.array(json.dumps(meta)), **arrays)
    return target


@pytest.mark.parametrize(
    "change, expected",
    [
        (lambda m, a: m.pop("epoch"), "epoch: is missing"),
        (lambda m, a: m.update(config="fast"), "config: expected dict"),
        (lambda m, a: m.update(classes=[1, 2, 3]), "classes:"),
        (lambda m, a: m.update(mean=[0.5]), "mean:"),
        (lambda m, a: m["model"]["kwargs"].update(image_size=2), "model.kwargs.image_size"),
        (lambda m, a: m.update(history=[{}]), "history"),
        (lambda m, a: a.update({"model/0.weight": np.zeros(3, np.float32)}), "do not fit"),
    ],
    ids=["no-epoch", "config-str", "classes-int", "mean-short", "tiny-size", "history", "weights"],
)
def test_a_forged_checkpoint_is_one_line_in_eval_and_predict(tmp_path, trained, change, expected):
    forged = _forged(trained, tmp_path / "forged.npz", change)
    image = tmp_path / "x.png"
    image.write_bytes(png())
    refused_and_unchanged(tmp_path, "eval", "--checkpoint", forged, expected=(expected,))
    refused_and_unchanged(tmp_path, "predict", "--checkpoint", forged, image,
                          expected=(expected,))  # fmt: skip


def test_a_npy_file_as_checkpoint_is_one_line(tmp_path):
    np.save(tmp_path / "weights.npy", np.zeros(3))
    refused_and_unchanged(tmp_path, "eval", "--checkpoint", tmp_path / "weights.npy",
                          expected=("weights.npy", "not a readable checkpoint"))  # fmt: skip


def test_a_checkpoint_holding_objects_never_advises_allow_pickle(tmp_path):
    np.savez(tmp_path / "objects.npz", meta=np.array([{"a": 1}], dtype=object))
    result = refused_and_unchanged(tmp_path, "eval", "--checkpoint", tmp_path / "objects.npz")
    assert "allow_pickle" not in result.stderr and "Python objects" in result.stderr


def test_optimizer_state_of_the_wrong_shape_is_refused_on_resume(tmp_path, trained):
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    wrong = {"optim/momentum.0.weight": np.zeros(2, np.float32)}
    _forged(trained, out / "checkpoint.npz", lambda m, a: a.update(wrong))
    refused_and_unchanged(tmp_path, "train", "--out", out, "--resume", "--epochs", 2,
                          expected=("--resume", "optim: does not fit"))  # fmt: skip


def test_json_nested_100000_deep_is_refused(tmp_path):
    np.savez(tmp_path / "deep.npz", meta=np.array('{"format": "xpcnn-checkpoint", "a": '
                                                  + "[" * 100000 + "]" * 100000 + "}"))  # fmt: skip
    refused_and_unchanged(tmp_path, "eval", "--checkpoint", tmp_path / "deep.npz",
                          expected=("nests deeper",))  # fmt: skip


# 8. Decoded cache ------------------------------------------------------------------------------


def test_a_damaged_decoded_cache_is_rebuilt_and_replaced(tmp_path):
    root = folder_with(tmp_path, {}, per_class=4)
    archive = tmp_path / "images.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for file in root.rglob("*.png"):
            zf.write(file, file.relative_to(root))
    first = run("train", "--data", archive, "--epochs", 1, "--out", tmp_path / "r1", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    (cache,) = (tmp_path / "home" / "decoded").glob("*.npz")
    cache.write_bytes(cache.read_bytes()[:300])  # truncated
    second = run("train", "--data", archive, "--epochs", 1, "--out", tmp_path / "r2", cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "was unreadable" in second.stdout and "rebuilt" in second.stdout
    third = run("train", "--data", archive, "--epochs", 1, "--out", tmp_path / "r3", cwd=tmp_path)
    assert "decoded images from the cache" in third.stdout  # the cache was replaced, whole


# 9. Two runs, one folder -----------------------------------------------------------------------


def test_a_second_run_in_a_folder_in_use_is_refused_naming_the_holder(tmp_path):
    root = write_folder(tmp_path / "noise", per_class=40, noise=True)
    out = tmp_path / "run"
    log = tmp_path / "first.log"
    environment = {**os.environ, "XPCNN_DATA": str(tmp_path / "home")}
    with open(log, "w") as stderr:
        first = subprocess.Popen(
            [sys.executable, "-m", "xpcnn", "train", "--data", str(root), "--epochs", "30",
             "--batch-size", "4", "--out", str(out)], cwd=tmp_path, env=environment,
            stdout=subprocess.DEVNULL, stderr=stderr,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 60
            while "epoch 1/30" not in log.read_text():
                assert first.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.05)
            second = run("train", "--data", root, "--epochs", 1, "--force", "--out", out,
                         cwd=tmp_path)  # fmt: skip
            refused(second, "in use by another run", f"process {first.pid}")
        finally:
            first.terminate()
            first.wait()


# 10-12. Sizes, seeds, names --------------------------------------------------------------------


def test_images_too_small_for_the_preset_name_its_minimum(tmp_path):
    root = tmp_path / "tiny"
    for label in ("a", "b"):
        (root / label).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (2, 2), (9 * i, 0, 0)).save(root / label / f"{i}.png")
    refused_and_unchanged(tmp_path, "train", "--data", root, "--out", tmp_path / "run",
                          expected=("2x2", "seed preset needs at least 4x4"))  # fmt: skip
    refused_and_unchanged(
        tmp_path,
        "train",
        "--data",
        root,
        "--model",
        "fast",
        "--image-size",
        3,
        "--out",
        tmp_path / "run",
        expected=("--image-size 3", "at least 8"),
    )


def test_a_negative_seed_is_refused_by_the_parser(tmp_path):
    refused_and_unchanged(tmp_path, "train", "--seed", "-1", expected=("--seed",))


def test_class_names_that_are_not_utf8_still_train_and_draw(tmp_path):
    root = Path(os.fsdecode(os.fsencode(tmp_path) + b"/names"))
    for raw in (b"caf\xe9", b"tea"):
        folder = Path(os.fsdecode(os.fsencode(root) + b"/" + raw))
        folder.mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (8, 8), (60 * i, 10, 200 * (raw == b"tea"))).save(folder / f"{i}.png")
    result = run("train", "--data", root, "--epochs", 1, "--out", tmp_path / "run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert {p.name for p in (tmp_path / "run").glob("*.png")} == {
        "curves.png", "samples.png", "confusion.png",
    }  # fmt: skip
