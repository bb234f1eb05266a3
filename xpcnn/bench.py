"""`xpcnn bench`: training and evaluation throughput against PyTorch, in the same process.

For each preset and batch size, xpcnn and its PyTorch twin (same layers, same weights, same
optimizer, on the same device: the GPU under CuPy) take turns: `rounds` times, `steps` timed
steps of one, then of the other, each ended by a device synchronisation. Medians of the per-step
times give the ratio xpcnn / PyTorch. The floor is the network's FLOPs divided by the float32
GEMM rate measured on that device. Peak memory of a training epoch is measured per framework in a
fresh subprocess: resident host memory on a CPU, the device's (CuPy's pool, PyTorch's peak
allocation) on a GPU. On a GPU, TF32 is PyTorch's default for convolutions and CuPy's only with
CUPY_TF32=1; `no_tf32` turns it off in PyTorch.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

import numpy as np

from xpcnn.backend import (
    asarray,
    device_info,
    device_memory_bytes,
    manual_seed,
    synchronize,
)
from xpcnn.info import system_info
from xpcnn.layers import Sequential
from xpcnn.models import build_model
from xpcnn.optim import SGD
from xpcnn.train import train_step
from xpcnn.twin import torch_twin

# --- the network as arithmetic -------------------------------------------------------------


def flops_per_image(model: Sequential, image_shape: tuple[int, ...]) -> tuple[int, int]:
    """(forward, training) FLOPs per image of `image_shape`, (C, H, W), as the layers count them
    (`Layer.flops`: the conv and dense GEMMs, a multiply-add counted as 2).

    Training = forward + weight gradient + input gradient, each a GEMM the size of the forward
    one, less the first layer's input gradient (Sequential.backward skips it in training) and
    the weight gradients of frozen weights (not computed).
    """
    rows = model.summary(image_shape).rows
    forward = sum(row.flops for row in rows)
    frozen = sum(row.flops for row in rows if "weight" in model[row.index].frozen)
    return forward, 3 * forward - rows[0].flops - frozen


def gemm_gflops(threads: int, size: int = 2048, repeats: int = 5) -> float:
    """Measured float32 GEMM rate on the active device (NumPy's BLAS on a CPU), best of
    `repeats`."""
    a = asarray(np.random.default_rng(0).standard_normal((size, size), dtype=np.float32))

    def gemm() -> None:
        a @ a
        synchronize()

    with _blas_threads(threads):
        gemm()
        best = min(_timed(gemm) for _ in range(repeats))
    return 2 * size**3 / best / 1e9


def torch_device() -> str:
    """Where the PyTorch twin runs: the GPU xpcnn runs on, else the CPU (like with like)."""
    device = str(device_info()["device"])
    return device if device.startswith("cuda") else "cpu"


# --- timing ---------------------------------------------------------------------------------


def _timed(fn: Any) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


class _blas_threads:
    """Limit NumPy's BLAS (and OpenMP) to n threads while inside, when threadpoolctl exists."""

    def __init__(self, n: int) -> None:
        self.n, self.limiter = n, None

    def __enter__(self) -> _blas_threads:
        try:
            from threadpoolctl import threadpool_limits

            self.limiter = threadpool_limits(self.n)
        except ImportError:
            pass
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.limiter is not None:
            self.limiter.restore_original_limits()


def _xpcnn_inputs(model: Sequential, batch: int, image_shape: tuple[int, ...]):
    """(x, y, optimizer) of xpcnn's training steps: a seeded random batch, Nesterov SGD."""
    rng = np.random.default_rng(0)
    x = asarray(rng.standard_normal((batch, *image_shape), dtype=np.float32))
    y = asarray(rng.integers(0, 10, batch), "int64")
    return x, y, SGD(model, lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)


def _xpcnn_runner(model: Sequential, batch: int, image_shape: tuple[int, ...]):
    x, y, optimizer = _xpcnn_inputs(model, batch, image_shape)

    def train(steps: int) -> None:
        for _ in range(steps):
            train_step(model, optimizer, x, y)
        synchronize()

    def evaluate(steps: int) -> None:
        model.eval()
        for _ in range(steps):
            model(x)
        synchronize()
        model.train()

    return train, evaluate


def _torch_inputs(
    twin: Any, batch: int, image_shape: tuple[int, ...], device: str = "cpu", foreach: Any = None
):
    """(x, y, optimizer) of the twin's training steps, the same as xpcnn's, on `device`;
    `foreach` as torch.optim.SGD takes it (None: PyTorch's choice, per-parameter on a CPU)."""
    import torch

    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal((batch, *image_shape), dtype=np.float32)).to(device)
    y = torch.from_numpy(rng.integers(0, 10, batch)).to(device)
    twin.to(device)
    optimizer = torch.optim.SGD(
        twin.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4,
        foreach=foreach,
    )  # fmt: skip
    return x, y, optimizer


def _torch_step(twin: Any, optimizer: Any, x: Any, y: Any) -> None:
    """One training step of the twin: what `xpcnn.train.train_step` does, in PyTorch."""
    import torch

    optimizer.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(twin(x), y).backward()
    optimizer.step()


def _torch_runner(twin: Any, batch: int, image_shape: tuple[int, ...], device: str = "cpu"):
    import torch

    x, y, optimizer = _torch_inputs(twin, batch, image_shape, device)

    def wait() -> None:
        if device != "cpu":
            torch.cuda.synchronize(device)

    def train(steps: int) -> None:
        for _ in range(steps):
            _torch_step(twin, optimizer, x, y)
        wait()

    def evaluate(steps: int) -> None:
        twin.eval()
        with torch.no_grad():
            for _ in range(steps):
                twin(x)
        wait()
        twin.train()

    return train, evaluate


def layer_profile(model: Sequential, batch: int, image_shape: tuple[int, ...], rounds: int):
    """Per layer of `model`, in the order they run: (name, forward ms, backward ms) of a
    training step at `batch`, the minimum over `rounds` after a warm-up; input gradients are
    computed where training computes them (`Sequential.input_grads_needed`); a layer behind a
    frozen prefix shows 0 ms backward."""
    channels, height, width = image_shape
    rng = np.random.default_rng(0)
    x = asarray(rng.standard_normal((batch, height, width, channels), dtype=np.float32))
    best = {i: [float("inf"), float("inf")] for i in model.execution_order()}

    def timed(index: int, phase: str, run: Any) -> Any:  # Sequential's walk, each layer timed
        start = time.perf_counter()
        out = run()
        synchronize()
        slot = 0 if phase == "forward" else 1
        best[index][slot] = min(best[index][slot], time.perf_counter() - start)
        return out

    for _ in range(rounds + 1):
        y = model.forward_channels_last(x, hook=timed)
        model.zero_grad()
        model.backward_channels_last(y * 0 + 1, input_grad=False, hook=timed)
    for times in best.values():  # behind a frozen prefix: no backward, shown as 0 ms
        times[1] = 0.0 if times[1] == float("inf") else times[1]
    return [(f"{i} {type(model[i]).__name__}", f * 1e3, b * 1e3) for i, (f, b) in best.items()]


def _print_profile(rows: list[tuple[str, float, float]]) -> None:
    total = sum(f + b for _, f, b in rows)
    for name, forward, backward in rows:
        share = (forward + backward) / total
        print(f"       {name:22} forward {forward:8.1f} ms  backward {backward:8.1f} ms  "
              f"{share:6.1%}")  # fmt: skip
    print(f"       {'all layers':22} {total:.1f} ms", flush=True)


def _alternate(runners: dict[str, Any], steps: int, rounds: int) -> dict[str, float]:
    """Median seconds per step of each runner, timed in alternating rounds after a warm-up."""
    for run in runners.values():
        run(2)
    samples: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            samples[name].append(_timed(lambda run=run: run(steps)) / steps)
    return {name: statistics.median(values) for name, values in samples.items()}


def bench_case(name: str, batch: int, args: argparse.Namespace, peer: bool) -> dict[str, Any]:
    image_shape = (3, 32, 32)
    manual_seed(0)
    model = build_model(name)
    forward_flops, training_flops = flops_per_image(model, image_shape)
    train_x, eval_x = _xpcnn_runner(model, batch, image_shape)
    train_runners, eval_runners = {"xpcnn": train_x}, {"xpcnn": eval_x}
    if peer:
        twin = torch_twin(model)
        train_t, eval_t = _torch_runner(twin, batch, image_shape, torch_device())
        train_runners["torch"], eval_runners["torch"] = train_t, eval_t
    train_s = _alternate(train_runners, args.steps, args.rounds)
    eval_s = _alternate(eval_runners, args.steps, args.rounds)
    result: dict[str, Any] = {
        "model": name,
        "batch": batch,
        "train_mflop_per_image": training_flops / 1e6,
        "forward_mflop_per_image": forward_flops / 1e6,
    }
    for who in train_s:
        result[f"{who}_train_ms"] = train_s[who] * 1e3
        result[f"{who}_train_img_s"] = batch / train_s[who]
        result[f"{who}_eval_img_s"] = batch / eval_s[who]
    if peer:
        result["train_ratio"] = train_s["xpcnn"] / train_s["torch"]
        result["eval_ratio"] = eval_s["xpcnn"] / eval_s["torch"]
    return result


def peak_memory_mib(framework: str, name: str, batch: int, images: int, threads: int) -> float:
    """Peak memory growth (MiB) of a fresh process training one epoch of `images` images: of
    the GPU's memory where xpcnn runs on one (CuPy's pool; PyTorch's peak allocation), else
    resident host memory."""
    code = (
        "import sys; from xpcnn.bench import _memory_child; "
        "before, after = _memory_child(*sys.argv[1:]); print(after - before)"
    )
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads))
    out = subprocess.run(
        [sys.executable, "-c", code, framework, name, str(batch), str(images), str(threads)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    return float(out.stdout.strip().splitlines()[-1]) / 1024.0


def _peak_rss_kib() -> int:
    """Peak resident memory of this process in KiB. Linux's VmHWM starts afresh at exec, unlike
    getrusage's ru_maxrss, which keeps the forking parent's peak."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _memory_child(framework: str, name: str, batch: str, images: str, threads: str):
    """Run in a subprocess: (peak RSS KiB before training, after one epoch)."""
    batch_size, count = int(batch), int(images)
    manual_seed(0)
    model = build_model(name)
    device = torch_device()
    if framework == "torch":
        import torch

        torch.set_num_threads(int(threads))
        train, _ = _torch_runner(torch_twin(model), batch_size, (3, 32, 32), device)
        if device != "cpu":
            before = torch.cuda.memory_allocated(device)
            train(max(count // batch_size, 1))
            return before // 1024, torch.cuda.max_memory_allocated(device) // 1024
    else:
        train, _ = _xpcnn_runner(model, batch_size, (3, 32, 32))
        if device != "cpu":
            before = device_memory_bytes()
            train(max(count // batch_size, 1))
            return before // 1024, device_memory_bytes() // 1024
    before = _peak_rss_kib()
    train(max(count // batch_size, 1))
    return before, _peak_rss_kib()


def run(args: argparse.Namespace) -> int:
    """`xpcnn bench` with its parsed arguments (see cli.py for their meaning)."""
    models = [m for m in args.models.split(",") if m]
    batches = [int(b) for b in args.batch_sizes.split(",") if b]
    peer = not args.no_peer
    if peer:
        try:
            import torch

            torch.set_num_threads(args.threads)
            if args.no_tf32:
                torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
        except ImportError:
            what = "counting" if args.ops else "timing"
            print(f"xpcnn bench: PyTorch is not installed; {what} xpcnn alone", file=sys.stderr)
            peer = False
    if args.ops:
        from xpcnn.bench_ops import run_ops

        return run_ops(args, models, batches, peer)
    info: dict[str, Any] = system_info()
    info["threads"] = str(args.threads)
    info["gemm_gflops"] = gemm_gflops(args.threads)
    where = info.get("gpu", f"{info['cpu']}, {info['cpus']} cpus, {args.threads} threads")
    print(
        f"# {where}; numpy {info['numpy']}{', torch ' + info['torch'] if peer else ''} on "
        f"{torch_device() if peer else '-'}; backend {info['backend']} on {info['device']}; "
        f"float32 GEMM {info['gemm_gflops']:.0f} GFLOP/s"
    )
    header = (
        f"{'model':7} {'batch':>5} {'xpcnn ms/step':>14} {'torch ms/step':>14} {'ratio':>6} "
        f"{'xpcnn img/s':>12} {'torch img/s':>12} {'floor ms':>9} {'eval ratio':>10}"
    )
    print(header)
    results = []
    with _blas_threads(args.threads):
        for name in models:
            for batch in batches:
                result = bench_case(name, batch, args, peer)
                floor_ms = (
                    result["train_mflop_per_image"]
                    * 1e6
                    * batch
                    / (info["gemm_gflops"] * 1e9)
                    * 1e3
                )
                result["floor_ms"] = floor_ms
                if args.memory_images:
                    for who in ("xpcnn", "torch") if peer else ("xpcnn",):
                        result[f"{who}_peak_mib"] = peak_memory_mib(
                            who, name, batch, args.memory_images, args.threads
                        )
                results.append(result)
                torch_ms = result.get("torch_train_ms", float("nan"))
                print(
                    f"{name:7} {batch:>5} {result['xpcnn_train_ms']:>14.1f} {torch_ms:>14.1f} "
                    f"{result.get('train_ratio', float('nan')):>6.2f} "
                    f"{result['xpcnn_train_img_s']:>12.0f} "
                    f"{result.get('torch_train_img_s', float('nan')):>12.0f} "
                    f"{floor_ms:>9.1f} {result.get('eval_ratio', float('nan')):>10.2f}",
                    flush=True,
                )
                if args.profile:
                    manual_seed(0)
                    rows = layer_profile(build_model(name), batch, (3, 32, 32), args.rounds)
                    result["profile_ms"] = {n: [f, b] for n, f, b in rows}
                    _print_profile(rows)
                if args.memory_images:
                    print(
                        f"       peak {'GPU' if torch_device() != 'cpu' else 'host'} memory of a "
                        f"{args.memory_images}-image epoch: xpcnn "
                        f"{result['xpcnn_peak_mib']:.0f} MiB"
                        + (f", torch {result['torch_peak_mib']:.0f} MiB" if peer else ""),
                        flush=True,
                    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "results": results}, f, indent=2)
    return 0
