"""What the tests of the `xpcnn` command share: small synthetic image folders, the command run as
a subprocess (alone, or as ranks under `mpiexec`), and readers for the checkpoints it writes.

The subprocesses inherit XPCNN_BACKEND, so they run on whichever backend the suite runs on.
"""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CLASSES = ["blue", "green", "red"]

MPIEXEC = shutil.which("mpiexec", path=f"{Path(sys.executable).parent}{os.pathsep}"
                       f"{os.environ.get('PATH', '')}")  # fmt: skip
MPI_ENV = {  # Open MPI refuses root unless told; loopback only, no oversubscription warning
    "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
    "OMPI_MCA_rmaps_base_oversubscribe": "1", "PYTHONWARNINGS": "ignore",
}  # fmt: skip


def write_folder(root: Path, per_class: int, noise: bool = False, seed: int = 0) -> Path:
    """ROOT/<class>/*.png of 16x16 images: told apart by their dominant colour channel, or
    (noise) pure noise, so a network keeps learning for every epoch of a short run."""
    rng = np.random.default_rng(seed)
    for channel, label in ((2, "blue"), (1, "green"), (0, "red")):
        (root / label).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 96 if not noise else 256, (16, 16, 3), dtype=np.uint8)
            if not noise:
                pixels[..., channel] += 128
            Image.fromarray(pixels).save(root / label / f"{i:03d}.png")
    return root


def command_env(home: Path) -> dict[str, str]:
    """The environment of a command whose data and cache live in `home` (XPCNN_DATA)."""
    return {**os.environ, "XPCNN_DATA": str(home), "PYTHONWARNINGS": "ignore"}


def xpcnn(*args, env) -> subprocess.CompletedProcess:
    """Run the command in the test's data folder (so a default --out lands there too)."""
    command = [sys.executable, "-m", "xpcnn", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, env=env,
                          cwd=env["XPCNN_DATA"], timeout=300)  # fmt: skip


def started(*args, env, stderr, ranks: int = 1) -> subprocess.Popen:
    """Start the command in the test's data folder; with `ranks` > 1, under `mpiexec -n ranks`."""
    command = [sys.executable, "-m", "xpcnn", *map(str, args)]
    if ranks > 1:
        command = [MPIEXEC, "-n", str(ranks), *command]
        env = {**env, **MPI_ENV}
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env,
                            cwd=env["XPCNN_DATA"])  # fmt: skip


def wait_for_text(path: Path, text: str, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while text not in path.read_text(errors="replace"):
        assert process.poll() is None, f"finished before {text!r}:\n{path.read_text()[-2000:]}"
        assert time.monotonic() < deadline, f"no {text!r} after {timeout} s"
        time.sleep(0.002)


def meta(checkpoint: Path) -> dict:
    with np.load(checkpoint, allow_pickle=False) as npz:
        return json.loads(str(npz["meta"][()]))


def arrays(checkpoint: Path) -> dict[str, np.ndarray]:
    with np.load(checkpoint, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files if k != "meta"}


def mpi_missing() -> str | None:
    """Why `mpiexec` runs cannot be tested here (None: they can)."""
    if MPIEXEC is None:
        return "no mpiexec: pip install 'xpcnn[mpi]'"
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return "no mpi4py: pip install 'xpcnn[mpi]'"
    return None


needs_mpi = pytest.mark.skipif(mpi_missing() is not None, reason=str(mpi_missing()))
