"""benchmarks/gpu_check.py, the one command for a real GPU, run small on the CPU: every step but
the GPU itself is exercised here, and so is a check cut short by its budget or killed."""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from cli_harness import write_folder

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
TITLES = [
    "Device and kernels",
    "Tests: layers, backend, data, training",
    "Speed against PyTorch, TF32 on",
    "Speed with TF32 off, per-layer profile, peak memory",
    "The fast preset trained with its recipe",
    "The rest of the test suite",
]
pytestmark = pytest.mark.skipif(
    os.environ.get("XPCNN_BACKEND", "numpy") != "numpy",
    reason="the script picks its own backend: run once, in the numpy pass",
)


def gpu_check(*args, cwd: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, str(SCRIPT), *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, env=in_tmp(cwd),
                          timeout=600)  # fmt: skip


def in_tmp(folder: Path) -> dict[str, str]:
    """The environment with its temporary files under `folder`: a killed check leaves its own."""
    return {**os.environ, "TMPDIR": str(folder)}


def statuses(out: Path) -> list[str]:
    return [step["status"] for step in json.loads((out / "report.json").read_text())["steps"]]


def test_a_quick_run_on_the_cpu_writes_a_report_of_every_step(tmp_path):
    data = write_folder(tmp_path / "colours", per_class=30)
    out = tmp_path / "out"
    result = gpu_check("--backend", "numpy", "--quick", "--data", data, "--out", out, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "bench-tf32-off.json", "bench-tf32-on.json", "history.json", "junit.xml", "report.json",
        "report.md",
    ]  # fmt: skip
    assert statuses(out) == ["passed"] * 6
    text = (out / "report.md").read_text()
    assert "6 of 6 steps passed." in text
    assert "kernels           ok" in text
    assert "| seed | 8 |" in text and "--no-tf32 --profile" in text
    assert "validation accuracy with TTA" in text
    assert [epoch["epoch"] for epoch in json.loads((out / "history.json").read_text())] == [1]
    suites = ET.parse(out / "junit.xml").getroot()
    assert [suite.get("name") for suite in suites] == [TITLES[1], TITLES[5]]
    for suite, step in zip(suites, (1, 5), strict=True):
        tail = "\n".join(json.loads((out / "report.json").read_text())["steps"][step]["tail"])
        assert f"{suite.get('tests')} passed" in tail and suite.get("failures") == "0"


@pytest.fixture(scope="module")
def short_budget(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """A check given 30 s: 15 s (the reserve kept back) for step 1, too little for the rest."""
    tmp_path = tmp_path_factory.mktemp("budget")
    out = tmp_path / "out"
    result = gpu_check("--backend", "numpy", "--quick", "--data", tmp_path / "none", "--budget",
                       30, "--out", out, cwd=tmp_path)  # fmt: skip
    return out, result


def test_a_budget_too_small_for_the_later_steps_skips_them_and_passes(short_budget):
    out, result = short_budget
    assert result.returncode == 0, result.stdout + result.stderr
    assert statuses(out) == ["passed"] + ["skipped: out of time"] * 5
    assert "1 of 6 steps passed; 5 skipped." in (out / "report.md").read_text()
    assert sorted(p.name for p in out.iterdir()) == ["report.json", "report.md"]


def test_each_step_is_announced_and_its_output_echoed_as_it_runs(short_budget):
    out, result = short_budget
    lines = result.stdout.splitlines()
    started = re.fullmatch(r"gpu-check: \[1/6\] Device and kernels: python -m xpcnn info "
                           r"\(up to (\d+) s\)", lines[0])  # fmt: skip
    assert started and 10 <= int(started[1]) <= 15
    done = lines.index("gpu-check: [1/6] Device and kernels: passed")
    assert "kernels           ok" in lines[1:done]
    assert lines[done + 1 : done + 7] == [
        *(f"gpu-check: [{n}/6] {title}: skipped: out of time" for n, title in enumerate(TITLES, 1)
          if n > 1),
        f"gpu-check: 1 of 6 steps passed; 5 skipped. Report: {out / 'report.md'}",
    ]  # fmt: skip


def test_a_check_killed_during_its_second_step_has_reported_the_first(tmp_path):
    out = tmp_path / "out"
    command = [sys.executable, str(SCRIPT), "--backend", "numpy", "--quick", "--data",
               str(tmp_path / "none"), "--out", str(out)]  # fmt: skip
    check = subprocess.Popen(command, cwd=tmp_path, env=in_tmp(tmp_path), stdout=subprocess.PIPE,
                             text=True, start_new_session=True)  # fmt: skip
    watchdog = threading.Timer(120, os.killpg, (check.pid, signal.SIGKILL))
    watchdog.start()
    line = ""
    try:
        for line in check.stdout:
            if line.startswith("gpu-check: [2/6]"):
                break
        os.killpg(check.pid, signal.SIGKILL)  # the check and the step it runs, as a timeout would
        check.wait()
    finally:
        watchdog.cancel()
    assert line.startswith("gpu-check: [2/6] Tests: layers, backend, data, training: python")
    assert statuses(out) == ["passed", "running"] + ["not run yet"] * 4
    text = (out / "report.md").read_text()
    assert "1 of 6 steps passed; 1 running, 4 not run yet." in text
    assert "`python -m xpcnn info`: passed, " in text and "kernels           ok" in text
    assert sorted(p.name for p in out.iterdir()) == ["report.json", "report.md"]


def test_a_failing_step_fails_the_check_and_says_which(tmp_path):
    out = tmp_path / "out"
    result = gpu_check("--backend", "nonesuch", "--quick", "--data", "", "--out", out,
                       cwd=tmp_path)  # fmt: skip
    assert result.returncode == 1
    assert statuses(out) == [
        "failed: exit 2", "failed: exit 1", "failed: exit 2", "failed: exit 2",
        "skipped: no --data (benchmarks/fetch-wheels.sh copies it to .gpu-data/)", "failed: exit 1",
    ]  # fmt: skip
    first = json.loads((out / "report.json").read_text())["steps"][0]
    assert (first["title"], first["status"]) == ("Device and kernels", "failed: exit 2")
    assert "xpcnn: error: XPCNN_BACKEND='nonesuch' is not a backend" in "\n".join(first["tail"])
    assert "0 of 6 steps passed; 5 failed, 1 skipped." in (out / "report.md").read_text()
