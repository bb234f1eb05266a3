"""What the backend knows about reducing arrays across processes: NCCL between CuPy devices, and
whether a buffer is one MPI can reduce in place (host memory it can hand to MPI)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import numpy as np

from xpcnn.backend import backend_name, is_numpy, namespace


def nccl_available() -> bool:
    """Whether NCCL can reduce between this backend's devices (CuPy with its NCCL library)."""
    if backend_name() != "cupy":
        return False
    return bool(importlib.import_module("cupy.cuda.nccl").available)


def nccl_sum(size: int, rank: int, broadcast: Callable[[Any], Any]) -> Callable[[Any], None]:
    """An in-place sum of a CuPy buffer over `size` ranks through NCCL, on the current stream;
    `broadcast(value)` returns rank 0's value on every rank (NCCL's unique id travels by it).
    Gradients never leave the device."""
    cupy = importlib.import_module("cupy")
    nccl = importlib.import_module("cupy.cuda.nccl")
    uid = broadcast(nccl.get_unique_id() if rank == 0 else None)
    comm = nccl.NcclCommunicator(size, uid, rank)
    kinds = {np.dtype("float32"): nccl.NCCL_FLOAT32, np.dtype("float64"): nccl.NCCL_FLOAT64}

    def allreduce_sum(buffer: Any) -> None:
        stream = cupy.cuda.get_current_stream().ptr
        comm.allReduce(buffer.data.ptr, buffer.data.ptr, buffer.size, kinds[buffer.dtype],
                       nccl.NCCL_SUM, stream)  # fmt: skip

    return allreduce_sum


def host_buffer(buffer: Any) -> bool:
    """Whether MPI can reduce `buffer` in place: a NumPy array (others go through a host copy)."""
    return is_numpy(namespace(buffer))
