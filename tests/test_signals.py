"""Stopping a run from outside, as `docker stop`, Kubernetes and batch schedulers do: SIGTERM (then
SIGKILL a few seconds later). One process stops as on Ctrl-C: the step in progress finishes (or
the validation in progress is abandoned), the last completed epoch's checkpoint stays, the command
that continues is printed, exit 143. Under `mpiexec` every rank stops together."""

import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from cli_harness import command_env, needs_mpi, started, wait_for_text, write_folder

from xpcnn.callbacks import StopOnSignal
from xpcnn.data import Batches
from xpcnn.models import build_model
from xpcnn.optim import SGD
from xpcnn.runs.folder import LOCK
from xpcnn.runs.record import load_run, restore_model
from xpcnn.train import Callback, Interrupted, fit

STOP_WITHIN = 10.0  # seconds from the signal to the exit: docker stop's grace before its SIGKILL
NOISE_RUN = ["--epochs", 3, "--batch-size", 4]  # 96 training images: 24 steps an epoch


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("signals")


@pytest.fixture(scope="module")
def env(workdir) -> dict[str, str]:
    home = workdir / "xpcnn-data"
    home.mkdir()
    return command_env(home)


@pytest.fixture(scope="module")
def noise(workdir) -> Path:
    return write_folder(workdir / "noise", per_class=40, noise=True, seed=1)


def wait_for_file(path: Path, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, f"finished before {path.name} was written"
        assert time.monotonic() < deadline, f"no {path.name} after {timeout} s"
        time.sleep(0.002)


def stopped_by(process: subprocess.Popen, signum: int) -> float:
    """Send `signum` to the process and wait for it to end; the seconds that took."""
    sent = time.monotonic()
    process.send_signal(signum)
    process.wait(timeout=120)
    return time.monotonic() - sent


def saved_epoch(out: Path) -> int:
    """The epoch the run's checkpoint holds, read and checked as `--resume` reads it, and its
    weights loaded into the network."""
    checkpoint, record = load_run(out / "checkpoint.npz")
    restore_model(checkpoint, record)
    return record.epoch


def test_sigterm_keeps_the_last_checkpoint_says_how_to_continue_and_exits_143(workdir, noise, env):
    out, log = workdir / "terminated", workdir / "terminated.log"
    with open(log, "w") as stderr:
        process = started("train", "--data", noise, *NOISE_RUN, "--out", out, env=env,
                          stderr=stderr)  # fmt: skip
        wait_for_file(out / "checkpoint.npz", process)
        seconds = stopped_by(process, signal.SIGTERM)
    message = log.read_text()
    assert process.returncode == 143
    assert seconds < STOP_WITHIN
    saved = saved_epoch(out)
    assert saved in (1, 2)
    assert "xpcnn: interrupted by SIGTERM in epoch " in message
    assert (
        f"holds epoch {saved}/3; continue with: xpcnn train --data {noise} --out {out} --resume"
        in message
    )
    assert not (out / LOCK).exists() and not list(out.glob(".*.part"))  # nothing half-written


@pytest.mark.skipif(os.environ.get("XPCNN_BACKEND", "numpy") != "numpy",
                    reason="times a validation of CPU speed")  # fmt: skip
def test_sigterm_during_a_long_validation_stops_within_seconds(workdir, env):
    """1% of 4,500 images trains (3 steps, fewer than the progress bar's 20 between figures), the
    rest validates at 32x32 (seconds on a CPU) and is abandoned between two of its batches."""
    data = write_folder(workdir / "many", per_class=1500)
    out, log = workdir / "validating", workdir / "validating.log"
    flags = ["--epochs", 2, "--batch-size", 16, "--val-split", 0.99, "--image-size", 32]
    with open(log, "w") as stderr:
        process = started("train", "--data", data, *flags, "--out", out, env=env, stderr=stderr)
        wait_for_text(log, "loss=", process)  # the bar's first figures: after the last step
        seconds = stopped_by(process, signal.SIGTERM)
    message = log.read_text()
    assert process.returncode == 143
    assert seconds < 5.0
    assert "interrupted by SIGTERM in epoch 1/2" in message
    assert "no epoch finished, nothing was saved" in message  # stopped inside epoch 1
    assert not (out / "checkpoint.npz").exists() and not (out / LOCK).exists()


def test_catching_signals_remembers_which_arrived_and_restores_the_handlers():
    seen = []
    outer = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    try:
        stopper, before = StopOnSignal(), signal.getsignal(signal.SIGTERM)
        with stopper.catching_signals():
            os.kill(os.getpid(), signal.SIGTERM)
            assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # a second one: at once
        assert (stopper.interrupt_requested, stopper.signum) == (True, signal.SIGTERM)
        assert seen == [] and signal.getsignal(signal.SIGTERM) is before
    finally:
        signal.signal(signal.SIGTERM, outer)


class Drawn:
    """`batches` of (x, y) batches that count how many were drawn and set `asker`'s request
    while batch `at` is drawn, as a signal arriving then would."""

    def __init__(self, x, y, batches: int, asker: Callback, at: int) -> None:
        self.x, self.y, self.batches, self.asker, self.at = x, y, batches, asker, at
        self.drawn = 0

    def __len__(self) -> int:
        return self.batches

    def epoch(self, epoch: int):
        for i in range(self.batches):
            self.drawn += 1
            if i == self.at:
                self.asker.interrupt_requested = True
            yield self.x, self.y


def test_a_stop_asked_during_validation_abandons_it_before_the_next_batch():
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (8, 3, 16, 16), dtype=np.uint8), np.arange(8) % 3
    model = build_model("seed", num_classes=3, image_size=16)
    train = Batches(images, labels, 8, seed=0)
    x, y = next(Batches(images, labels, 8, shuffle=False).epoch(0))
    asker = Callback()
    val = Drawn(x, y, batches=100, asker=asker, at=3)
    with pytest.raises(Interrupted) as stop:
        fit(model, train, optimizer=SGD(model, lr=0.01), epochs=2, val=val, callbacks=[asker])
    assert val.drawn == 4  # batches 0-2 scored; batch 3 drawn, then the request seen
    assert stop.value.epoch == 1  # the first epoch (counted from 1, as reported)


def ranks_alive(out: Path) -> list[int]:
    """Processes whose command line names the run folder `out` (the job's ranks)."""
    alive = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and str(out).encode() in (entry / "cmdline").read_bytes():
                alive.append(int(entry.name))
        except OSError:  # ended while looked at
            pass
    return alive


def gone(out: Path, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while ranks_alive(out) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not ranks_alive(out)


@needs_mpi
def test_sigterm_to_mpiexec_ends_every_rank_at_once_and_keeps_the_last_checkpoint(
    workdir, noise, env
):
    """Open MPI's own stop: on SIGTERM (or SIGINT) mpiexec sends the ranks SIGTERM, SIGKILL
    0.25 s later, and exits 1 (PRRTE's `clean_abort`, `kill_local_procs`): too soon for a
    graceful stop, but the checkpoint of the last completed epoch is whole."""
    out, log = workdir / "mpi-terminated", workdir / "mpi-terminated.log"
    with open(log, "w") as stderr:
        process = started("train", "--data", noise, *NOISE_RUN, "--out", out, env=env,
                          stderr=stderr, ranks=2)  # fmt: skip
        wait_for_file(out / "checkpoint.npz", process)
        seconds = stopped_by(process, signal.SIGTERM)
    assert process.returncode == 1
    assert seconds < STOP_WITHIN
    assert gone(out)
    assert saved_epoch(out) in (1, 2)


@needs_mpi
def test_sigusr1_to_mpiexec_stops_every_rank_together_as_sigterm_stops_one_process(
    workdir, noise, env
):
    """mpiexec passes SIGUSR1 on to every rank without killing them: the ranks decide together
    at their next exchange of progress, rank 0 says how to continue, each exits 128 + 10."""
    out, log = workdir / "mpi-usr1", workdir / "mpi-usr1.log"
    with open(log, "w") as stderr:
        process = started("train", "--data", noise, *NOISE_RUN, "--out", out, env=env,
                          stderr=stderr, ranks=2)  # fmt: skip
        wait_for_file(out / "checkpoint.npz", process)
        seconds = stopped_by(process, signal.SIGUSR1)
    message = log.read_text()
    assert process.returncode == 128 + signal.SIGUSR1
    assert seconds < STOP_WITHIN
    assert gone(out)
    saved = saved_epoch(out)
    assert saved in (1, 2)
    assert message.count("xpcnn: interrupted by SIGUSR1 in epoch ") == 1  # rank 0 alone
    assert (
        f"holds epoch {saved}/3; continue with: xpcnn train --data {noise} --out {out} --resume"
        in message
    )
    assert not (out / LOCK).exists() and not list(out.glob(".*.part"))  # nothing half-written
