"""The examples run end to end on a tiny image folder for one epoch."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from cli_harness import write_folder

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return write_folder(tmp_path_factory.mktemp("examples") / "colours", per_class=10)


def run_example(name: str, *args, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "XPCNN_DATA": str(cwd / "xpcnn-data"), "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, str(EXAMPLES / name), *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_train_cifar10_example_reports_validation_accuracy_for_a_folder(folder, tmp_path):
    result = run_example("train_cifar10.py", "--data", folder, "--epochs", 1, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "train 24, validation 6" in result.stdout
    assert result.stdout.splitlines()[-1].startswith("validation accuracy")


def test_custom_dataset_example_trains_and_predicts(folder, tmp_path):
    result = run_example("custom_dataset.py", folder, "--epochs", 1, "--out", "run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "run" / "checkpoint.npz").is_file()
    predictions = [
        line
        for line in result.stdout.splitlines()
        if line.endswith(tuple("0123456789")) and ".png: " in line
    ]
    assert len(predictions) == 5
