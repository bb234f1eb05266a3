"""CuPy on a CUDA device: the same layers give the same numbers as on NumPy, and data stays on
the device. Skipped, with the reason, where CuPy or a CUDA device is missing; the whole suite
also runs on the GPU with XPCNN_BACKEND=cupy."""

import numpy as np
import pytest

from xpcnn import backend
from xpcnn.backend import to_numpy
from xpcnn.losses import cross_entropy
from xpcnn.models import build_model

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not backend.cuda_available(),
        reason="needs CuPy and a CUDA device (pip install 'xpcnn[cupy]' on an NVIDIA GPU machine)",
    ),
]


def forward_backward(name, state, x, y):
    model = build_model(name)
    model.load_state_dict(state)
    logits = model(backend.asarray(x))
    loss, grad = cross_entropy(logits, backend.asarray(y, "int64"))
    model.zero_grad()
    dx = model.backward(grad)
    grads = {k: to_numpy(v) for k, v in model.grads().items()}
    return to_numpy(logits), float(loss), to_numpy(dx), grads, type(logits)


@pytest.mark.parametrize("name", ["seed", "fast"])
def test_cupy_matches_numpy(monkeypatch, name):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 3, 32, 32)).astype(np.float32)
    y = rng.integers(0, 10, 8)
    monkeypatch.setenv("XPCNN_BACKEND", "numpy")
    state = {k: to_numpy(v) for k, v in build_model(name).state_dict().items()}
    reference = forward_backward(name, state, x, y)
    monkeypatch.setenv("XPCNN_BACKEND", "cupy")
    on_gpu = forward_backward(name, state, x, y)
    assert on_gpu[4].__module__.startswith("cupy")
    assert np.allclose(on_gpu[0], reference[0], rtol=1e-4, atol=1e-4)
    assert abs(on_gpu[1] - reference[1]) < 1e-4
    assert np.allclose(on_gpu[2], reference[2], rtol=1e-3, atol=1e-5)
    for key, value in reference[3].items():
        assert np.allclose(on_gpu[3][key], value, rtol=1e-3, atol=1e-4), key


def test_batches_keep_the_dataset_and_augmentation_on_the_device(monkeypatch):
    import cupy

    from xpcnn.data import Augment, Batches

    monkeypatch.setenv("XPCNN_BACKEND", "cupy")
    images = np.random.default_rng(0).integers(0, 256, (40, 3, 8, 8), dtype=np.uint8)
    batches = Batches(images, np.arange(40) % 4, 16, seed=1, augment=Augment(crop_padding=2))
    assert isinstance(batches.images, cupy.ndarray) and batches.images.dtype == cupy.uint8
    x, y = next(iter(batches.epoch(0)))
    assert isinstance(x, cupy.ndarray) and x.dtype == cupy.float32 and isinstance(y, cupy.ndarray)
