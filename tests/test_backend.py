import numpy as np
import pytest

from xpcnn import backend
from xpcnn.backend import BackendError, Generator, asarray, to_numpy


def test_unknown_backend_is_a_one_line_error(monkeypatch):
    monkeypatch.setenv("XPCNN_BACKEND", "tensorflow")
    with pytest.raises(BackendError, match=r"XPCNN_BACKEND='tensorflow' is not a backend"):
        backend.active_namespace()


@pytest.fixture(autouse=True)
def fresh_backend():
    """Each test resolves the backend and device afresh and leaves no cached namespace or device
    behind (a suite run under XPCNN_BACKEND=cupy has loaded CuPy before these tests)."""
    backend._load.cache_clear()
    backend._device.cache_clear()
    yield
    backend._load.cache_clear()
    backend._device.cache_clear()


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

    package = Path(backend.__file__).parents[1]
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
    with pytest.raises(BackendError, match="XPCNN_BACKEND=cupy"):
        backend.device_info()


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


LOCAL_RANK = "OMPI_COMM_WORLD_LOCAL_RANK"


def _two_accelerators(monkeypatch, local_rank):
    """array_api_strict's device1 and device2 stand in for two GPUs; Open MPI's launcher variable
    says which local rank this process is."""
    pytest.importorskip("array_api_strict")
    monkeypatch.setenv("XPCNN_BACKEND", "array_api_strict")
    monkeypatch.delenv("XPCNN_DEVICE", raising=False)
    for variable in ("MPI_LOCALRANKID", "SLURM_LOCALID"):
        monkeypatch.delenv(variable, raising=False)
    if local_rank is None:
        monkeypatch.delenv(LOCAL_RANK, raising=False)
    else:
        monkeypatch.setenv(LOCAL_RANK, str(local_rank))


@pytest.mark.parametrize(
    ("local_rank", "expected"),
    [(0, "device1"), (1, "device2"), (2, "device1"), (None, "CPU_DEVICE")],
)
def test_a_launched_rank_gets_its_local_device_whatever_asks_first(monkeypatch, local_rank,
                                                                   expected):  # fmt: skip
    _two_accelerators(monkeypatch, local_rank)
    generator = backend.manual_seed(0)  # the first to ask for the device, before any communicator
    assert backend.device_name(generator.device) == expected
    weights = generator.normal((3,))
    from xpcnn.distributed import communicator

    communicator()  # one process: asks nothing more of the device
    assert backend.device_name(backend.active_device()) == expected
    assert backend.device_name(backend.device(weights)) == expected


def test_xpcnn_device_overrides_the_local_rank(monkeypatch):
    _two_accelerators(monkeypatch, 1)
    monkeypatch.setenv("XPCNN_DEVICE", "device1")
    assert backend.device_name(backend.active_device()) == "device1"


def test_ranks_that_share_a_gpu_or_lack_nccl_reduce_on_the_host_with_a_note():
    from xpcnn.distributed import device_reduction

    assert device_reduction(["cuda:0", "cuda:1"], nccl_available=True) is None
    shared = device_reduction(["cuda:0", "cuda:1", "cuda:0"], nccl_available=True)
    assert shared == ("3 ranks on this machine share cuda:0 (NCCL needs one GPU per rank): "
                      "gradients are reduced through the host")  # fmt: skip
    assert device_reduction(["cuda:0", "cuda:1"], nccl_available=False).startswith(
        "NCCL is not installed"
    )
