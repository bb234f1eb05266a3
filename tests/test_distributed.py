"""Data-parallel training: sharded batches without MPI, then real `mpiexec -n 2` runs on
loopback (skipped where mpi4py or an MPI launcher is missing: pip install 'xpcnn[mpi]')."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from cli_harness import MPI_ENV, MPIEXEC, mpi_missing, needs_mpi, write_folder

from xpcnn.backend import to_numpy
from xpcnn.data import Augment, Batches
from xpcnn.distributed import Communicator, communicator


def test_the_shards_of_a_global_batch_are_its_rows_augmented_as_one_process_would():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (21, 3, 8, 8), dtype=np.uint8)
    labels = rng.integers(0, 3, 21)
    kwargs = {"seed": 5, "augment": Augment(crop_padding=2, flip=True, cutout=3)}
    whole = Batches(images, labels, 8, **kwargs)
    shards = [Batches(images, labels, 8, shard=(r, 3), **kwargs) for r in range(3)]
    assert len(whole) == 3 and all(len(s) == 3 for s in shards)  # last batch: 5 images >= 3
    for (x, y), *parts in zip(whole.epoch(4), *(s.epoch(4) for s in shards), strict=True):
        joined = np.concatenate([to_numpy(p[0]) for p in parts])
        assert np.array_equal(joined, to_numpy(x))
        assert np.array_equal(np.concatenate([to_numpy(p[1]) for p in parts]), to_numpy(y))


def test_a_last_batch_smaller_than_the_ranks_is_left_out_on_all():
    images, labels = np.zeros((19, 3, 4, 4), np.uint8), np.zeros(19, np.int64)
    assert len(Batches(images, labels, 8)) == 3
    assert len(Batches(images, labels, 8, shard=(1, 2))) == 3  # 3 images left for 2 ranks
    assert len(Batches(images, labels, 8, shard=(1, 4))) == 2  # 3 images for 4 ranks: none


def test_one_process_gets_the_single_communicator():
    comm = communicator()
    assert isinstance(comm, Communicator) and (comm.rank, comm.size, comm.is_root) == (0, 1, True)
    assert comm.sum([1.0, 2.0]) == [1.0, 2.0]


def launch(ranks: int, *args, cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, **MPI_ENV, "XPCNN_DATA": str(cwd / "home")}
    command = [sys.executable, "-m", "xpcnn", *map(str, args)]
    if ranks > 1:
        command = [MPIEXEC, "-n", str(ranks), *command]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


def arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def history(path: Path) -> list[dict]:
    return json.loads(str(arrays(path)["meta"][()]))["history"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The seed network (no BatchNorm) for 2 epochs on one process and on two ranks."""
    if mpi_missing():
        pytest.skip(mpi_missing())
    work = tmp_path_factory.mktemp("mpi")
    data = write_folder(work / "colours", per_class=20)
    flags = ["train", "--data", data, "--epochs", 2, "--batch-size", 16]
    one = launch(1, *flags, "--out", work / "one", cwd=work)
    two = launch(2, *flags, "--out", work / "two", cwd=work)
    assert one.returncode == 0, one.stderr[-2000:]
    assert two.returncode == 0, two.stderr[-2000:]
    return work, data, two


@needs_mpi
def test_two_ranks_give_the_weights_of_one_process_up_to_summation_order(runs):
    work, _, _ = runs
    one, two = arrays(work / "one" / "checkpoint.npz"), arrays(work / "two" / "checkpoint.npz")
    for key in one:
        if key.startswith("model/"):
            assert np.allclose(two[key], one[key], rtol=1e-4, atol=1e-5), key
    assert int(two["optim/steps"]) == int(one["optim/steps"])


@needs_mpi
def test_validation_is_counted_exactly_over_the_ranks(runs):
    work, _, _ = runs
    rows = zip(history(work / "one" / "checkpoint.npz"), history(work / "two" / "checkpoint.npz"),
               strict=True)  # fmt: skip
    for single, ranked in rows:
        assert ranked["val_acc"] == single["val_acc"]
        assert ranked["val_loss"] == pytest.approx(single["val_loss"], rel=1e-4)
        assert ranked["train_loss"] == pytest.approx(single["train_loss"], rel=1e-4)


@needs_mpi
def test_rank_0_alone_prints_and_writes(runs):
    work, _, two = runs
    assert two.stdout.count("run folder:") == 1 and "2 ranks" in two.stdout
    assert [line.split()[1] for line in two.stdout.splitlines() if line.startswith("epoch")] == [
        "1/2", "2/2",
    ]  # fmt: skip
    assert {p.name for p in (work / "two").iterdir()} >= {"checkpoint.npz", "history.csv"}


@needs_mpi
def test_a_two_rank_checkpoint_evaluates_alone_and_resumes_on_any_number_of_ranks(runs):
    work, data, _ = runs
    scored = launch(1, "eval", "--checkpoint", work / "two" / "checkpoint.npz", "--split", "val",
                    "--json", cwd=work)  # fmt: skip
    assert scored.returncode == 0, scored.stderr[-2000:]
    assert json.loads(scored.stdout)["n"] == 12
    shutil.copytree(work / "two", work / "more")
    resumed = launch(1, "train", "--out", work / "more", "--resume", "--epochs", 3, cwd=work)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    shutil.copytree(work / "one", work / "more2")
    again = launch(2, "train", "--out", work / "more2", "--resume", "--epochs", 3, cwd=work)
    assert again.returncode == 0, again.stderr[-2000:]
    assert len(history(work / "more2" / "checkpoint.npz")) == 3


@needs_mpi
def test_a_two_rank_resnet_validates_the_model_its_checkpoint_holds(tmp_path):
    """BatchNorm's running statistics, kept by each rank from its own share, are averaged over
    the ranks before validation: the checkpoint, scored alone, gives the recorded scores."""
    data = write_folder(tmp_path / "colours", per_class=20)
    trained = launch(2, "train", "--data", data, "--model", "resnet20", "--epochs", 1,
                     "--batch-size", 16, "--out", tmp_path / "run", cwd=tmp_path)  # fmt: skip
    assert trained.returncode == 0, trained.stderr[-2000:]
    recorded = history(tmp_path / "run" / "checkpoint.npz")[-1]
    scored = launch(1, "eval", "--checkpoint", tmp_path / "run" / "checkpoint.npz", "--split",
                    "val", "--json", cwd=tmp_path)  # fmt: skip
    assert scored.returncode == 0, scored.stderr[-2000:]
    result = json.loads(scored.stdout)
    assert result["accuracy"] == recorded["val_acc"]
    assert result["loss"] == pytest.approx(recorded["val_loss"], rel=1e-5)


@needs_mpi
@pytest.mark.slow  # a 20-second budget
def test_two_ranks_train_rank_0s_plan_of_a_time_budget(tmp_path):
    data = write_folder(tmp_path / "noise", per_class=20, noise=True)
    run = launch(2, "train", "--data", data, "--time", "20s", "--out", tmp_path / "run",
                 cwd=tmp_path)  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    planned = [line for line in run.stdout.splitlines() if line.startswith("time budget 20s: ")]
    assert len(planned) == 1  # rank 0 alone says it
    epochs = int(planned[0].split(": ")[-1].split(" epoch")[0].rsplit(" ", 1)[-1])
    assert len(history(tmp_path / "run" / "checkpoint.npz")) == epochs


@needs_mpi
def test_bad_input_under_mpiexec_is_one_line_of_ours_and_ends_the_job(tmp_path):
    started = time.monotonic()
    result = launch(2, "train", "--data", tmp_path / "nowhere", "--out", tmp_path / "run",
                    cwd=tmp_path, timeout=120)  # fmt: skip
    assert result.returncode != 0 and time.monotonic() - started < 120
    ours = [line for line in result.stderr.splitlines() if line.startswith("xpcnn: error:")]
    assert len(ours) >= 1 and "nowhere: no such file or folder" in ours[0]
    assert "Traceback" not in result.stderr


@needs_mpi
def test_a_rank_that_dies_takes_the_job_down_instead_of_hanging(tmp_path):
    data = write_folder(tmp_path / "noise", per_class=30, noise=True)
    script = tmp_path / "die.py"
    script.write_text(
        "import os, sys, threading\n"
        "from xpcnn.distributed import communicator\n"
        "from xpcnn.runs import train\n"
        "comm = communicator()\n"
        "if comm.rank == 1:  # dies while the job trains\n"
        "    threading.Timer(4.0, os._exit, (9,)).start()\n"
        "train({'data': sys.argv[1], 'epochs': 400, 'batch_size': 4}, sys.argv[2], comm=comm)\n"
    )
    env = {**os.environ, **MPI_ENV, "XPCNN_DATA": str(tmp_path / "home")}
    started = time.monotonic()
    result = subprocess.run(
        [MPIEXEC, "-n", "2", sys.executable, str(script), str(data), str(tmp_path / "run")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert result.returncode != 0
    assert time.monotonic() - started < 180
