import json

import numpy as np
import pytest

import xpcnn
from xpcnn.backend import to_numpy
from xpcnn.checkpoint import CheckpointError, load_checkpoint, restore_model, save_checkpoint
from xpcnn.models import build_model
from xpcnn.optim import SGD

META = {"epoch": 3, "classes": ["a", "b"], "mean": [0.5] * 3, "std": [0.25] * 3, "image_size": 8}


def seed_model():
    xpcnn.manual_seed(0)
    return build_model("seed", num_classes=2, image_size=8)


def saved(tmp_path, model=None):
    model = model or seed_model()
    optimizer = SGD(model, lr=0.1, momentum=0.9)
    optimizer.slot("momentum", "0.weight", model.state_dict()["0.weight"])
    optimizer.steps = 7
    meta = {**META, "model": {"name": "seed", "kwargs": {"num_classes": 2, "image_size": 8}}}
    path = save_checkpoint(
        tmp_path / "checkpoint.npz", model.state_dict(), optimizer.state_dict(), meta
    )
    return path, model


def test_checkpoint_is_readable_by_numpy_without_pickle(tmp_path):
    path, model = saved(tmp_path)
    with np.load(path, allow_pickle=False) as npz:
        assert np.array_equal(npz["model/0.weight"], to_numpy(model.state_dict()["0.weight"]))
        assert int(npz["optim/steps"]) == 7
        assert npz["optim/momentum.0.weight"].shape == (32, 3, 3, 3)
        assert json.loads(str(npz["meta"][()]))["classes"] == ["a", "b"]


def test_load_round_trips_weights_optimizer_state_and_meta(tmp_path):
    path, model = saved(tmp_path)
    checkpoint = load_checkpoint(path)
    assert checkpoint.epoch == 3 and checkpoint.meta["image_size"] == 8
    assert int(checkpoint.optim["steps"]) == 7
    restored = restore_model(checkpoint)
    for key, value in model.state_dict().items():
        assert np.array_equal(to_numpy(restored.state_dict()[key]), to_numpy(value)), key


def test_checkpoint_saved_on_numpy_loads_on_another_backend(tmp_path, monkeypatch):
    pytest.importorskip("array_api_strict")
    monkeypatch.setenv("XPCNN_BACKEND", "numpy")
    path, model = saved(tmp_path)
    monkeypatch.setenv("XPCNN_BACKEND", "array_api_strict")
    restored = restore_model(load_checkpoint(path))
    weight = restored.state_dict()["0.weight"]
    assert type(weight).__module__.startswith("array_api_strict")
    assert np.array_equal(to_numpy(weight), to_numpy(model.state_dict()["0.weight"]))


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


def test_weights_of_another_model_do_not_restore(tmp_path):
    path, _ = saved(tmp_path)
    checkpoint = load_checkpoint(path)
    checkpoint.meta["model"] = {"name": "fast", "kwargs": {"num_classes": 2, "image_size": 8}}
    with pytest.raises(CheckpointError, match="do not fit the 'fast' model"):
        restore_model(checkpoint)


def test_missing_checkpoint_names_the_flag(tmp_path):
    with pytest.raises(CheckpointError, match="--resume: .*does not exist"):
        load_checkpoint(tmp_path / "checkpoint.npz", flag="--resume")
