import importlib.util

import numpy as np
import pytest

from xpcnn import backend
from xpcnn.backend import BackendError, Generator, asarray, to_numpy


def test_unknown_backend_is_a_one_line_error(monkeypatch):
    monkeypatch.setenv("XPCNN_BACKEND", "tensorflow")
    with pytest.raises(BackendError, match=r"XPCNN_BACKEND='tensorflow' is not a backend"):
        backend.active_namespace()


@pytest.mark.skipif(importlib.util.find_spec("cupy") is not None, reason="CuPy is installed here")
def test_missing_cupy_error_names_the_pip_extra(monkeypatch):
    monkeypatch.setenv("XPCNN_BACKEND", "cupy")
    with pytest.raises(BackendError, match=r"pip install 'xpcnn\[cupy\]'") as caught:
        backend.active_namespace()
    assert "\n" not in str(caught.value)


def test_auto_falls_back_to_numpy_without_cuda(monkeypatch):
    monkeypatch.setenv("XPCNN_BACKEND", "auto")
    monkeypatch.setattr(backend, "cuda_available", lambda: False)
    assert backend.backend_name() == "numpy"


def test_layer_code_imports_no_array_library():
    """Layers, loss, optimizers and training get their namespace from the shim."""
    from pathlib import Path

    package = Path(backend.__file__).parent
    modules = [*package.glob("layers/*.py"), package / "losses.py", package / "optim.py"]
    for module in modules:
        text = module.read_text()
        for library in ("import numpy", "import cupy", "from numpy", "from cupy"):
            assert library not in text, f"{module.name} has {library!r}"


def test_generator_is_reproducible_from_its_seed():
    a, b, c = Generator(7, 1), Generator(7, 1), Generator(7, 2)
    first = to_numpy(a.normal((5,)))
    assert np.array_equal(first, to_numpy(b.normal((5,))))
    assert not np.array_equal(first, to_numpy(c.normal((5,))))
    assert np.array_equal(Generator(3).permutation(10), Generator(3).permutation(10))
    assert sorted(Generator(3).permutation(10)) == list(range(10))


def test_generator_draws_in_range_and_dtype():
    gen = Generator(0)
    u = to_numpy(gen.uniform((1000,)))
    assert u.dtype == np.float32 and 0.0 <= u.min() and u.max() < 1.0
    k = to_numpy(gen.integers(2, 5, (1000,)))
    assert set(np.unique(k)) == {2, 3, 4}
    n = to_numpy(gen.normal((20000,), std=3.0, dtype="float64"))
    assert n.dtype == np.float64 and abs(n.std() - 3.0) < 0.1


def test_to_numpy_round_trips_through_the_active_backend():
    host = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert np.array_equal(to_numpy(asarray(host)), host)


def test_device_info_without_a_usable_cuda_device_is_a_backend_error(monkeypatch):
    monkeypatch.setenv("XPCNN_BACKEND", "cupy")
    monkeypatch.setattr(backend, "cuda_available", lambda: False)
    backend._load.cache_clear()
    with pytest.raises(BackendError, match="XPCNN_BACKEND=cupy"):
        backend.device_info()
    backend._load.cache_clear()
