"""The GPU check: what proves xpcnn's CUDA path, in one call of at most `--budget` seconds.

    benchmarks/gpu-check.sh --out $OUT [--data ARCHIVE] [--budget 480]

Steps, most valuable first; each one's time limit is the least of its cap and the time left
(less a reserve for the report), and a step that would get less than it needs is reported as
"skipped: out of time". Estimates for an H200 (cupy-cuda13x, a fresh kernel cache):

  1. `xpcnn info`, whose `kernels` line compiles and runs three kernels.     ~15 s, cap 60 s
  2. the test modules of layers, backend, data and training under the
     backend, each failure named with its reason (`-rfE`).                  ~120 s, cap 150 s
  3. `xpcnn bench` against PyTorch on the same GPU, seed and fast at batch
     64 and 512, TF32 on in both (CUPY_TF32=1, PyTorch's default): CUDA and
     PyTorch start ~10 s, kernels compile ~30 s, 4 cases x 2 frameworks x
     (2 + 5 x 3) train and eval steps ~15 s.                                ~60 s, cap 90 s
  4. fast at batch 512 with TF32 off in both (CUPY_TF32=0, --no-tf32), its
     per-layer profile and the peak memory of a 5,120-image epoch (two
     fresh processes, ~10 s each).                                          ~45 s, cap 75 s
  5. the fast preset trained with its recipe on DATA (decoding 50,000 JPEGs
     on 8 processes ~10 s); stopped with Ctrl-C at the cap, so a slow run
     still leaves the epochs it finished in history.json.                  ~180 s, cap 180 s
  6. the rest of the suite, in what is left.                              ~45 s, the rest
     (reserve for the report: 15 s; the estimates add up to 480 s)

After every step (and before it, marked "running") the folder `--out` is rewritten: report.md,
report.json (each step's title, command, status, seconds and output tail), junit.xml (the
pytest steps), bench-tf32-on.json, bench-tf32-off.json and the run's history.json, so a call
killed halfway still returns the steps done. Each child's output is echoed line by line as it
comes.

`--backend numpy --quick` runs the same steps small on a CPU: that is how CI tests this script.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parents[1]
RESERVE = 15  # seconds kept back at every step: a stopped child's grace, then the report
GRACE = 10  # seconds a child has after Ctrl-C to write its summary before it is killed
CORE_TESTS = [
    "tests/test_layers.py", "tests/test_backend.py", "tests/test_winograd.py",
    "tests/test_threads.py", "tests/test_train.py", "tests/test_optim.py",
    "tests/test_losses.py", "tests/test_data_pipeline.py", "tests/test_torch_parity.py",
    "tests/test_cupy.py",
]  # fmt: skip
OUTPUTS = ("report.md", "report.json", "junit.xml", "bench-tf32-on.json", "bench-tf32-off.json",
           "history.json")  # fmt: skip


@dataclass
class Step:
    """One command of the check: its limits, then what running it found."""

    title: str
    command: list[str]
    cap: float  # seconds at most
    needs: float  # the least time worth starting it with
    env: dict[str, str] = field(default_factory=dict)  # on top of the check's own
    tail: int = 40  # output lines kept in the report
    junit: Path | None = None  # the JUnit XML pytest writes
    bench: Path | None = None  # the JSON `xpcnn bench` writes
    keep: Path | None = None  # a file copied into the out folder afterwards
    status: str = "not run yet"
    seconds: float = 0.0
    output: list[str] = field(default_factory=list)


def main(argv: list[str] | None = None) -> int:
    started = time.monotonic()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="cupy", help="XPCNN_BACKEND for every step")
    parser.add_argument("--data", default=_default_data(),
                        help="training images for step 5 (default: .gpu-data/train.tar.gz "
                             "where it exists, else step 5 is skipped)")  # fmt: skip
    parser.add_argument("--epochs", type=int, help="override the fast recipe's epochs")
    parser.add_argument("--train-seconds", type=float, default=180,
                        help="step 5's cap (default: 180)")  # fmt: skip
    parser.add_argument("--budget", type=float, default=480,
                        help="seconds for the whole check (default: 480)")  # fmt: skip
    parser.add_argument("--out", type=Path, default=Path("gpu-report"),
                        help="folder for the report files (default: gpu-report)")  # fmt: skip
    parser.add_argument("--quick", action="store_true",
                        help="small settings, for testing this script on a CPU")  # fmt: skip
    args = parser.parse_args(argv)
    sys.stdout.reconfigure(errors="replace")
    args.out.mkdir(parents=True, exist_ok=True)
    for name in OUTPUTS:  # an earlier run's files would pass for this one's
        (args.out / name).unlink(missing_ok=True)
    work = Path(tempfile.mkdtemp(prefix="xpcnn-gpu-check-"))
    env = {**os.environ, "XPCNN_BACKEND": args.backend, "XPCNN_DATA": str(work / "data"),
           "PYTHONUNBUFFERED": "1", "PYTHONPATH": _pythonpath()}  # fmt: skip
    try:
        return check(args, env, work, started)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def check(args: argparse.Namespace, env: dict[str, str], work: Path, started: float) -> int:
    """Run the steps in order within the budget, rewriting the report around each."""
    steps = plan(args, work)
    report = Report(args.out, args.backend, args.budget, started, steps)
    deadline = started + args.budget
    for number, step in enumerate(steps, 1):
        label = f"gpu-check: [{number}/{len(steps)}] {step.title}"
        timeout = min(step.cap, deadline - time.monotonic() - RESERVE)
        if step.status == "not run yet" and timeout < step.needs:
            step.status = "skipped: out of time"
        elif step.status == "not run yet":
            step.status = "running"
            report.write()
            print(f"{label}: {_display(step.command)} (up to {timeout:.0f} s)", flush=True)
            run(step, {**env, **step.env}, timeout)
            if step.keep is not None and step.keep.is_file():
                shutil.copyfile(step.keep, args.out / step.keep.name)
        report.write()
        print(f"{label}: {step.status}", flush=True)
    print(f"gpu-check: {report.summary()} Report: {args.out / 'report.md'}", flush=True)
    for number, step in enumerate(steps, 1):
        print(f"  {number}. {step.title}: {step.status}", flush=True)
    return 1 if report.count("failed") else 0


def plan(args: argparse.Namespace, work: Path) -> list[Step]:
    """The six steps, in order of value, sized for the GPU (or, with --quick, for a test)."""
    xpcnn = [sys.executable, "-m", "xpcnn"]
    out = args.out.resolve()
    small = ["--models", "seed", "--batch-sizes", "8", "--steps", "1", "--rounds", "1"]
    sizes = small if args.quick else ["--models", "seed,fast", "--batch-sizes", "64,512",
                                      "--steps", "5", "--rounds", "3"]  # fmt: skip
    large = small if args.quick else ["--models", "fast", "--batch-sizes", "512", "--steps", "5",
                                      "--rounds", "3", "--memory-images", "5120"]  # fmt: skip
    core = ["tests/test_losses.py"] if args.quick else CORE_TESTS
    rest = ["tests/test_init.py"] if args.quick else ["tests", *_ignored(CORE_TESTS)]
    steps = [
        Step("Device and kernels", [*xpcnn, "info"], cap=60, needs=10),
        _pytest("Tests: layers, backend, data, training", core, work / "junit-core.xml", 150),
        Step("Speed against PyTorch, TF32 on",
             [*xpcnn, "bench", *sizes, "--json", str(out / "bench-tf32-on.json")],
             cap=90, needs=45, env={"CUPY_TF32": "1"}, bench=out / "bench-tf32-on.json"),
        Step("Speed with TF32 off, per-layer profile, peak memory",
             [*xpcnn, "bench", *large, "--no-tf32", "--profile", "--json",
              str(out / "bench-tf32-off.json")],
             cap=75, needs=30, env={"CUPY_TF32": "0"}, bench=out / "bench-tf32-off.json"),
    ]  # fmt: skip
    folder = work / "fast"
    train = [*xpcnn, "train", "--model", "fast", "--data", str(args.data), "--out", str(folder)]
    if args.epochs or args.quick:
        train += ["--epochs", str(args.epochs or 1)]
    if args.quick:
        train += ["--limit", "64", "--batch-size", "16"]
    steps.append(Step("The fast preset trained with its recipe", train, cap=args.train_seconds,
                      needs=60, tail=30, keep=folder / "history.json"))  # fmt: skip
    if not args.data:
        steps[-1].status = "skipped: no --data (benchmarks/fetch-wheels.sh copies it to .gpu-data/)"
    steps.append(_pytest("The rest of the test suite", rest, work / "junit-rest.xml", args.budget))
    return steps


def _pytest(title: str, tests: list[str], junit: Path, cap: float) -> Step:
    command = [sys.executable, "-m", "pytest", "-q", "-rfE", "--tb=short", "-p", "no:cacheprovider",
               f"--junitxml={junit}", "-o", f"junit_suite_name={title}", *tests]  # fmt: skip
    return Step(title, command, cap=cap, needs=20, tail=150, junit=junit)


def _ignored(tests: list[str]) -> list[str]:
    return [f"--ignore={test}" for test in tests]


def run(step: Step, env: dict[str, str], timeout: float) -> None:
    """Run `step`, echoing its output (stdout and stderr, in order) line by line as it comes.
    At the timeout it gets Ctrl-C, so pytest still prints its summary and writes its JUnit file
    and training its history; GRACE seconds later it is killed."""
    started = time.monotonic()
    child = subprocess.Popen(step.command, cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             preexec_fn=_default_sigint)  # fmt: skip
    echo = threading.Thread(target=_echo, args=(child.stdout, step.output), daemon=True)
    echo.start()
    try:
        returncode = child.wait(timeout)
    except subprocess.TimeoutExpired:
        returncode = None
        child.send_signal(signal.SIGINT)
        try:
            child.wait(GRACE)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    except BaseException:
        child.kill()
        raise
    echo.join(GRACE)  # a grandchild left running may hold the pipe open
    if not echo.is_alive():
        child.stdout.close()
    step.seconds = time.monotonic() - started
    if returncode is None:
        step.status = f"timed out after {timeout:.0f} s"
    else:
        step.status = "passed" if returncode == 0 else f"failed: exit {returncode}"


def _echo(pipe: IO[bytes], lines: list[str]) -> None:
    for raw in pipe:  # split at "\n" alone: a progress bar's "\r" redraws stay one line
        line = raw.decode(errors="replace").rstrip("\r\n").rsplit("\r", 1)[-1].rstrip()
        print(line, flush=True)
        lines.append(line)


def _default_sigint() -> None:
    """In the child: Ctrl-C back to Python's KeyboardInterrupt, even where this check was started
    with SIGINT ignored (a background job of a shell without job control)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Report:
    """The out folder's report.md, report.json and junit.xml, rewritten whole each time."""

    def __init__(self, out: Path, backend: str, budget: float, started: float, steps: list[Step]):
        self.out, self.backend, self.budget, self.started = out, backend, budget, started
        self.steps = steps
        self.date = time.strftime("%Y-%m-%d %H:%M")

    def count(self, kind: str) -> int:
        return sum(_kind(step.status) == kind for step in self.steps)

    def summary(self) -> str:
        text = f"{self.count('passed')} of {len(self.steps)} steps passed"
        others = [f"{n} {kind}" for kind in ("failed", "skipped", "running", "not run yet")
                  if (n := self.count(kind))]  # fmt: skip
        return text + ("; " + ", ".join(others) if others else "") + "."

    def write(self) -> None:
        elapsed = time.monotonic() - self.started
        record = {
            "date": self.date,
            "backend": self.backend,
            "budget_s": self.budget,
            "elapsed_s": round(elapsed, 1),
            "summary": self.summary(),
            "steps": [
                {"title": s.title, "command": _display(s.command), "status": s.status,
                 "seconds": round(s.seconds, 1), "tail": s.output[-s.tail:]}
                for s in self.steps
            ],
        }  # fmt: skip
        _replace(self.out / "report.json", json.dumps(record, indent=1) + "\n")
        _replace(self.out / "report.md", self.markdown(elapsed))
        suites = ET.Element("testsuites")
        for step in self.steps:
            if step.junit is not None and step.junit.is_file():
                try:
                    root = ET.parse(step.junit).getroot()
                except ET.ParseError:
                    continue
                suites.extend([root] if root.tag == "testsuite" else list(root))
        if len(suites):
            xml = ET.tostring(suites, encoding="unicode", xml_declaration=True)
            _replace(self.out / "junit.xml", xml + "\n")

    def markdown(self, elapsed: float) -> str:
        lines = [
            f"# xpcnn GPU check ({self.date}, XPCNN_BACKEND={self.backend})",
            "",
            f"{self.summary()} {elapsed:.0f} s of the {self.budget:.0f} s budget.",
            "",
        ]
        for step in self.steps:
            took = f", {step.seconds:.1f} s" if step.seconds else ""
            lines += [
                f"## {step.title}",
                "",
                f"`{_display(step.command)}`: {step.status}{took}",
                "",
            ]
            if step.output:
                lines += ["```", *step.output[-step.tail :], "```", ""]
            if step.bench is not None:
                lines += _bench_table(step.bench)
        return "\n".join(lines) + "\n"


def _kind(status: str) -> str:
    """passed, failed (a timeout is a failure), skipped, running or not run yet."""
    if status.startswith(("failed", "timed out")):
        return "failed"
    return "skipped" if status.startswith("skipped") else status


def _bench_table(result: Path) -> list[str]:
    try:
        rows = json.loads(result.read_text())["results"]
    except (OSError, ValueError, KeyError):
        return []
    nan = float("nan")
    lines = ["| model | batch | xpcnn ms/step | torch ms/step | ratio | eval ratio |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['batch']} | {r['xpcnn_train_ms']:.2f} | "
            f"{r.get('torch_train_ms', nan):.2f} | {r.get('train_ratio', nan):.2f} | "
            f"{r.get('eval_ratio', nan):.2f} |"
        )
    return [*lines, ""]


def _replace(path: Path, text: str) -> None:
    """Write `path` whole or not at all. Not xpcnn.files.atomic_file: the check must report even
    when the library it checks does not import."""
    part = path.with_name(f".{path.name}.part")
    part.write_text(text)
    os.replace(part, path)


def _display(command: list[str]) -> str:
    return shlex.join("python" if word == sys.executable else word for word in command)


def _default_data() -> str | None:
    archive = ROOT / ".gpu-data" / "train.tar.gz"
    return str(archive) if archive.is_file() else None


def _pythonpath() -> str:
    return os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)


if __name__ == "__main__":
    sys.exit(main())
