"""The only module that knows one array library from another.

`XPCNN_BACKEND` picks the array namespace: ``numpy`` (default), ``cupy``, ``auto`` (CuPy when a
CUDA device is usable, else NumPy), or any other namespace `array-api-compat` can wrap
(``array_api_strict``, ``torch``). Everything else in xpcnn calls `namespace(x)` (the arrays'
namespace, by convention named `xp`) or `active_namespace()` and the small functions below, one
per gap of the array API standard:

    Generator       seeded random numbers made on the array's device
    to_numpy        device array -> host NumPy array
    asarray         host data -> array of the active backend (on its device)
    sliding_windows every kh×kw window of an image batch, a strided view where the library has one
    synchronize     wait for queued device work (timing)
    device_info     name and memory of the device, for `xpcnn info`
"""

from __future__ import annotations

import importlib
import os
from functools import cache
from typing import Any

import array_api_compat
import numpy as np

BACKENDS = ("numpy", "cupy", "auto", "array_api_strict", "torch")
_PIP_EXTRA = {
    "cupy": "pip install 'xpcnn[cupy]'  (CuPy for CUDA 12)",
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


def namespace(*arrays: Any) -> Any:
    """The array namespace the given arrays belong to (Chainer's `get_array_module`)."""
    return array_api_compat.array_namespace(*arrays)


def is_numpy(xp: Any) -> bool:
    return array_api_compat.is_numpy_namespace(xp)


def is_cupy(xp: Any) -> bool:
    return array_api_compat.is_cupy_namespace(xp)


def asarray(data: Any, dtype: Any = None) -> Any:
    """Host data (NumPy array, list, scalar) as an array of the active backend."""
    xp = active_namespace()
    if isinstance(dtype, str):
        dtype = getattr(xp, dtype)
    return xp.asarray(data, dtype=dtype)


def to_numpy(x: Any) -> np.ndarray:
    """Any backend's array as a host NumPy array (copies from a GPU)."""
    if isinstance(x, np.ndarray):
        return x
    if array_api_compat.is_cupy_array(x):
        return x.get()
    if array_api_compat.is_torch_array(x):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def dtype_of(name_or_dtype: Any, xp: Any = None) -> Any:
    """A dtype of `xp` from its name ("float32") or pass a dtype through."""
    xp = xp or active_namespace()
    return getattr(xp, name_or_dtype) if isinstance(name_or_dtype, str) else name_or_dtype


def sliding_windows(x: Any, window: tuple[int, int], stride: int) -> Any:
    """x: (N, H, W, C) → (N, OH, OW, kh, kw, C), every window of x (no padding; floor mode).

    NumPy and CuPy return a read-only strided view (no copy); other namespaces get one strided
    slice copy per window offset.
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
    windows = xp.zeros((n, oh, ow, kh, kw, c), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            rows = slice(i, i + (oh - 1) * stride + 1, stride)
            cols = slice(j, j + (ow - 1) * stride + 1, stride)
            windows[:, :, :, i, j, :] = x[:, rows, cols, :]
    return windows


def synchronize() -> None:
    """Block until queued device work is done (so that timings mean something)."""
    if backend_name() == "cupy":
        importlib.import_module("cupy").cuda.Device().synchronize()


def device_info() -> dict[str, Any]:
    """What the active backend computes on, for `xpcnn info`."""
    name = backend_name()
    if name != "cupy":
        return {"device": "cpu"}
    active_namespace()  # a BackendError (one line) where CuPy or a usable CUDA device is missing
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


def _host_dtype(dtype: Any) -> np.dtype:
    """The NumPy dtype with the same name as a dtype of any namespace."""
    for name in ("float32", "float64", "float16", "int64", "int32", "uint8", "bool"):
        if dtype == getattr(active_namespace(), name, None) or str(dtype).endswith(name):
            return np.dtype(name)
    return np.dtype(dtype)


class Generator:
    """Seeded random numbers on the active backend's device.

    Seeds are tuples of integers (`Generator(42, epoch)`), so each epoch or stream gets its own
    reproducible generator and nothing needs to be checkpointed but the seed. NumPy and CuPy draw
    on their own device; other namespaces draw with NumPy and convert.
    """

    def __init__(self, *seed: int) -> None:
        self.seed = tuple(int(s) for s in seed)
        self.xp = active_namespace()
        entropy = np.random.SeedSequence(list(self.seed) or [0])
        self._host_rng = np.random.default_rng(entropy.spawn(1)[0])
        if is_cupy(self.xp):
            cupy = importlib.import_module("cupy")
            self._rng = cupy.random.Generator(
                cupy.random.XORWOW(int(entropy.generate_state(1, np.uint64)[0]))
            )
        else:
            self._rng = np.random.default_rng(entropy)

    def _out(self, values: Any, dtype: Any) -> Any:
        if is_numpy(self.xp) or is_cupy(self.xp):
            return values
        return self.xp.asarray(np.asarray(values), dtype=dtype)

    def normal(self, shape: tuple[int, ...], std: float = 1.0, dtype: Any = "float32") -> Any:
        dtype = dtype_of(dtype, self.xp)
        if is_cupy(self.xp):
            return self._rng.standard_normal(shape, dtype=dtype) * std
        values = self._rng.standard_normal(shape).astype(_host_dtype(dtype))
        return self._out(values * np.asarray(std, dtype=values.dtype), dtype)

    def uniform(self, shape: tuple[int, ...], dtype: Any = "float32") -> Any:
        """Uniform numbers in [0, 1)."""
        dtype = dtype_of(dtype, self.xp)
        if is_cupy(self.xp):
            return self._rng.random(shape, dtype=dtype)
        values = self._rng.random(shape, dtype=_host_dtype(dtype))
        return self._out(values, dtype)

    def integers(self, low: int, high: int, shape: tuple[int, ...]) -> Any:
        """Integers in [low, high) as int64."""
        values = self._rng.integers(low, high, size=shape, dtype="int64")
        return self._out(values, self.xp.int64)

    def permutation(self, n: int) -> np.ndarray:
        """A permutation of range(n) on the host (indices for shuffling; cheap to make anywhere)."""
        return self._host_rng.permutation(n)


_default = {"generator": None}


def manual_seed(*seed: int) -> Generator:
    """Seed the default generator (weight initialisation, dropout), like `torch.manual_seed`."""
    _default["generator"] = Generator(*seed)
    return _default["generator"]


def default_generator() -> Generator:
    """The generator set by `manual_seed`; seeded with 0 if none was set on this backend."""
    gen = _default["generator"]
    if gen is None or gen.xp is not active_namespace():
        gen = manual_seed(*(gen.seed if gen is not None else (0,)))
    return gen
