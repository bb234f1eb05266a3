"""The CPU image builds, and the `xpcnn` command works inside it without a network.

Needs a reachable Docker engine; skipped otherwise. Environment:
  XPCNN_DOCKER_BASE   base image passed as --build-arg BASE (default: the Dockerfile's)
The image is tagged xpcnn:test and kept, so a second run reuses the build cache.
"""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.docker

REPO = Path(__file__).resolve().parents[1]
IMAGE = "xpcnn:test"


def _docker(*args: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)


def _engine_missing() -> str | None:
    """Why no engine can be used, or None when `docker info` succeeds."""
    if shutil.which("docker") is None:
        return "no Docker client: `docker` is not on PATH"
    try:
        info = _docker("info", timeout=20)
    except subprocess.TimeoutExpired:
        return "no Docker engine reachable: docker info timed out"
    if info.returncode != 0:
        return "no Docker engine reachable: docker info failed"
    return None


@pytest.fixture(scope="module")
def image() -> str:
    reason = _engine_missing()
    if reason:
        pytest.skip(reason)
    build = ["build", "-f", "docker/Dockerfile", "-t", IMAGE]
    if base := os.environ.get("XPCNN_DOCKER_BASE"):
        build += ["--build-arg", f"BASE={base}"]
    # An engine started without a bridge (dockerd --bridge=none) can only build on the host network.
    networks = _docker("network", "ls", "--format", "{{.Name}}", timeout=20).stdout.split()
    if "bridge" not in networks:
        build += ["--network", "host"]
    result = subprocess.run(
        ["docker", *build, "."], cwd=REPO, capture_output=True, text=True, timeout=1800
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return IMAGE


def _run(image: str, *args: str, volumes: dict[Path, str] | None = None):
    mounts = [f"--volume={host}:{inside}" for host, inside in (volumes or {}).items()]
    user = f"--user={os.getuid()}:{os.getgid()}"  # so the mounted tmp_path folders are writable
    return _docker("run", "--rm", "--network=none", user, *mounts, image, *args, timeout=900)


def _write_image_folder(root: Path, per_class: int = 32, size: int = 32) -> None:
    """ROOT/<class>/*.png: two classes told apart by their dominant colour channel."""
    rng = np.random.default_rng(0)
    for label, channel in (("red", 0), ("blue", 2)):
        (root / label).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 96, (size, size, 3), dtype=np.uint8)
            pixels[..., channel] += 128
            Image.fromarray(pixels).save(root / label / f"{i:03d}.png")


def test_info_reports_the_numpy_backend_in_the_image(image):
    result = _run(image, "info")
    assert result.returncode == 0, result.stderr
    assert re.search(r"^backend\s+numpy\b", result.stdout, re.MULTILINE), result.stdout


def test_one_epoch_train_writes_a_checkpoint_and_history_in_the_image(image, tmp_path):
    data, runs = tmp_path / "data", tmp_path / "runs"
    _write_image_folder(data / "tiny")
    runs.mkdir()
    train = "train --data /data/tiny --limit 500 --epochs 1 --out /runs/x".split()
    result = _run(image, *train, volumes={data: "/data", runs: "/runs"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    history = json.loads((runs / "x" / "history.json").read_text())
    assert [record["epoch"] for record in history] == [1]
    assert (runs / "x" / "checkpoint.npz").stat().st_size > 0
