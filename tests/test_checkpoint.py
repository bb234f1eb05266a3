import json

import numpy as np
import pytest

import xpcnn
from xpcnn.backend import to_numpy
from xpcnn.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from xpcnn.models import build_model
from xpcnn.optim import SGD

META = {"epoch": 3, "classes": ["a", "b"]}


def saved(tmp_path, model=None):
    if model is None:
        xpcnn.manual_seed(0)
        model = build_model("seed", num_classes=2, image_size=8)
    optimizer = SGD(model, lr=0.1, momentum=0.9)
    optimizer.flat_slot("momentum", 0)  # made at the first step; here by hand
    optimizer.steps = 7
    path = save_checkpoint(
        tmp_path / "checkpoint.npz", model.state_dict(), optimizer.state_dict(), META
    )
    return path, model


def test_checkpoint_is_readable_by_numpy_without_pickle(tmp_path):
    path, model = saved(tmp_path)
    with np.load(path, allow_pickle=False) as npz:
        assert np.array_equal(npz["model/0.weight"], to_numpy(model.state_dict()["0.weight"]))
        assert int(npz["optim/steps"]) == 7
        assert npz["optim/momentum.0.weight"].shape == (32, 3, 3, 3)
        assert json.loads(str(npz["meta"][()]))["classes"] == ["a", "b"]


def test_load_round_trips_arrays_and_meta(tmp_path):
    path, model = saved(tmp_path)
    checkpoint = load_checkpoint(path)
    assert checkpoint.meta["epoch"] == 3 and checkpoint.meta["classes"] == ["a", "b"]
    assert int(checkpoint.optim["steps"]) == 7
    for key, value in model.state_dict().items():
        assert np.array_equal(checkpoint.model[key], to_numpy(value)), key


def test_a_failed_save_keeps_the_previous_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    path, _ = saved(tmp_path)
    before = path.read_bytes()

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", fail)
    with pytest.raises(OSError):
        saved(tmp_path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.npz"]


def test_truncated_checkpoint_is_reported_as_corrupt(tmp_path):
    path, _ = saved(tmp_path)
    path.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(path)


def test_npz_without_meta_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "weights.npz"
    np.savez(path, weight=np.zeros(3))
    with pytest.raises(CheckpointError, match="not an xpcnn checkpoint"):
        load_checkpoint(path)


def test_a_single_npy_array_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "weights.npy"
    np.save(path, np.zeros(3))
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(path)


def test_meta_nested_too_deep_is_refused_before_parsing(tmp_path):
    path = tmp_path / "deep.npz"
    np.savez(path, meta=np.array('{"format": "xpcnn-checkpoint", "x": ' + "[" * 100000))
    with pytest.raises(CheckpointError, match="meta: nests deeper than 64 levels"):
        load_checkpoint(path)


def test_meta_that_is_not_json_names_the_field(tmp_path):
    path = tmp_path / "bad.npz"
    np.savez(path, meta=np.array("{not json"))
    with pytest.raises(CheckpointError, match="meta: is not valid JSON"):
        load_checkpoint(path)


def test_missing_checkpoint_names_the_file(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint.npz'?: does not exist") as caught:
        load_checkpoint(tmp_path / "checkpoint.npz")
    assert caught.value.path == tmp_path / "checkpoint.npz" and caught.value.field is None


def test_saving_into_a_missing_folder_names_the_file_asked_for(tmp_path):
    with pytest.raises(FileNotFoundError) as caught:
        save_checkpoint(tmp_path / "nowhere" / "checkpoint.npz", {}, {}, META)
    assert caught.value.filename == str(tmp_path / "nowhere" / "checkpoint.npz")
