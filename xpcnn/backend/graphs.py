"""A step recorded once as a CUDA graph and replayed (CuPy): the backend's one way to launch many
array operations as one."""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from typing import Any

from xpcnn.backend import backend_name


def records() -> bool:
    """Whether `record` records here: CuPy with XPCNN_CUDA_GRAPH=1."""
    return backend_name() == "cupy" and os.environ.get("XPCNN_CUDA_GRAPH", "0").strip() == "1"


_RECORDINGS: list[Any] = []  # each recording's memory pool, kept for as long as it may replay


def record(work: Callable[[], Any]) -> tuple[Any, Callable[[], None]] | None:
    """Record `work`'s device operations once as a CUDA graph: (what work returned, replay),
    where replay() launches the whole recording on the current stream, one launch. The arrays
    work made live in the recording's own memory pool (never handed to other work), so each
    replay writes its results into the same arrays. None where the backend cannot record:
    every backend but CuPy, and CuPy unless XPCNN_CUDA_GRAPH=1 (off until a GPU has verified
    it). work must issue the same operations every time and read nothing back to the host."""
    if not records():
        return None
    cupy = importlib.import_module("cupy")
    pool = cupy.cuda.MemoryPool()
    stream = cupy.cuda.Stream(non_blocking=True)
    stream.wait_event(cupy.cuda.get_current_stream().record())  # after the work queued so far
    with cupy.cuda.using_allocator(pool.malloc), stream:
        stream.begin_capture(mode=cupy.cuda.runtime.streamCaptureModeRelaxed)
        try:
            result = work()
        finally:
            graph = stream.end_capture()
    _RECORDINGS.append(pool)

    def replay() -> None:
        graph.launch(stream=cupy.cuda.get_current_stream())

    return result, replay
