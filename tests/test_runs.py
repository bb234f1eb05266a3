"""The run layer imported directly: settings and recipes, the run record's schema, the run
folder's lifecycle, and resolving a resumed run."""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import xpcnn
from xpcnn.checkpoint import load_checkpoint, save_checkpoint
from xpcnn.models import PRESETS
from xpcnn.optim import SGD
from xpcnn.runs import (
    ConfigError,
    RecordError,
    ResumeMismatch,
    RunFolder,
    RunFolderError,
    RunFolderNotEmpty,
    RunRecord,
    TrainConfig,
    load_run,
    restore_model,
)
from xpcnn.runs.folder import LOCK

V1_META = json.loads((Path(__file__).parent / "data" / "meta-v1.json").read_text())


def record(**changes) -> RunRecord:
    config = TrainConfig.resolve({"data": "pics", "epochs": 3, "model": "seed"})
    base = RunRecord(
        config, {"num_classes": 2, "in_channels": 3, "image_size": 8}, ("blue", "red"),
        (0.5, 0.4, 0.3), (0.2, 0.2, 0.2), data_size=20, train_size=16, val_size=4,
    )  # fmt: skip
    return replace(base, **changes)


def write_run(folder: Path, rec: RunRecord, name: str = "checkpoint.npz") -> Path:
    xpcnn.manual_seed(0)
    model = rec.build_model()
    optimizer = SGD(model, lr=0.1, momentum=0.9)
    folder.mkdir(parents=True, exist_ok=True)
    return save_checkpoint(folder / name, model.state_dict(), optimizer.state_dict(),
                           rec.to_json())  # fmt: skip


# --- settings ------------------------------------------------------------------------------


def test_a_preset_brings_its_recipe():
    config = TrainConfig.resolve({"model": "fast"})
    recipe = PRESETS["fast"].recipe
    assert (config.epochs, config.lr, config.label_smoothing, config.tta) == (
        recipe.epochs, recipe.lr, recipe.label_smoothing, recipe.tta,
    )  # fmt: skip
    assert (config.epochs, config.batch_size, config.lr, config.momentum, config.schedule) == (
        8, 1024, 1.5, 0.85, "triangular",
    )  # fmt: skip
    assert PRESETS["fast-v1"].recipe.epochs == 14 and PRESETS["fast-v1"].recipe.lr == 0.1


def test_a_chosen_setting_overrides_one_field_of_the_recipe():
    config = TrainConfig.resolve({"model": "fast", "epochs": 3})
    assert (config.epochs, config.lr, config.label_smoothing) == (3, 1.5, 0.2)


def test_another_optimizer_gets_its_own_default_lr():
    assert TrainConfig.resolve({"optimizer": "adam"}).lr == 1e-3
    assert TrainConfig.resolve({"optimizer": "adam", "lr": 0.01}).lr == 0.01


def test_zero_momentum_turns_nesterov_off_unless_asked():
    assert TrainConfig.resolve({"momentum": 0.0}).nesterov is False
    with pytest.raises(ConfigError, match="nesterov=True: needs momentum > 0"):
        TrainConfig.resolve({"momentum": 0.0, "nesterov": True})


@pytest.mark.parametrize(
    "field, value",
    [("epochs", 0), ("batch_size", 2.5), ("lr", float("nan")), ("label_smoothing", 1.0),
     ("optimizer", "rmsprop"), ("schedule", "linear"), ("augment", "yes"), ("limit", -1),
     ("model", "resnet")],
)  # fmt: skip
def test_a_setting_out_of_range_names_its_field(field, value):
    with pytest.raises(ConfigError) as caught:
        TrainConfig.resolve({field: value})
    assert (caught.value.field, caught.value.value) == (field, value)


def test_unknown_settings_are_a_type_error():
    with pytest.raises(TypeError, match="bogus"):
        TrainConfig.resolve({"bogus": 1})


def test_resume_may_extend_epochs_and_move_data_but_nothing_else(tmp_path):
    stored = TrainConfig.resolve({"data": "pics", "epochs": 3})
    resumed = stored.resumed({"epochs": 5, "data": "elsewhere"}, 2, tmp_path)
    assert (resumed.epochs, resumed.data, resumed.lr) == (5, "elsewhere", stored.lr)
    assert stored.resumed({"lr": stored.lr}, 2, tmp_path) == stored  # the same value is fine
    with pytest.raises(ResumeMismatch) as caught:
        stored.resumed({"lr": 0.5}, 2, tmp_path)
    assert (caught.value.field, caught.value.value, caught.value.stored) == ("lr", 0.5, stored.lr)
    with pytest.raises(ConfigError, match="already finished epoch 2"):
        stored.resumed({"epochs": 1}, 2, tmp_path)


# --- the run record ------------------------------------------------------------------------


def test_record_round_trips_through_json():
    rec = record().after_epoch({"epoch": 1, "train_loss": 1.0, "train_acc": 0.5, "lr": 0.1,
                                "seconds": 1.0, "images_per_s": 16.0, "val_loss": 0.9,
                                "val_acc": 0.75})  # fmt: skip
    assert RunRecord.from_json(json.loads(json.dumps(rec.to_json()))) == rec
    assert rec.to_json()["schema"] == 4 and rec.best == (1, 0.75)


def test_best_follows_the_highest_validation_accuracy():
    row = {"train_loss": 1.0, "train_acc": 0.5, "lr": 0.1, "seconds": 1.0, "images_per_s": 1.0}
    rec = record()
    for epoch, acc in enumerate([0.5, 0.75, 0.6], start=1):
        rec = rec.after_epoch({**row, "epoch": epoch, "val_loss": 1.0, "val_acc": acc})
    assert (rec.epoch, rec.best) == (3, (2, 0.75))


def test_a_record_names_one_model():
    stored = record().to_json()
    stored["model"]["name"] = "fast"
    with pytest.raises(RecordError, match="model.name: 'fast' differs from config.model 'seed'"):
        RunRecord.from_json(stored, "run.npz")


def test_a_stored_best_that_is_not_the_historys_is_refused():
    rec = record().after_epoch({"epoch": 1, "train_loss": 1.0, "train_acc": 0.5, "lr": 0.1,
                                "seconds": 1.0, "images_per_s": 16.0, "val_loss": 0.9,
                                "val_acc": 0.75})  # fmt: skip
    stored = rec.to_json() | {"best": [1, 0.5]}
    with pytest.raises(RecordError, match="best: differs from the best epoch of the history"):
        RunRecord.from_json(stored, "run.npz")


def test_a_version_1_record_migrates():
    migrated = RunRecord.from_json(V1_META, "v1.npz")
    assert migrated.config.tta is False and migrated.epoch == 2 and migrated.best == (1, 1.0)
    assert migrated.classes == ("blue", "red") and migrated.image_size == 8
    assert migrated.to_json()["schema"] == 4 and migrated.config.init is None


def test_a_schema_3_record_started_from_no_weights():
    meta = json.loads(json.dumps(V1_META))
    meta.update(schema=3, config={"tta": False, **meta["config"]})
    assert RunRecord.from_json(meta, "v3.npz").config.init is None
    meta["schema"] = 4  # a current record must say where its weights came from
    with pytest.raises(RecordError, match=r"missing \['init', 'time'\]"):
        RunRecord.from_json(meta, "v4.npz")


def test_a_schema_2_fast_run_names_the_network_it_was_trained_as_fast_v1():
    meta = json.loads(json.dumps(V1_META))
    meta.update(schema=2, model={"name": "fast", "kwargs": meta["model"]["kwargs"]})
    meta["config"] = {"tta": True, **meta["config"], "model": "fast"}
    migrated = RunRecord.from_json(meta, "v2.npz")
    assert migrated.model == migrated.config.model == "fast-v1"
    assert migrated.to_json()["schema"] == 4
    stored = migrated.to_json()
    stored |= {"model": {"name": "fast", "kwargs": dict(migrated.model_args)},
               "config": {**stored["config"], "model": "fast"}}  # fmt: skip
    current = RunRecord.from_json(stored, "v3.npz")
    assert current.model == "fast"  # a schema-3 "fast" is the airbench network


def _broken(path: str, value):
    meta = json.loads(json.dumps(V1_META))
    *parents, last = path.split(".")
    target = meta
    for key in parents:
        target = target[int(key)] if isinstance(target, list) else target[key]
    if value is KeyError:
        del target[last]
    elif isinstance(target, list):
        target[int(last)] = value
    else:
        target[last] = value
    return meta


@pytest.mark.parametrize(
    "path, value, field",
    [
        ("epoch", "2", "epoch"),
        ("epoch", 7, "epoch"),
        ("epoch", KeyError, "epoch"),
        ("classes", "blue", "classes"),
        ("classes", ["blue", "blue"], "classes"),
        ("classes", ["blue", 3], "classes"),
        ("mean", [0.5, 0.5], "mean"),
        ("std", [0.2, 0.0, 0.2], "std"),
        ("image_size", 9, "image_size"),
        ("model.name", "resnet", "model.name"),
        ("model.kwargs.num_classes", 0, "model.kwargs.num_classes"),
        ("model.kwargs.dtype", "float64", "model.kwargs"),
        ("config.lr", "fast", "config.lr"),
        ("config.optimizer", KeyError, "config"),
        ("config.extra", 1, "config"),
        ("history", {"epoch": 1}, "history"),
        ("history.1.epoch", 5, "history[1]"),
        ("history.0.train_loss", None, "history[0].train_loss"),
        ("best", [9, 1.0], "best"),
        ("best", "yes", "best"),
        ("train_size", 0, "train_size"),
        ("schema", 5, "schema"),
    ],
)
def test_a_bad_field_is_one_error_naming_the_file_and_field(path, value, field):
    with pytest.raises(RecordError) as caught:
        RunRecord.from_json(_broken(path, value), "run/checkpoint.npz")
    assert caught.value.field == field
    assert str(caught.value).startswith(f"'run/checkpoint.npz': {field}: ")


def test_restore_builds_the_named_preset_with_the_weights(tmp_path):
    path = write_run(tmp_path, record())
    checkpoint, rec = load_run(path)
    model = restore_model(checkpoint, rec)
    for key, value in model.state_dict().items():
        assert np.array_equal(xpcnn.backend.to_numpy(value), checkpoint.model[key]), key


def test_weights_of_another_model_do_not_restore(tmp_path):
    path = write_run(tmp_path, record())
    checkpoint = load_checkpoint(path)
    checkpoint.meta["model"]["name"] = checkpoint.meta["config"]["model"] = "fast"
    rec = RunRecord.from_json(checkpoint.meta, path)
    with pytest.raises(RecordError, match="do not fit the 'fast' model"):
        restore_model(checkpoint, rec)


# --- the run folder ------------------------------------------------------------------------


def test_a_new_folder_is_made_only_by_start(tmp_path):
    out = tmp_path / "run"
    with RunFolder.open(out) as folder:
        assert not out.exists() and folder.resumed is None
        folder.start()
        assert out.is_dir() and (out / LOCK).is_file()
    assert list(out.iterdir()) == []  # the lock goes with the run


def test_a_folder_with_files_needs_force_and_force_clears_run_files(tmp_path):
    out = tmp_path / "run"
    write_run(out, record())
    (out / "notes.txt").write_text("mine")
    with pytest.raises(RunFolderNotEmpty):
        RunFolder.open(out)
    with RunFolder.open(out, force=True) as folder:
        folder.start()
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_a_file_is_not_a_run_folder(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunFolderError, match="is a file"):
        RunFolder.open(tmp_path / "file")


def test_a_second_run_cannot_use_a_folder_in_use(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    with RunFolder.open(out):
        with pytest.raises(RunFolderError, match="in use by another run"):
            RunFolder.open(out, force=True)
    with RunFolder.open(out, force=True):  # released when the first one ends
        pass


def test_a_lock_file_left_by_a_killed_run_is_taken_over(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / LOCK).write_text("12345")
    with RunFolder.open(out) as folder:
        folder.start()
    assert not (out / LOCK).exists()


def test_resume_loads_the_validated_record(tmp_path):
    out = tmp_path / "run"
    write_run(out, record())
    with RunFolder.open(out, resume=True) as folder:
        checkpoint, rec = folder.resumed
        assert rec == record() and checkpoint.path == out / "checkpoint.npz"


def test_resume_without_a_checkpoint_names_the_file(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(Exception, match="checkpoint.npz'?: does not exist"):
        RunFolder.open(tmp_path / "empty", resume=True)


@pytest.mark.parametrize(
    "change, expected",
    [
        (lambda s: s.pop("steps"), "'steps': expected a non-negative integer"),
        (lambda s: s.update(steps=np.array(-1)), "'steps': expected a non-negative integer"),
        (lambda s: s.update({"momentum.0.weight": np.zeros((2, 2), np.float32)}),
         "expected float (32, 3, 3, 3), got float32 (2, 2)"),
        (lambda s: s.update({"exp_avg.0.weight": np.zeros((32, 3, 3, 3), np.float32)}),
         "SGD keeps momentum"),
        (lambda s: s.update({"momentum.99.weight": np.zeros(3, np.float32)}),
         "no parameter '99.weight'"),
    ],
)  # fmt: skip
def test_optimizer_state_that_does_not_fit_is_a_record_error(tmp_path, change, expected):
    from xpcnn.runs.record import restore_optimizer

    checkpoint, rec = load_run(write_run(tmp_path, record()))
    change(checkpoint.optim)
    optimizer = SGD(restore_model(checkpoint, rec), lr=0.1, momentum=0.9)
    with pytest.raises(RecordError, match="optim: does not fit the model") as caught:
        restore_optimizer(checkpoint, optimizer)
    assert expected in str(caught.value) and optimizer.steps == 0


def test_a_full_disk_names_the_file_and_the_epoch_that_is_safe(tmp_path, monkeypatch):
    import errno

    from cli_harness import write_folder

    import xpcnn.checkpoint
    from xpcnn.runs import train

    data = write_folder(tmp_path / "colours", per_class=6)
    real_savez, calls = np.savez, []

    def savez_until_full(*args, **kwargs):
        calls.append(1)
        if len(calls) > 2:  # the decoded cache, epoch 1, then a full disk
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_savez(*args, **kwargs)

    monkeypatch.setattr(xpcnn.checkpoint.np, "savez", savez_until_full)
    out = tmp_path / "run"
    with pytest.raises(RunFolderError, match="No space left on device.*keeps epoch 1"):
        train({"data": str(data), "epochs": 3, "batch_size": 8}, out)
    assert json.loads(str(np.load(out / "checkpoint.npz")["meta"][()]))["epoch"] == 1
    assert not list(out.glob(".*.part"))


@pytest.mark.parametrize(("model", "steps"), [("seed", 3), ("fast", 2)])
def test_fast_leaves_out_the_last_partial_batch_and_whitens_from_the_data(tmp_path, model, steps):
    """40 training images in batches of 16: seed takes 16, 16, 8; fast drops the 8 (its
    preset's drop_last) and starts from a whitening conv fitted to the training images."""
    from cli_harness import write_folder

    from xpcnn.runs import train

    data = write_folder(tmp_path / "colours", per_class=20)  # 60 images: 40 train, 20 val
    out = tmp_path / "run"
    train({"data": str(data), "model": model, "epochs": 1, "batch_size": 16, "val_split": 1 / 3,
           "tta": False}, out)  # fmt: skip
    checkpoint = load_checkpoint(out / "checkpoint.npz")
    assert int(checkpoint.optim["steps"]) == steps
    if model == "fast":  # whitened (test_init.py checks the filters): k and 12 + k opposite
        weight = np.asarray(checkpoint.model["0.weight"])
        np.testing.assert_allclose(weight[12:], -weight[:12], rtol=1e-6)


def test_a_run_with_lookahead_resumes_to_the_same_weights(tmp_path, monkeypatch):
    """fast's Lookahead (on here for a 15-step run): stopped after epoch 1 and resumed, the run
    ends where an uninterrupted one does, slow copies included; and the syncs change the result."""
    from cli_harness import arrays, write_folder

    import xpcnn.runs.setup
    from xpcnn.runs import TrainingInterrupted, train
    from xpcnn.train import Callback

    class StopAfterOneEpoch(Callback):
        def on_epoch_end(self, record):
            self.interrupt_requested = True

    data = write_folder(tmp_path / "colours", per_class=20)  # 40 train: 5 steps of 8 an epoch
    options = {"data": str(data), "model": "fast", "epochs": 3, "batch_size": 8,
               "val_split": 1 / 3, "tta": False}  # fmt: skip

    train(options, tmp_path / "plain")  # below LOOKAHEAD_MIN_STEPS: no Lookahead
    monkeypatch.setattr(xpcnn.runs.setup, "LOOKAHEAD_MIN_STEPS", 1)
    train(options, tmp_path / "whole")
    with pytest.raises(TrainingInterrupted):
        train(options, tmp_path / "resumed", callbacks=[StopAfterOneEpoch()])
    train(options, tmp_path / "resumed", resume=True)
    whole, resumed, plain = (arrays(tmp_path / n / "checkpoint.npz")
                             for n in ("whole", "resumed", "plain"))  # fmt: skip
    assert "optim/slow.4.running_mean" in whole and "optim/slow.4.running_mean" not in plain
    assert sorted(whole) == sorted(resumed)
    assert [k for k in whole if not np.array_equal(whole[k], resumed[k])] == []
    assert not np.array_equal(whole["model/2.weight"], plain["model/2.weight"])
    train(options | {"optimizer": "muon"}, tmp_path / "muon")  # airbench94_muon: no Lookahead
    assert not [k for k in arrays(tmp_path / "muon" / "checkpoint.npz") if "optim/slow." in k]
