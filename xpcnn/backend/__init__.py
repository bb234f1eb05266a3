"""The only package that knows one array library from another (this module, and `random`).

`XPCNN_BACKEND` picks the array namespace: ``numpy`` (default), ``cupy``, ``auto`` (CuPy when a
CUDA device is usable, else NumPy), or any other namespace `array-api-compat` can wrap
(``array_api_strict``, ``torch``). Everything else in xpcnn calls `namespace(x)` (the arrays'
namespace, by convention named `xp`) or `active_namespace()` and the small functions below, one
per gap of the array API standard:

    Generator       seeded random numbers made on the array's device
    to_numpy        device array -> host NumPy array
    asarray         host data -> array of the active backend (on its device)
    sliding_windows every kh×kw window of an image batch, a strided view where the library has one
    row_sum         Σ over the rows of a matrix: a GEMV on NumPy, one reduction elsewhere
    whole_arrays    whether passes run whole (an accelerator) or in cache-sized blocks (NumPy)
    for_blocks      an element-wise pass block by block: in cache, and on every core with NumPy
    precise_matmul  a GEMM kept in float32 where CuPy would run it in TF32
    quiet_float_errors  inf and NaN without NumPy's warnings (a diverging loss)
    synchronize     wait for queued device work (timing)
    device_info     name and memory of the device, for `xpcnn info`
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import cache
from typing import Any

import array_api_compat
import numpy as np

BACKENDS = ("numpy", "cupy", "auto", "array_api_strict", "torch")
_PIP_EXTRA = {
    "cupy": "pip install 'xpcnn[cupy]'  (CUDA 12 drivers; 'xpcnn[cupy-cuda13]' for CUDA 13)",
    "array_api_strict": "pip install 'xpcnn[strict]'",
    "torch": "pip install torch",
}


class BackendError(RuntimeError):
    """The requested array backend cannot be used; the message says how to fix it."""


def backend_name() -> str:
    """The backend asked for by XPCNN_BACKEND, resolved (`auto` becomes numpy or cupy)."""
    name = os.environ.get("XPCNN_BACKEND", "numpy").strip().lower() or "numpy"
    if name not in BACKENDS:
        raise BackendError(
            f"XPCNN_BACKEND={name!r} is not a backend (expected one of {', '.join(BACKENDS)})"
        )
    if name == "auto":
        return "cupy" if cuda_available() else "numpy"
    return name


def cuda_available() -> bool:
    """True when CuPy imports and sees at least one CUDA device."""
    try:
        cupy = importlib.import_module("cupy")
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # ImportError, CUDARuntimeError without a driver, ...
        return False


@cache
def _load(name: str) -> Any:
    module = {"numpy": "numpy", "cupy": "cupy", "array_api_strict": "array_api_strict"}.get(
        name, name
    )
    try:
        lib = importlib.import_module(module)
    except ImportError:
        raise BackendError(
            f"XPCNN_BACKEND={name} but {module} is not installed: {_PIP_EXTRA[name]}"
        ) from None
    if name == "cupy" and not cuda_available():
        raise BackendError("XPCNN_BACKEND=cupy but CuPy finds no usable CUDA device")
    if name == "array_api_strict":
        return lib
    return array_api_compat.array_namespace(lib.asarray([0.0]))


def active_namespace() -> Any:
    """The active array namespace (array-API compatible)."""
    return _load(backend_name())


def active_device() -> Any:
    """The device every array is created on, chosen here and nowhere else: XPCNN_DEVICE resolved
    for the active backend (`cpu`; `cuda:N` for CuPy and torch; array_api_strict's `CPU_DEVICE`,
    `device1`, ...); without it, in a process an MPI launcher started, the local rank's device
    (`local_rank % count` of CuPy's GPUs, or of array_api_strict's extra devices, which stand in
    for them in tests), so the ranks of one machine never share a GPU whatever first asks for
    the device; else the backend's default. A device the backend does not have is a
    BackendError."""
    from xpcnn.distributed import launched_local_rank  # the owner of ranks; reads the launcher

    name = os.environ.get("XPCNN_DEVICE", "").strip()
    return _device(backend_name(), name, None if name else launched_local_rank())


@cache
def _device(backend: str, name: str, local_rank: int | None = None) -> Any:
    xp = _load(backend)
    if backend == "cupy":
        cupy = importlib.import_module("cupy")
        devices = {f"cuda:{i}": i for i in range(cupy.cuda.runtime.getDeviceCount())}
        if name and name not in devices:
            raise _no_device(backend, name, devices)
        if name:
            device = cupy.cuda.Device(devices[name])
        elif local_rank is not None:
            device = cupy.cuda.Device(local_rank % len(devices))
        else:
            device = cupy.cuda.Device()
        device.use()  # CuPy creates arrays on its current device
        return device
    if backend == "torch":
        torch = importlib.import_module("torch")
        cuda = [f"cuda:{i}" for i in range(torch.cuda.device_count())]
        if name and name not in ("cpu", *cuda):
            raise _no_device(backend, name, ["cpu", *cuda])
        return torch.device(name or "cpu")
    if backend == "array_api_strict":
        info = xp.__array_namespace_info__()
        devices = {device_name(d): d for d in info.devices()}
        if name and name not in devices:
            raise _no_device(backend, name, devices)
        # device1, device2: its stand-ins for accelerators (the others restrict dtypes)
        extra = [d for d in info.devices() if device_name(d).startswith("device")]
        if not name and local_rank is not None and extra:
            return extra[local_rank % len(extra)]
        return devices[name] if name else info.default_device()
    if name and name != "cpu":
        raise _no_device(backend, name, ["cpu"])
    return "cpu"


def _no_device(backend: str, name: str, devices: Any) -> BackendError:
    return BackendError(
        f"XPCNN_DEVICE={name!r}: the {backend} backend has no such device "
        f"(it has: {', '.join(devices) or 'none'})"
    )


def device_name(device: Any) -> str:
    """A device as XPCNN_DEVICE names it: `cpu`, `cuda:0`, `device1` (array_api_strict's
    devices print as `Device('device1')`)."""
    text = str(device)
    return text.split("'")[1] if "'" in text else text


def device(x: Any) -> Any:
    """The device an array lives on (create its companions there: `device=device(x)`)."""
    return array_api_compat.device(x)


def namespace(*arrays: Any) -> Any:
    """The array namespace the given arrays belong to (Chainer's `get_array_module`)."""
    return array_api_compat.array_namespace(*arrays)


def is_numpy(xp: Any) -> bool:
    return array_api_compat.is_numpy_namespace(xp)


def is_cupy(xp: Any) -> bool:
    return array_api_compat.is_cupy_namespace(xp)


def asarray(data: Any, dtype: Any = None, device: Any = None, copy: bool | None = None) -> Any:
    """Host data (NumPy array, list, scalar) as an array of the active backend on `device`
    (default: the active device); a dtype (a name or a dtype of any namespace) is applied on
    the host first. `copy=True` never shares memory with `data` (loading state)."""
    if dtype is not None:
        data = np.asarray(data, dtype=_host_dtype(dtype))
    return active_namespace().asarray(data, device=device or active_device(), copy=copy)


def to_numpy(x: Any) -> np.ndarray:
    """Any backend's array as a host NumPy array (copies from a GPU)."""
    if isinstance(x, np.ndarray):
        return x
    if array_api_compat.is_cupy_array(x):
        return x.get()
    if array_api_compat.is_torch_array(x):
        return x.detach().cpu().numpy()
    if hasattr(x, "to_device") and hasattr(x, "__array_namespace__"):  # array_api_strict
        x = x.to_device(x.__array_namespace__().__array_namespace_info__().default_device())
    return np.asarray(x)


def dtype_of(name_or_dtype: Any, xp: Any = None) -> Any:
    """A dtype of `xp` from its name ("float32") or pass a dtype through."""
    xp = xp or active_namespace()
    return getattr(xp, name_or_dtype) if isinstance(name_or_dtype, str) else name_or_dtype


def sliding_windows(x: Any, window: tuple[int, int], stride: int) -> Any:
    """x: (N, H, W, C) → (N, OH, OW, kh, kw, C), every window of x (no padding; floor mode).

    NumPy, CuPy and torch return a read-only strided view (no copy); other namespaces one gather
    of the windows' pixels (`take` with indices made once per shape and device).
    """
    xp = namespace(x)
    n, h, w, c = x.shape
    kh, kw = window
    oh, ow = (h - kh) // stride + 1, (w - kw) // stride + 1
    if is_numpy(xp) or is_cupy(xp):
        lib = np if is_numpy(xp) else importlib.import_module("cupy")
        sn, sh, sw, sc = x.strides
        return lib.lib.stride_tricks.as_strided(
            x, (n, oh, ow, kh, kw, c), (sn, sh * stride, sw * stride, sh, sw, sc)
        )
    if array_api_compat.is_torch_namespace(xp):
        sn, sh, sw, sc = x.stride()
        return x.as_strided((n, oh, ow, kh, kw, c), (sn, sh * stride, sw * stride, sh, sw, sc),
                            x.storage_offset())  # fmt: skip
    indices = _window_pixels(h, w, window, stride, device(x))
    gathered = xp.take(xp.reshape(x, (n, h * w, c)), indices, axis=1)
    return xp.reshape(gathered, (n, oh, ow, kh, kw, c))


_WINDOW_PIXELS: dict[tuple, Any] = {}


def _window_pixels(h: int, w: int, window: tuple[int, int], stride: int, where: Any) -> Any:
    """The flat pixel index of every window position, in (OH, OW, kh, kw) order: made once per
    (shape, device) and kept on the device."""
    key = (h, w, window, stride, device_name(where))
    if key not in _WINDOW_PIXELS:
        kh, kw = window
        oh, ow = (h - kh) // stride + 1, (w - kw) // stride + 1
        rows = (np.arange(oh) * stride)[:, None, None, None] + np.arange(kh)[None, None, :, None]
        cols = (np.arange(ow) * stride)[None, :, None, None] + np.arange(kw)[None, None, None, :]
        _WINDOW_PIXELS[key] = asarray(np.reshape(rows * w + cols, -1), "int64", device=where)
    return _WINDOW_PIXELS[key]


def row_sum(x2: Any) -> Any:
    """Σ over the rows of a (rows, C) array: as a GEMV on NumPy (its axis-0 reduction is ~4x
    slower), one reduction elsewhere (one kernel)."""
    xp = namespace(x2)
    if whole_arrays(xp):
        return xp.sum(x2, axis=0)
    return xp.ones((x2.shape[0],), dtype=x2.dtype, device=device(x2)) @ x2


# How a pass over a large array is cut, decided here for every layer. NumPy on a CPU: blocks of
# rows in cache and Winograd chunks of images, threads where measured. Every other namespace
# (CuPy; torch, whose own kernels are threaded on a CPU and launched on a GPU; array_api_strict,
# whose devices stand in for an accelerator in CI): whole arrays, since there each array
# operation is a kernel launch (~10 µs of host time on CuPy), and more pieces only add launches.
# None: by namespace; "blocks" or "whole": forced (tests exercise both paths on any backend).
PLAN: str | None = None


def whole_arrays(xp: Any) -> bool:
    """Whether passes run on whole arrays (`PLAN`) rather than block by block."""
    return PLAN == "whole" if PLAN is not None else not is_numpy(xp)


# for_blocks, as measured (BENCHMARKS.md): a block of 64 Ki float32 elements keeps a chain of
# element-wise operations in L2; threads pay only where ufuncs outweigh the GIL handoffs between
# them (GELU's tanh), with blocks of 256 Ki elements
BLOCK_ELEMENTS = 1 << 16
THREADED_BLOCK_ELEMENTS = 1 << 18
THREADS = os.cpu_count() or 1


@cache
def _pool(threads: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(threads, thread_name_prefix="xpcnn-blocks")


def for_blocks(
    fn: Callable[[int, slice], None], rows: int, row_size: int, xp: Any, threaded: bool = False
) -> None:
    """Call fn(i, rows_i) for consecutive row ranges covering range(rows), block i of about
    BLOCK_ELEMENTS / row_size rows; fn writes its block's results (its rows, or slot i).

    NumPy: the blocks run in order, each block's chain of operations in cache; `threaded`: on a
    pool of THREADS threads (NumPy releases the GIL inside ufuncs), so the pass uses every core.
    Every other namespace (`whole_arrays`): one block, the whole array.
    """
    size = THREADED_BLOCK_ELEMENTS if threaded and THREADS > 1 else BLOCK_ELEMENTS
    step = rows if whole_arrays(xp) else max(1, size // max(row_size, 1))
    blocks = [slice(start, min(start + step, rows)) for start in range(0, rows, step)]
    if threaded and is_numpy(xp) and THREADS > 1 and len(blocks) > 1:
        for _ in _pool(THREADS).map(fn, range(len(blocks)), blocks):
            pass  # map re-raises a block's exception here
        return
    for i, block in enumerate(blocks):
        fn(i, block)


def precise_matmul(a: Any, b: Any) -> Any:
    """a @ b with float32 operands kept whole where CUPY_TF32=1 sends CuPy's GEMMs through TF32
    (10 mantissa bits): for products with exact constants whose error TF32 would amplify (the
    Winograd transforms; benchmarks/tf32_winograd.py measures it). Elsewhere plain a @ b."""
    if not is_cupy(namespace(a, b)):
        return a @ b
    cupy = importlib.import_module("cupy")
    linalg = cupy._core._routines_linalg  # a host-side switch: no sync, fine inside a capture
    previous = linalg.get_compute_type(a.dtype)
    linalg.set_compute_type(a.dtype, linalg.COMPUTE_TYPE_FP32)
    try:
        return a @ b
    finally:
        linalg.set_compute_type(a.dtype, previous)


@contextmanager
def quiet_float_errors() -> Iterator[None]:
    """Inside, overflow and invalid values in float operations make infinities and NaNs without
    NumPy's warnings (a diverging loss is caught by the NaN check, once); other backends never
    warn."""
    with np.errstate(over="ignore", invalid="ignore"):
        yield


def synchronize() -> None:
    """Block until queued device work is done (so that timings mean something)."""
    if backend_name() == "cupy":
        importlib.import_module("cupy").cuda.Device().synchronize()


def device_info() -> dict[str, Any]:
    """What the active backend computes on, for `xpcnn info`."""
    device = active_device()  # a BackendError (one line) where the device is missing
    if backend_name() != "cupy":
        return {"device": device_name(device)}
    cupy = importlib.import_module("cupy")
    dev = cupy.cuda.Device()
    props = cupy.cuda.runtime.getDeviceProperties(dev.id)
    free, total = dev.mem_info
    return {
        "device": f"cuda:{dev.id}",
        "gpu": props["name"].decode() if isinstance(props["name"], bytes) else props["name"],
        "memory_total_gib": round(total / 2**30, 1),
        "memory_free_gib": round(free / 2**30, 1),
        "cuda_runtime": cupy.cuda.runtime.runtimeGetVersion(),
    }


def device_memory_bytes() -> int:
    """Bytes CuPy's memory pool holds on the device (it keeps freed blocks: about the peak of
    the work so far); 0 on other backends."""
    if backend_name() != "cupy":
        return 0
    return int(importlib.import_module("cupy").get_default_memory_pool().total_bytes())


def check_kernels() -> str:
    """Run an element-wise kernel, a reduction and a GEMM on the active device and compare them
    with NumPy: "ok" or the one-line reason. CuPy compiles kernels at their first use, so a
    missing CUDA header shows here, not at `import cupy`."""
    host = np.arange(12, dtype=np.float32).reshape(3, 4)
    expected = (np.exp(host * 0.1) + 1.0, host.sum(axis=0), host @ host.T)
    try:
        a = asarray(host)
        xp = namespace(a)
        found = [to_numpy(v) for v in (xp.exp(a * 0.1) + 1.0, xp.sum(a, axis=0), a @ a.T)]
    except Exception as err:  # any backend's failure, reported in one line
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        return f"failed: {type(err).__name__}: {reason}"
    wrong = [n for n, f, e in zip(("element-wise", "reduction", "GEMM"), found, expected,
                                  strict=True) if not np.allclose(f, e, rtol=1e-4)]  # fmt: skip
    return f"wrong results: {', '.join(wrong)}" if wrong else "ok"


def _host_dtype(dtype: Any) -> np.dtype:
    """The NumPy dtype with the same name as a dtype of any namespace."""
    for name in ("float32", "float64", "float16", "int64", "int32", "uint8", "bool"):
        if dtype == getattr(active_namespace(), name, None) or str(dtype).endswith(name):
            return np.dtype(name)
    return np.dtype(dtype)


# the random numbers, re-exported: `from xpcnn.backend import Generator, manual_seed`
# a step recorded once as a CUDA graph and replayed (CuPy): `from xpcnn.backend import record`
# arange or a fill made once per (shape, dtype, device): `from xpcnn.backend import constant`
from xpcnn.backend.constants import constant  # noqa: E402, F401
from xpcnn.backend.graphs import record, records  # noqa: E402, F401
from xpcnn.backend.random import Generator, default_generator, manual_seed  # noqa: E402, F401
