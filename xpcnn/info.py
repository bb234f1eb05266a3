"""What this machine computes with: backend, device, CPU, library versions, the BLAS and its
threads — for `xpcnn info` and the header of `xpcnn bench`."""

from __future__ import annotations

import os
import platform
from importlib import metadata

import numpy as np

import xpcnn
from xpcnn.backend import backend_name, check_kernels, device_info


def version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def system_info() -> dict[str, str]:
    """Ordered name -> value lines; a `gpu` line only where the backend runs on one."""
    info = {
        "xpcnn": xpcnn.__version__,
        "backend": f"{backend_name()} (XPCNN_BACKEND={os.environ.get('XPCNN_BACKEND') or 'unset'})",
    }
    device = device_info()
    info["device"] = device["device"]
    info["kernels"] = check_kernels()
    if "gpu" in device:
        info["gpu"] = (
            f"{device['gpu']}, {device['memory_total_gib']} GiB "
            f"({device['memory_free_gib']} GiB free), CUDA runtime {device['cuda_runtime']}"
        )
    info["python"] = platform.python_version()
    info["numpy"] = np.__version__
    installed = (version(p) for p in ("cupy", "cupy-cuda13x", "cupy-cuda12x", "cupy-cuda11x"))
    info["cupy"] = next((v for v in installed if v != "not installed"), "not installed")
    for package in ("torch", "array-api-compat", "array-api-strict", "matplotlib"):
        info[package] = version(package)
    info["blas"], info["threads"] = blas()
    info["cpu"] = cpu_name()
    info["cpus"] = str(cpu_count())
    return info


def cpu_count() -> int:
    """CPUs this process may run on (its affinity), else all of the machine's."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def blas() -> tuple[str, str]:
    """(BLAS name and version, thread count): threadpoolctl when installed, else NumPy's build
    configuration and the usual thread environment variables."""
    try:
        from threadpoolctl import threadpool_info

        pools = [p for p in threadpool_info() if p.get("user_api") == "blas"]
        if pools:
            pool = pools[0]
            return (
                f"{pool.get('internal_api')} {pool.get('version') or ''}".strip(),
                str(pool.get("num_threads")),
            )
    except ImportError:
        pass
    name = "unknown"
    try:
        found = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        name = f"{found.get('name', 'unknown')} {found.get('version', '')}".strip()
    except (TypeError, KeyError, AttributeError):
        pass
    for variable in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS"):
        if os.environ.get(variable):
            return name, f"{os.environ[variable]} ({variable})"
    return name, f"{os.cpu_count()} (default: one per CPU; install threadpoolctl to be sure)"
