"""Image folders as a folder, tar, tar.gz and zip: class order, sizes, decoded cache, bad input."""

import io
import os
import tarfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from xpcnn.data import CIFAR10_CLASSES, DataError, load_dataset
from xpcnn.data import images as images_module
from xpcnn.data import sources as sources_module

pytestmark = pytest.mark.usefixtures("data_home")

CLASSES = ["zebra", "ant", "cat"]  # folder creation order; labels follow sorted order


def png_bytes(pixels):
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def make_tree(per_class=3, size=(6, 5), seed=0):
    """{'<class>/<k>.png': pixels (H, W, 3)}, distinct random pixels per image."""
    rng = np.random.default_rng(seed)
    return {
        f"{cls}/{k:02d}.png": rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        for cls in CLASSES
        for k in range(per_class)
    }


def write_folder(root, tree):
    for name, pixels in tree.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(png_bytes(pixels))
    return root


def write_archive(path, tree, top=""):
    members = {top + name: png_bytes(pixels) for name, pixels in reversed(tree.items())}
    if path.suffix == ".zip":
        with zipfile.ZipFile(path, "w") as zf:
            for name, data in members.items():
                zf.writestr(name, data)
    else:
        with tarfile.open(path, "w:gz" if path.name.endswith("gz") else "w") as tar:
            for name, data in members.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def expected(tree):
    """(images (N, 3, H, W), labels) in (class, file name) order."""
    names = sorted(tree, key=lambda n: tuple(n.split("/")))
    classes = sorted(CLASSES)
    images = np.stack([tree[n].transpose(2, 0, 1) for n in names])
    return images, np.array([classes.index(n.split("/")[0]) for n in names])


@pytest.mark.parametrize("kind", ["folder", "tar", "tar.gz", "tgz", "zip", "train/ in tar.gz"])
def test_image_tree_loads_with_sorted_classes(tmp_path, kind):
    tree = make_tree()
    if kind == "folder":
        source = write_folder(tmp_path / "root", tree)
    elif kind == "train/ in tar.gz":
        source = write_archive(tmp_path / "data.tar.gz", tree, top="train/")
    else:
        source = write_archive(tmp_path / f"data.{kind}", tree)
    dataset = load_dataset(source)
    images, labels = expected(tree)
    assert dataset.classes == ["ant", "cat", "zebra"]
    np.testing.assert_array_equal(dataset.images, images)
    np.testing.assert_array_equal(dataset.labels, labels)
    assert dataset.images.dtype == np.uint8 and dataset.labels.dtype == np.int64
    assert not dataset.has_test


def test_every_split_of_an_image_folder_is_all_of_it(tmp_path):
    source = write_folder(tmp_path / "root", make_tree())
    sizes = {split: len(load_dataset(source, split=split)) for split in ("train", "test", "all")}
    assert sizes == {"train": 9, "test": 9, "all": 9}


def test_grey_rgba_and_bmp_images_become_rgb(tmp_path):
    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    Image.new("L", (4, 4), 77).save(root / "a" / "1-grey.png")
    Image.new("RGBA", (4, 4), (1, 2, 3, 4)).save(root / "a" / "2-rgba.png")
    Image.new("RGB", (4, 4), (5, 6, 7)).save(root / "a" / "3-rgb.BMP")
    dataset = load_dataset(root)
    assert dataset.images.shape == (3, 3, 4, 4)
    np.testing.assert_array_equal(dataset.images[:, :, 0, 0], [[77, 77, 77], [1, 2, 3], [5, 6, 7]])


def test_images_outside_class_folders_are_left_out_with_a_note(tmp_path):
    root = write_folder(tmp_path / "root", make_tree())
    (root / "stray.png").write_bytes(png_bytes(np.zeros((6, 5, 3), np.uint8)))
    dataset = load_dataset(root)
    assert len(dataset) == 9 and "ignored 1 images outside the class folders" in dataset.notes


def test_mixed_sizes_without_a_size_name_the_odd_image(tmp_path):
    tree = make_tree()
    tree["cat/99.png"] = np.zeros((7, 9, 3), np.uint8)
    source = write_folder(tmp_path / "root", tree)
    with pytest.raises(DataError, match=r"cat/99.png: is 7x9 but the first image is 6x5"):
        load_dataset(source)


def test_size_resizes_every_image_and_says_so(tmp_path):
    tree = make_tree()
    tree["cat/99.png"] = np.zeros((7, 9, 3), np.uint8)
    dataset = load_dataset(write_folder(tmp_path / "root", tree), size=(6, 5))
    assert dataset.images.shape == (10, 3, 6, 5)
    assert "resized 1 of 10 images to 6x5" in dataset.notes[0]
    assert load_dataset(tmp_path / "root", size=4).images.shape == (10, 3, 4, 4)


def test_second_load_comes_from_the_decoded_cache(tmp_path, monkeypatch, data_home):
    source = write_archive(tmp_path / "data.tar.gz", make_tree())
    first = load_dataset(source)

    def no_decoding(*args):
        raise AssertionError("decoded again")

    monkeypatch.setattr(sources_module, "read_image_tree", no_decoding)
    second = load_dataset(source)
    np.testing.assert_array_equal(second.images, first.images)
    assert second.classes == first.classes and not second.has_test
    assert [p.suffix for p in (data_home / "decoded").iterdir()] == [".npz"]


def test_a_changed_source_is_decoded_again(tmp_path, data_home):
    source = write_archive(tmp_path / "data.zip", make_tree(seed=0))
    load_dataset(source)
    write_archive(source, make_tree(seed=1))
    os.utime(source, ns=(time.time_ns(), time.time_ns() + 10**9))
    np.testing.assert_array_equal(load_dataset(source).images, expected(make_tree(seed=1))[0])
    assert len(list((data_home / "decoded").iterdir())) == 1  # the outdated cache is gone


def test_a_corrupt_cache_is_rebuilt(tmp_path, data_home):
    source = write_archive(tmp_path / "data.tar", make_tree())
    first = load_dataset(source)
    (cache,) = (data_home / "decoded").iterdir()
    cache.write_bytes(b"not an npz")
    np.testing.assert_array_equal(load_dataset(source).images, first.images)
    assert np.load(cache)["images"].shape == first.images.shape


def test_a_failed_cache_write_leaves_no_partial_file(tmp_path, monkeypatch, data_home):
    source = write_archive(tmp_path / "data.tar", make_tree())

    def disk_full(file, **arrays):
        file.write(b"half an npz")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sources_module.np, "savez", disk_full)
    dataset = load_dataset(source)
    assert len(dataset) == 9 and "could not write the cache" in dataset.notes[-1]
    assert list((data_home / "decoded").iterdir()) == []


def test_decoding_in_worker_chunks_keeps_order_and_names_bad_files(tmp_path, monkeypatch):
    monkeypatch.setattr(images_module, "_CHUNK", 2)  # several chunks: the worker-process path
    tree = make_tree(per_class=4)
    source = write_folder(tmp_path / "root", tree)
    dataset = load_dataset(source)
    np.testing.assert_array_equal(dataset.images, expected(tree)[0])
    (source / "zebra" / "02.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(DataError, match=r"zebra/02.png: unreadable image"):
        load_dataset(source)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda root: (root / "a.png").write_bytes(png_bytes(np.zeros((2, 2, 3), np.uint8))),
         r"has no class folders \(expected ROOT/<class>/\*.png"),
        (lambda root: (root / "cat").mkdir() or (root / "cat" / "notes.txt").write_text("x"),
         r"no images \(expected ROOT/<class>/"),
        (lambda root: (root / "cat").mkdir() or (root / "cat" / "a.jpg").write_bytes(b"JFIF?"),
         r"cat/a.jpg: unreadable image"),
        (lambda root: (root / "cat").mkdir() or (root / "cat" / "cut.png").write_bytes(
            png_bytes(np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8))[:300]),
         r"cat/cut.png: unreadable image \(image file is truncated"),
    ],
)  # fmt: skip
def test_bad_folders_give_one_line_errors(tmp_path, make, message):
    root = tmp_path / "root"
    root.mkdir()
    make(root)
    with pytest.raises(DataError, match=message) as caught:
        load_dataset(root)
    assert "\n" not in str(caught.value)


def test_unknown_archive_type_is_refused(tmp_path):
    (tmp_path / "data.rar").write_bytes(b"Rar!\x1a\x07\x00 not supported")
    with pytest.raises(DataError, match=r"data.rar: unknown archive type"):
        load_dataset(tmp_path / "data.rar")


def test_missing_source_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match=r"nowhere: no such file or folder"):
        load_dataset(tmp_path / "nowhere")


def tar_with(path, info, data=b""):
    with tarfile.open(path, "w") as tar:
        good = tarfile.TarInfo("train/cat/0.png")
        payload = png_bytes(np.zeros((2, 2, 3), np.uint8))
        good.size = len(payload)
        tar.addfile(good, io.BytesIO(payload))
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize(
    ("member", "message"),
    [("../evil.png", r"'\.\./evil.png' points outside"),
     ("train/../../evil.png", r"points outside the archive with '\.\.'"),
     ("/etc/evil.png", r"'/etc/evil.png' has an absolute path")],
)  # fmt: skip
def test_tar_members_outside_the_archive_are_refused(tmp_path, member, message):
    archive = tar_with(tmp_path / "evil.tar", tarfile.TarInfo(member), b"x")
    with pytest.raises(DataError, match=message):
        load_dataset(archive)


def test_tar_link_pointing_outside_is_refused(tmp_path):
    link = tarfile.TarInfo("train/cat/1.png")
    link.type, link.linkname = tarfile.SYMTYPE, "../../../etc/passwd"
    with pytest.raises(DataError, match=r"link 'train/cat/1.png' -> .* points outside"):
        load_dataset(tar_with(tmp_path / "link.tar", link))


def test_zip_member_outside_the_archive_is_refused(tmp_path):
    with zipfile.ZipFile(tmp_path / "evil.zip", "w") as zf:
        zf.writestr("cat/0.png", png_bytes(np.zeros((2, 2, 3), np.uint8)))
        zf.writestr("../evil.png", b"x")
    with pytest.raises(DataError, match=r"'\.\./evil.png' points outside"):
        load_dataset(tmp_path / "evil.zip")


# ---- the shared CIFAR-10 JPEG copy -----------------------------------------------------------

SHARED = Path(
    os.environ.get("XPCNN_CIFAR10_JPEG")
    or Path(__file__).resolve().parents[2] / "shared/data/cifar10-jpeg/train.tar.gz"
)


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("shared-cache")


@pytest.mark.skipif(not SHARED.is_file(), reason=f"shared archive not found at {SHARED}")
def test_shared_cifar10_jpeg_archive_loads_and_reloads_fast_from_the_cache(shared_cache):
    first = load_dataset(SHARED, cache_dir=shared_cache)
    assert first.images.shape == (50_000, 3, 32, 32) and first.images.dtype == np.uint8
    assert first.classes == CIFAR10_CLASSES
    np.testing.assert_array_equal(first.class_counts(), [5000] * 10)

    start = time.perf_counter()
    second = load_dataset(SHARED, cache_dir=shared_cache)
    assert time.perf_counter() - start < 2.0
    assert any("cache" in note for note in second.notes)
    np.testing.assert_array_equal(second.labels, first.labels)
