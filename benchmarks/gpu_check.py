"""The GPU check: everything that proves xpcnn's CUDA path, in one run, as one markdown report.

    benchmarks/gpu-check.sh [--data ARCHIVE] [--out gpu-report.md] [--epochs 14]

Steps, each with its command, exit status, wall time and output in the report:
  1. `xpcnn info` on the backend (its `kernels` line compiles and runs three kernels);
  2. the test suite under the backend, with its counts;
  3. `xpcnn bench` against PyTorch on the same device for seed and fast at batch 64 and 512,
     twice: TF32 on in both (CUPY_TF32=1, PyTorch's default) and off in both;
  4. the fast preset trained with its own recipe on DATA, with its wall time, then
     `xpcnn eval` on the validation split (the recipe's TTA);
  5. the CUDA Docker image built and run (`info`), where a Docker engine answers.

`--backend numpy --quick` runs the same steps small on a CPU: that is how CI tests this script.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="cupy", help="XPCNN_BACKEND for every step")
    parser.add_argument("--data", help="training images for step 4 (default: skip step 4)")
    parser.add_argument("--epochs", type=int, help="override the fast recipe's epochs")
    parser.add_argument("--out", default="gpu-report.md", help="the markdown report")
    parser.add_argument("--quick", action="store_true",
                        help="small settings, for testing this script on a CPU")  # fmt: skip
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="xpcnn-gpu-check-"))
    env = {**os.environ, "XPCNN_BACKEND": args.backend, "XPCNN_DATA": str(work / "data"),
           "PYTHONUNBUFFERED": "1", "PYTHONPATH": _pythonpath()}  # fmt: skip
    report = Report(Path(args.out), args.backend)
    xpcnn = [sys.executable, "-m", "xpcnn"]

    report.step("Device and kernels", [*xpcnn, "info"], env, timeout=120)
    tests = ["tests/test_layers.py", "tests/test_backend.py"] if args.quick else []
    report.step("Test suite", [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                               *tests], env, timeout=420, tail=12)  # fmt: skip
    sizes = ["--models", "seed", "--batch-sizes", "8", "--steps", "1", "--rounds", "1"]
    if not args.quick:
        sizes = ["--models", "seed,fast", "--batch-sizes", "64,512", "--memory-images", "5120"]
    for tf32, flags in (("on", []), ("off", ["--no-tf32"])):
        result = work / f"bench-tf32-{tf32}.json"
        report.step(
            f"Speed against PyTorch on the same device, TF32 {tf32}",
            [*xpcnn, "bench", *sizes, *flags, "--json", str(result)],
            {**env, "CUPY_TF32": "1" if tf32 == "on" else "0"}, timeout=600,
        )  # fmt: skip
        report.bench_table(result)
    if args.data:
        run = work / "fast"
        train = [*xpcnn, "train", "--model", "fast", "--data", args.data, "--out", str(run)]
        if args.epochs or args.quick:
            train += ["--epochs", str(args.epochs or 1)]
        if args.quick:
            train += ["--limit", "64", "--batch-size", "16"]
        report.step("The fast preset with its recipe", train, env, timeout=900, tail=8)
        evaluate = [*xpcnn, "eval", "--checkpoint", str(run / "checkpoint.npz"), "--split", "val"]
        report.step("Its validation accuracy", evaluate, env, timeout=300, tail=3)
    if args.quick:
        report.note("CUDA image", "skipped: --quick")
    elif shutil.which("docker") and _quiet(["docker", "info"]):
        build = ["docker", "build", "-f", "docker/Dockerfile.cuda", "-t", "xpcnn:cuda", "."]
        report.step("CUDA image: build", build, env, timeout=900, tail=5)
        report.step("CUDA image: info", ["docker", "run", "--rm", "--gpus", "all", "xpcnn:cuda",
                                         "info"], env, timeout=300)  # fmt: skip
    else:
        report.note("CUDA image", "skipped: no Docker engine answers `docker info` here")
    report.write()
    print(f"gpu-check: {report.failures} of {report.steps} steps failed; report: {args.out}")
    return 1 if report.failures else 0


class Report:
    def __init__(self, path: Path, backend: str) -> None:
        self.path, self.steps, self.failures = path, 0, 0
        self.lines = [f"# xpcnn GPU check ({time.strftime('%Y-%m-%d %H:%M')}, XPCNN_BACKEND="
                      f"{backend})", ""]  # fmt: skip

    def step(self, title: str, command: list[str], env: dict, timeout: int, tail: int = 40):
        self.steps += 1
        started = time.perf_counter()
        try:
            done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                                  timeout=timeout)  # fmt: skip
            status, output = str(done.returncode), done.stdout + done.stderr
        except subprocess.TimeoutExpired as err:
            status, output = f"timed out after {timeout} s", _text(err.stdout) + _text(err.stderr)
        seconds = time.perf_counter() - started
        self.failures += status != "0"
        shown = "\n".join(_lines(output)[-tail:])
        self.lines += [f"## {title}", "", f"`{shlex.join(command)}`: exit {status}, "
                       f"{seconds:.1f} s", "", "```", shown, "```", ""]  # fmt: skip

    def bench_table(self, result: Path) -> None:
        if not result.is_file():
            return
        rows = json.loads(result.read_text())["results"]
        self.lines += ["| model | batch | xpcnn ms/step | torch ms/step | ratio | eval ratio |",
                       "|---|---|---|---|---|---|"]  # fmt: skip
        for r in rows:
            self.lines.append(
                f"| {r['model']} | {r['batch']} | {r['xpcnn_train_ms']:.2f} | "
                f"{r.get('torch_train_ms', float('nan')):.2f} | "
                f"{r.get('train_ratio', float('nan')):.2f} | "
                f"{r.get('eval_ratio', float('nan')):.2f} |"
            )
        self.lines.append("")

    def note(self, title: str, text: str) -> None:
        self.lines += [f"## {title}", "", text, ""]

    def write(self) -> None:
        self.lines.insert(2, f"{self.steps - self.failures} of {self.steps} steps passed.\n")
        self.path.write_text("\n".join(self.lines) + "\n")


def _lines(text: str) -> list[str]:
    """Output as a terminal would show it: a progress bar's carriage returns keep the last."""
    return [line.rsplit("\r", 1)[-1] for line in text.splitlines()]


def _text(value: bytes | str | None) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value or ""


def _quiet(command: list[str]) -> bool:
    try:
        return subprocess.run(command, capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _pythonpath() -> str:
    return os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)


if __name__ == "__main__":
    sys.exit(main())
