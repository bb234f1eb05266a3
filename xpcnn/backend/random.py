"""Seeded random numbers on the active backend's device (the backend's one random-number gap:
CuPy draws on the GPU with its own generator, other namespaces draw with NumPy and convert)."""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np

from xpcnn.backend import _host_dtype, active_device, active_namespace, dtype_of, is_cupy, is_numpy


class Generator:
    """Seeded random numbers on the active backend's device.

    Seeds are tuples of integers (`Generator(42, epoch)`), so each epoch or stream gets its own
    reproducible generator and nothing needs to be checkpointed but the seed. NumPy and CuPy draw
    on their own device; other namespaces draw with NumPy and convert.
    """

    def __init__(self, *seed: int) -> None:
        self.seed = tuple(int(s) for s in seed)
        self.xp, self.device = active_namespace(), active_device()
        self._entropy = np.random.SeedSequence(list(self.seed) or [0])
        self._host_rng = np.random.default_rng(self._entropy.spawn(1)[0])
        self._device_rng: Any = None  # made at the first draw: many generators never draw

    @property
    def _rng(self) -> Any:
        if self._device_rng is None:
            if is_cupy(self.xp):  # Philox: cheap to seed (XORWOW sets up ~270k states)
                cupy = importlib.import_module("cupy")
                key = int(self._entropy.generate_state(1, np.uint64)[0])
                self._device_rng = cupy.random.Generator(cupy.random.Philox4x3210(key))
            else:
                self._device_rng = np.random.default_rng(self._entropy)
        return self._device_rng

    def _out(self, values: Any, dtype: Any) -> Any:
        if is_numpy(self.xp) or is_cupy(self.xp):
            return values
        return self.xp.asarray(values, device=self.device)

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
    if gen is None or gen.xp is not active_namespace() or gen.device != active_device():
        gen = manual_seed(*(gen.seed if gen is not None else (0,)))
    return gen
