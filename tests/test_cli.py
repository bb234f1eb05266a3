"""The `xpcnn` command end to end, through subprocesses on small synthetic image folders.

The subprocesses inherit XPCNN_BACKEND, so these run on whichever backend the suite runs on.
"""

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
from cli_harness import (
    CLASSES,
    arrays,
    command_env,
    meta,
    started,
    wait_for_text,
    write_folder,
    xpcnn,
)
from PIL import Image


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cli")


@pytest.fixture(scope="module")
def env(workdir) -> dict[str, str]:
    home = workdir / "xpcnn-data"
    home.mkdir()
    return command_env(home)


@pytest.fixture(scope="module")
def folder(workdir) -> Path:
    return write_folder(workdir / "colours", per_class=20)


@pytest.fixture(scope="module")
def noise(workdir) -> Path:
    return write_folder(workdir / "noise", per_class=40, noise=True, seed=1)


@pytest.fixture(scope="module")
def run(workdir, folder, env):
    """A 2-epoch run on the colour folder: (run folder, completed process)."""
    out = workdir / "run"
    result = xpcnn(
        "train", "--data", folder, "--epochs", 2, "--batch-size", 16, "--out", out, env=env
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result


def test_train_prints_one_line_per_epoch_and_the_final_accuracy(run):
    _, result = run
    lines = result.stdout.splitlines()
    assert [line.split()[1] for line in lines if line.startswith("epoch")] == ["1/2", "2/2"]
    assert lines[-1].startswith("validation accuracy")
    assert "epoch 2/2" in result.stderr  # the progress bar


def test_train_writes_checkpoint_history_and_plots(run):
    out, _ = run
    names = {
        "checkpoint.npz",
        "best.npz",
        "history.csv",
        "history.json",
        "curves.png",
        "samples.png",
        "confusion.png",
    }
    assert {p.name for p in out.iterdir()} == names
    assert len((out / "history.csv").read_text().splitlines()) == 3
    assert [r["epoch"] for r in json.loads((out / "history.json").read_text())] == [1, 2]
    assert Image.open(out / "curves.png").format == "PNG"


def test_checkpoint_holds_weights_optimizer_and_meta_for_plain_numpy(run):
    out, _ = run
    saved, info = arrays(out / "checkpoint.npz"), meta(out / "checkpoint.npz")
    assert saved["model/0.weight"].shape == (32, 3, 3, 3)
    assert int(saved["optim/steps"]) == 2 * 3  # 48 training images, batches of 16
    assert "optim/momentum.0.weight" in saved
    assert (info["epoch"], info["classes"], info["image_size"]) == (2, CLASSES, 16)
    assert info["model"]["name"] == "seed" and info["config"]["seed"] == 42
    assert len(info["mean"]) == len(info["std"]) == 3


def test_eval_json_prints_exactly_one_object(run, env, workdir, folder):
    out, _ = run
    plots = workdir / "eval-plots"
    checkpoint = out / "checkpoint.npz"
    result = xpcnn("eval", "--checkpoint", checkpoint, "--data", folder, "--json", "--out", plots,
                   env=env)  # fmt: skip
    assert result.returncode == 0, result.stderr
    scores = json.loads(result.stdout)  # the whole of stdout is one JSON document
    assert set(scores) == {"accuracy", "loss", "n", "per_class"}
    assert scores["n"] == 60 and set(scores["per_class"]) == set(CLASSES)
    assert 0.0 <= scores["accuracy"] <= 1.0
    assert (plots / "confusion.png").is_file()


def test_eval_val_split_rederives_the_training_validation_set(run, env):
    out, _ = run
    result = xpcnn(
        "eval", "--checkpoint", out / "checkpoint.npz", "--split", "val", "--json", env=env
    )
    scores = json.loads(result.stdout)
    last = meta(out / "checkpoint.npz")["history"][-1]
    assert scores["n"] == 12
    assert scores["accuracy"] == pytest.approx(last["val_acc"])


def test_predict_prints_top3_classes_per_image(run, env, folder):
    out, _ = run
    images = [folder / "red" / "000.png", folder / "blue" / "001.png"]
    result = xpcnn("predict", "--checkpoint", out / "best.npz", *images, env=env)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == [str(p) for p in images]
    for line in lines:
        fields = line.split(": ", 1)[1].split()
        labels, probabilities = fields[0::2], [float(p) for p in fields[1::2]]
        assert sorted(labels) == CLASSES
        assert probabilities == sorted(probabilities, reverse=True)
        assert sum(probabilities) == pytest.approx(1.0, abs=2e-3)


def test_info_names_backend_and_versions(env):
    result = xpcnn("info", env=env)
    assert result.returncode == 0, result.stderr
    info = dict(line.split(None, 1) for line in result.stdout.splitlines())
    assert info["numpy"] == np.__version__
    assert info["backend"].split()[0] == os.environ.get("XPCNN_BACKEND", "numpy")
    assert {"device", "blas", "threads", "array-api-compat"} <= set(info)


def test_existing_run_folder_is_kept_without_resume_or_force(run, env, folder):
    out, _ = run
    before = (out / "checkpoint.npz").stat().st_mtime_ns
    result = xpcnn("train", "--data", folder, "--epochs", 1, "--out", out, env=env)
    assert result.returncode == 2
    assert "--resume" in result.stderr and "--force" in result.stderr
    assert (out / "checkpoint.npz").stat().st_mtime_ns == before


def test_force_overwrites_a_run_folder(workdir, env, folder):
    out = workdir / "forced"
    out.mkdir()
    (out / "history.csv").write_text("old\n")
    flags = "--epochs 1 --batch-size 16 --force".split()
    result = xpcnn("train", "--data", folder, "--out", out, *flags, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert meta(out / "checkpoint.npz")["epoch"] == 1
    assert (out / "history.csv").read_text().startswith("epoch,")


def _rewritten(source: Path, target: Path, **changes) -> Path:
    """A copy of a checkpoint with some of its meta entries changed."""
    saved, info = arrays(source), meta(source)
    info.update(changes)
    np.savez(target, meta=np.array(json.dumps(info)), **saved)
    return target


@pytest.fixture(scope="module")
def broken(workdir, run) -> dict[str, Path]:
    out, _ = run
    checkpoint = out / "checkpoint.npz"
    truncated = workdir / "truncated.npz"
    truncated.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])
    text = workdir / "note.png"
    text.write_text("not an image\n")
    fast = {"name": "fast", "kwargs": {"num_classes": 3, "image_size": 16}}
    config = {**meta(checkpoint)["config"], "model": "fast"}  # the record's one model name
    other = _rewritten(checkpoint, workdir / "other-model.npz", model=fast, config=config)
    return {"checkpoint": checkpoint, "truncated": truncated, "text": text, "other": other}


BAD_INPUT = {
    "unknown flag": (["train", "--bogus"], "unrecognized arguments: --bogus"),
    "bad value": (["train", "--epochs", "0"], "argument --epochs: expected a positive integer"),
    "unknown choice": (["train", "--optimizer", "rmsprop"], "invalid choice: 'rmsprop'"),
    "missing data": (["train", "--data", "{work}/nowhere"], "nowhere: no such file or folder"),
    "missing checkpoint": (
        ["eval", "--checkpoint", "{work}/none.npz"],
        "none.npz': does not exist",
    ),
    "corrupt checkpoint": (["eval", "--checkpoint", "{truncated}"], "corrupt or truncated"),
    "other model": (["eval", "--checkpoint", "{other}"], "do not fit the 'fast' model"),
    "resume another model": (
        ["train", "--out", "{run}", "--resume", "--model", "fast"],
        "--model fast differs from the run's seed",
    ),
    "resume nothing": (["train", "--out", "{work}/empty", "--resume"], "--resume: "),
    "undecodable image": (
        ["predict", "--checkpoint", "{checkpoint}", "{text}"],
        "unreadable image",
    ),
    "missing image": (["predict", "--checkpoint", "{checkpoint}", "{work}/no.png"], "not exist"),
    "test split of a folder": (
        ["eval", "--checkpoint", "{checkpoint}", "--split", "test"],
        "--split test: ",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_exits_2_with_one_line(case, broken, run, workdir, env):
    args, expected = BAD_INPUT[case]
    places = {**{k: str(v) for k, v in broken.items()}, "work": workdir, "run": run[0]}
    result = xpcnn(*[a.format(**places) for a in args], env=env)
    assert result.returncode == 2
    assert result.stderr.startswith("xpcnn: error: ")
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert expected in result.stderr


def test_debug_shows_the_traceback(workdir, env):
    result = xpcnn("eval", "--checkpoint", workdir / "none.npz", "--debug", env=env)
    assert result.returncode != 0
    assert "Traceback" in result.stderr and "CheckpointError" in result.stderr


def test_nan_loss_stops_with_exit_1_and_writes_no_checkpoint(workdir, env, folder):
    out = workdir / "diverged"
    flags = "--epochs 2 --lr 1e9 --batch-size 16".split()
    result = xpcnn("train", "--data", folder, "--out", out, *flags, env=env)
    assert result.returncode == 1
    assert "training diverged in epoch 1" in result.stderr
    assert "no checkpoint was written" in result.stderr
    assert not (out / "checkpoint.npz").exists()


NOISE_RUN = ["--epochs", 3, "--batch-size", 4, "--model", "seed"]


@pytest.fixture(scope="module")
def uninterrupted(workdir, noise, env) -> Path:
    out = workdir / "whole"
    result = xpcnn("train", "--data", noise, *NOISE_RUN, "--out", out, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    return out / "checkpoint.npz"


def test_killed_run_resumes_to_the_same_weights(workdir, noise, env, uninterrupted):
    out, log = workdir / "killed", workdir / "killed.log"
    with open(log, "w") as stderr:
        process = started(
            "train", "--data", noise, *NOISE_RUN, "--out", out, env=env, stderr=stderr
        )
        wait_for_text(log, "epoch 2/3", process)
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL
    assert meta(out / "checkpoint.npz")["epoch"] == 1  # killed during epoch 2
    after_one = arrays(out / "checkpoint.npz")

    result = xpcnn("train", "--data", noise, "--out", out, "--resume", env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    resumed, whole = arrays(out / "checkpoint.npz"), arrays(uninterrupted)
    assert sorted(resumed) == sorted(whole)
    mismatched = [k for k in whole if not np.array_equal(resumed[k], whole[k])]
    assert mismatched == []
    assert not np.array_equal(after_one["model/0.weight"], whole["model/0.weight"])
    losses = [
        [r["train_loss"] for r in meta(c)["history"]]
        for c in (out / "checkpoint.npz", uninterrupted)
    ]
    assert losses[0] == losses[1]


def test_ctrl_c_keeps_the_last_checkpoint_and_says_how_to_resume(workdir, noise, env):
    out, log = workdir / "interrupted", workdir / "interrupted.log"
    with open(log, "w") as stderr:
        process = started(
            "train", "--data", noise, *NOISE_RUN, "--out", out, env=env, stderr=stderr
        )
        wait_for_text(log, "epoch 2/3", process)
        process.send_signal(signal.SIGINT)
        process.wait(timeout=120)
    message = log.read_text()
    assert process.returncode == 130
    saved = meta(out / "checkpoint.npz")["epoch"]
    assert saved in (1, 2)
    assert f"holds epoch {saved}/3" in message
    assert f"--out {out} --resume" in message


def test_training_without_matplotlib_skips_plots_once(workdir, env, folder):
    blocker = workdir / "no-matplotlib" / "matplotlib"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('matplotlib is blocked here')\n")
    out = workdir / "no-plots"
    env = {**env, "PYTHONPATH": str(blocker.parent)}
    result = xpcnn(
        "train", "--data", folder, "--epochs", 2, "--batch-size", 16, "--out", out, env=env
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("plots are skipped") == 1
    assert not list(out.glob("*.png"))
    assert (out / "checkpoint.npz").is_file()


def test_fast_preset_trains_with_its_own_recipe(workdir, env, folder):
    out = workdir / "fast"
    result = xpcnn("train", "--model", "fast", "--data", folder, "--epochs", 1, "--out", out,
                   env=env)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    config = meta(out / "checkpoint.npz")["config"]
    recipe = {k: config[k] for k in ("batch_size", "lr", "momentum", "schedule",
                                      "label_smoothing", "tta", "epochs")}  # fmt: skip
    assert recipe == {"batch_size": 1024, "lr": 1.5, "momentum": 0.85, "schedule": "triangular",
                      "label_smoothing": 0.2, "tta": True, "epochs": 1}  # fmt: skip
    assert ("augment crop 2 + alternating flip, lookahead every 5 steps (runs of 220+ steps), "
            "label smoothing 0.2, TTA at evaluation") in result.stdout  # fmt: skip
    assert "lookahead:" not in result.stdout  # one step of 1024: too short a run for it
    assert result.stdout.splitlines()[-1].startswith("validation accuracy with TTA")


def test_resume_with_images_of_another_size_is_refused_before_training(run, workdir, env):
    out, _ = run
    other = write_folder(workdir / "bigger", per_class=20)
    for image in other.glob("*/*.png"):
        Image.open(image).resize((20, 20)).save(image)
    before = (out / "checkpoint.npz").read_bytes()
    result = xpcnn("train", "--out", out, "--resume", "--data", other, "--epochs", 3, env=env)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "3x20x20 images, the run 3x16x16" in result.stderr and "--data" in result.stderr
    assert (out / "checkpoint.npz").read_bytes() == before


def test_models_lists_each_preset_with_its_size_and_recipe(env):
    result = xpcnn("models", env=env)
    assert result.returncode == 0, result.stderr
    assert "seed: " in result.stdout and "545,098 parameters" in result.stdout
    assert "recipe: sgd lr 1.5 (triangular)" in result.stdout  # fast's own recipe


def test_bench_profile_times_every_layer_of_the_network(env):
    from xpcnn.bench import layer_profile
    from xpcnn.models import build_model

    model = build_model("fast", width=4, image_size=8)
    rows = layer_profile(model, 4, (3, 8, 8), rounds=1)
    assert [name.split()[0] for name, _, _ in rows] == [str(i) for i in model.execution_order()]
    assert all(forward > 0 and backward > 0 for _, forward, backward in rows)
    result = xpcnn("bench", "--models", "seed", "--batch-sizes", 8, "--steps", 1, "--rounds", 1,
                   "--no-peer", "--profile", env=env)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "0 Conv2D" in result.stdout and "9 Dense" in result.stdout
    assert "all layers" in result.stdout
