"""benchmarks/gpu_check.py, the one command for a real GPU, run small on the CPU: every step but
the GPU itself is exercised here."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_cli import write_folder

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(
    os.environ.get("XPCNN_BACKEND", "numpy") != "numpy",
    reason="the script picks its own backend: run once, in the numpy pass",
)


def gpu_check(*args, cwd: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, timeout=600)


def test_a_quick_run_on_the_cpu_writes_a_report_of_every_step(tmp_path):
    data = write_folder(tmp_path / "colours", per_class=30)
    report = tmp_path / "report.md"
    result = gpu_check("--backend", "numpy", "--quick", "--data", data, "--out", report,
                       cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    text = report.read_text()
    assert "6 of 6 steps passed." in text
    assert "kernels           ok" in text
    assert "| seed | 8 |" in text and "TF32 off" in text
    assert "validation accuracy" in text.lower() and "accuracy " in text


def test_a_failing_step_fails_the_check_and_says_which(tmp_path):
    report = tmp_path / "report.md"
    result = gpu_check("--backend", "nonesuch", "--quick", "--out", report, cwd=tmp_path)
    assert result.returncode == 1
    text = report.read_text()
    assert "## Device and kernels" in text and "exit 2" in text
    assert "XPCNN_BACKEND='nonesuch' is not a backend" in text
