"""CuPy's API as the shim calls it, checked against the real CuPy package without a GPU
(`pip install cupy-cuda12x` imports on any machine; only device calls fail). Every `cupy.*`
chain in the backend package must exist, and the calls on CuPy objects must accept our arguments."""

import ast
import inspect
from pathlib import Path

import pytest

cupy = pytest.importorskip("cupy", reason="CuPy is not installed (pip install cupy-cuda12x)")

BACKEND = Path(__file__).resolve().parents[1] / "xpcnn" / "backend"


def _cupy_chains() -> set[str]:
    """Dotted names rooted at `cupy` in the backend package: cupy.cuda.runtime.getDeviceCount,
    ..."""
    chains = set()
    nodes = [n for path in BACKEND.glob("*.py") for n in ast.walk(ast.parse(path.read_text()))]
    for node in nodes:
        parts = []
        while isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        if isinstance(node, ast.Name) and node.id == "cupy" and parts:
            chains.add(".".join(["cupy", *reversed(parts)]))
    return chains


def _resolve(chain: str):
    value = cupy
    for name in chain.split(".")[1:]:
        value = getattr(value, name)
    return value


def test_backend_calls_cupy_names_that_exist():
    chains = _cupy_chains()
    assert "cupy.random.Philox4x3210" in chains  # the walk found the shim's calls
    missing = []
    for chain in sorted(chains):
        try:
            _resolve(chain)
        except AttributeError:
            missing.append(chain)
    assert missing == []


@pytest.mark.parametrize(
    "method, args, kwargs",
    [
        ("standard_normal", ((2, 3),), {"dtype": "float32"}),
        ("random", ((2, 3),), {"dtype": "float32"}),
        ("integers", (0, 10), {"size": (4,), "dtype": "int64"}),
    ],
)
def test_the_generator_methods_accept_our_arguments(method, args, kwargs):
    signature = inspect.signature(getattr(cupy.random.Generator, method))
    signature.bind(None, *args, **kwargs)  # raises TypeError on a missing keyword


def test_the_other_cupy_calls_of_the_shim_exist():
    inspect.signature(cupy.random.Philox4x3210).bind(12345)
    inspect.signature(cupy.lib.stride_tricks.as_strided).bind(None, (1, 2), (8, 4))
    for name in ("use", "synchronize", "mem_info", "id"):
        assert hasattr(cupy.cuda.Device, name), name
    assert callable(cupy.asnumpy) and hasattr(cupy.ndarray, "get")


def test_without_a_gpu_cupy_is_reported_unusable_not_crashing(monkeypatch):
    from xpcnn import backend

    monkeypatch.setenv("XPCNN_BACKEND", "cupy")
    if backend.cuda_available():
        pytest.skip("a CUDA device is usable here")
    with pytest.raises(backend.BackendError, match="no usable CUDA device"):
        backend.active_namespace()


def test_no_module_outside_the_backend_package_imports_or_calls_cupy():
    """The backend package alone knows CuPy (and NCCL, through it): the chains checked above
    are then every CuPy call the library makes."""
    package = BACKEND.parent
    offenders = []
    for path in package.rglob("*.py"):
        if BACKEND in path.parents:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            elif isinstance(node, ast.Name):
                names = [node.id]
            if any(name == "cupy" or name.startswith("cupy.") for name in names):
                offenders.append(f"{path.relative_to(package)}:{node.lineno}")
    assert offenders == []
