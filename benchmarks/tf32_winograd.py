"""What TF32 GEMMs cost a Winograd convolution's accuracy, emulated on the CPU.

    python benchmarks/tf32_winograd.py

On an Ampere-or-later GPU with CUPY_TF32=1, cuBLAS rounds each float32 GEMM operand to TF32 (10
mantissa bits, round to nearest) and accumulates in float32. Here NumPy does the same: every
matmul's operands are rounded to TF32 first (an ndarray subclass intercepts the `matmul` ufunc).
For fast's 3x3 layer shapes, each forward output and gradient is compared with a float64
im2col reference: im2col with TF32 GEMMs; Winograd F(4x4, 3x3) with every GEMM in TF32, transforms
included (what CUPY_TF32=1 does today); Winograd with only its channel GEMMs in TF32 and the
transforms, whose entries reach 8 and 1/24, in float32 (`backend.precise_matmul`).
"""

from __future__ import annotations

import numpy as np

from xpcnn import backend
from xpcnn.layers import Conv2D
from xpcnn.layers import winograd as winograd_module


def tf32(x: np.ndarray) -> np.ndarray:
    """float32 rounded to TF32's 10 mantissa bits, to nearest, ties to even."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    bits = (bits + np.uint32(0x0FFF) + ((bits >> np.uint32(13)) & np.uint32(1))) & np.uint32(
        0xFFFFE000
    )
    return bits.view(np.float32)


class TF32(np.ndarray):
    """An array whose matmuls run with TF32 operands unless `precise` says otherwise."""

    precise = False  # set while backend.precise_matmul runs

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        plain = [i.view(np.ndarray) if isinstance(i, np.ndarray) else i for i in inputs]
        if ufunc is np.matmul and not TF32.precise:
            plain = [tf32(i) if isinstance(i, np.ndarray) else i for i in plain]
        if "out" in kwargs:
            kwargs["out"] = tuple(o.view(np.ndarray) for o in kwargs["out"])
        out = getattr(ufunc, method)(*plain, **kwargs)
        return out.view(TF32) if isinstance(out, np.ndarray) and out.dtype.kind == "f" else out


def relative_error(found: np.ndarray, expected: np.ndarray) -> float:
    return float(np.linalg.norm(found - expected) / np.linalg.norm(expected))


def run_case(c_in: int, c_out: int, size: int, batch: int, rng: np.random.Generator) -> dict:
    x = rng.standard_normal((batch, size, size, c_in))
    dy = rng.standard_normal((batch, size, size, c_out))
    weight = rng.uniform(-1, 1, (c_out, c_in, 3, 3)) / np.sqrt(9 * c_in)

    def conv(algorithm: str, dtype: str, wrap: bool) -> list[np.ndarray]:
        layer = Conv2D(c_in, c_out, 3, bias=False, algorithm=algorithm, dtype=dtype)
        cast = (lambda a: a.astype(dtype).view(TF32)) if wrap else (lambda a: a.astype(dtype))
        layer.params["weight"] = cast(weight)
        y = layer.forward(cast(x))
        dx = layer.backward(cast(dy))
        return [np.asarray(a, dtype=np.float64) for a in (y, dx, layer.gradients["weight"])]

    reference = conv("im2col", "float64", wrap=False)
    found = {
        "float32 im2col": conv("im2col", "float32", wrap=False),
        "float32 winograd4": conv("winograd4", "float32", wrap=False),
        "TF32 im2col": conv("im2col", "float32", wrap=True),
        "TF32 winograd4, TF32 transforms": conv("winograd4", "float32", wrap=True),
    }
    with _precise_transforms():
        found["TF32 winograd4, float32 transforms"] = conv("winograd4", "float32", wrap=True)
    return {
        name: [relative_error(f, r) for f, r in zip(values, reference, strict=True)]
        for name, values in found.items()
    }


class _precise_transforms:
    """While inside, backend.precise_matmul (the transforms' GEMMs) skips the TF32 rounding."""

    def __enter__(self) -> None:
        self.original = backend.precise_matmul

        def precise(a, b):
            TF32.precise = True
            try:
                return self.original(a, b)
            finally:
                TF32.precise = False

        backend.precise_matmul = winograd_module.precise_matmul = precise

    def __exit__(self, *exc) -> None:
        backend.precise_matmul = winograd_module.precise_matmul = self.original


def main() -> None:
    rng = np.random.default_rng(0)
    print("relative error against float64 (forward y, input gradient dx, weight gradient dw)")
    for c_in, c_out, size in ((24, 64, 32), (64, 64, 16), (64, 256, 16), (256, 256, 8)):
        print(f"\nconv {c_in}->{c_out} at {size}x{size}, batch 8")
        for name, errors in run_case(c_in, c_out, size, 8, rng).items():
            print(f"  {name:38} " + "  ".join(f"{e:.2e}" for e in errors))


if __name__ == "__main__":
    main()
