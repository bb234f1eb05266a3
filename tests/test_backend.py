import numpy as np
import pytest

from xpcnn import backend
from xpcnn.backend import BackendError, Generator, asarray, to_numpy


def test_unknown_backend_is_a_one_line_error(monkeypatch):
    monkeypatch.setenv("XPCNN_BACKEND", "tensorflow")
    with pytest.raises(BackendError, match=r"XPCNN_BACKEND='tensorflow' is not a backend"):
        backend.active_namespace()


def test_missing_cupy_error_names_the_pip_extra(monkeypatch):
    real_import = backend.importlib.import_module

    def without_cupy(name):
        if name == "cupy":
            raise ImportError("No module named 'cupy'")
        return real_import(name)

    monkeypatch.setattr(backend.importlib, "import_module", without_cupy)
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


def test_a_device_the_backend_lacks_is_one_line_listing_those_it_has(monkeypatch):
    monkeypatch.setenv("XPCNN_BACKEND", "numpy")
    monkeypatch.setenv("XPCNN_DEVICE", "cuda:3")
    with pytest.raises(BackendError, match=r"XPCNN_DEVICE='cuda:3': .* \(it has: cpu\)"):
        backend.active_device()


def test_every_array_the_library_makes_lives_on_the_chosen_device(monkeypatch):
    pytest.importorskip("array_api_strict")
    monkeypatch.setenv("XPCNN_BACKEND", "array_api_strict")
    monkeypatch.setenv("XPCNN_DEVICE", "device1")
    from xpcnn.models import build_model

    model = build_model("fast", num_classes=3, image_size=8)
    arrays = [*model.state_dict().values(), Generator(1).normal((2,)), asarray([1, 2], "int64")]
    assert {str(a.device) for a in arrays} == {"array_api_strict.Device('device1')"}
    assert backend.device_info()["device"] == "device1"


def _step_with_a_planted_host_conversion(monkeypatch):
    """One training step whose loss first converts the logits with numpy.asarray — the bug a
    GPU catches (CuPy raises TypeError) and a CPU does not."""
    import xpcnn.train
    from xpcnn.models import build_model
    from xpcnn.optim import SGD

    original = xpcnn.train.cross_entropy

    def planted(logits, labels, label_smoothing=0.0):
        np.asarray(logits)
        return original(logits, labels, label_smoothing)

    monkeypatch.setattr(xpcnn.train, "cross_entropy", planted)
    model = build_model("seed", num_classes=3, image_size=8)
    x = asarray(np.zeros((2, 3, 8, 8), dtype=np.float32))
    xpcnn.train.train_step(model, SGD(model, lr=0.1), x, asarray([0, 2], "int64"))


def test_a_planted_host_conversion_passes_on_numpy(monkeypatch):
    monkeypatch.setenv("XPCNN_BACKEND", "numpy")
    monkeypatch.delenv("XPCNN_DEVICE", raising=False)
    _step_with_a_planted_host_conversion(monkeypatch)


def test_a_planted_host_conversion_fails_on_the_emulated_device(monkeypatch):
    pytest.importorskip("array_api_strict")
    monkeypatch.setenv("XPCNN_BACKEND", "array_api_strict")
    monkeypatch.setenv("XPCNN_DEVICE", "device1")
    with pytest.raises(RuntimeError, match="Can't convert array on the .*device1"):
        _step_with_a_planted_host_conversion(monkeypatch)
