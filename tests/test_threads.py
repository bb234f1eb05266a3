"""Element-wise passes block by block and on a thread pool (`for_blocks`) against one pass. The
block path is NumPy's plan; these tests force it (`backend.PLAN`), so they hold on any backend,
also where passes run whole (CuPy, torch, array_api_strict)."""

import numpy as np
import pytest

from xpcnn import backend
from xpcnn.backend import active_namespace, asarray, for_blocks, to_numpy
from xpcnn.layers import (
    GELU,
    AvgPool2D,
    BatchNorm1D,
    BatchNorm2D,
    GlobalAvgPool2D,
    GlobalMaxPool2D,
    MaxPool2D,
    ReLU,
    pooling,
)


@pytest.mark.parametrize("threaded", [False, True])
def test_for_blocks_visits_every_row_once_in_blocks_of_the_set_size(threaded, monkeypatch):
    monkeypatch.setattr(backend, "PLAN", "blocks")
    monkeypatch.setattr(backend, "BLOCK_ELEMENTS", 30)
    monkeypatch.setattr(backend, "THREADED_BLOCK_ELEMENTS", 30)
    monkeypatch.setattr(backend, "THREADS", 2)
    seen = {}
    for_blocks(lambda i, rows: seen.update({i: rows}), 23, 10, active_namespace(), threaded)
    covered = [r for i in sorted(seen) for r in range(seen[i].start, seen[i].stop)]
    assert covered == list(range(23)) and seen[0] == slice(0, 3)


def test_the_plan_is_whole_arrays_everywhere_but_numpy(monkeypatch):
    import array_api_compat.numpy as compat_numpy
    import numpy

    monkeypatch.setattr(backend, "PLAN", None)
    assert not backend.whole_arrays(compat_numpy) and not backend.whole_arrays(numpy)
    strict = pytest.importorskip("array_api_strict")
    assert backend.whole_arrays(strict)
    seen = []
    for_blocks(lambda i, rows: seen.append(rows), 23, 10 << 20, strict)
    assert seen == [slice(0, 23)]  # one block however large the rows


def test_for_blocks_raises_what_a_threaded_block_raises(monkeypatch):
    monkeypatch.setattr(backend, "PLAN", "blocks")
    monkeypatch.setattr(backend, "THREADED_BLOCK_ELEMENTS", 1)
    monkeypatch.setattr(backend, "THREADS", 2)

    def fail_on_the_third(i, rows):
        if i == 2:
            raise ValueError("block 2")

    with pytest.raises(ValueError, match="block 2"):
        for_blocks(fail_on_the_third, 5, 1, active_namespace(), threaded=True)


def _forward_backward(make, x, dy):
    layer = make()
    y = to_numpy(layer(asarray(x)))
    layer.zero_grad()
    dx = to_numpy(layer.backward(asarray(dy)))
    return [y, dx, *(to_numpy(g) for g in layer.grads().values())]


LAYERS = [  # (layer maker, input shape): odd sizes, so the last block is a short one
    (ReLU, (5, 7, 3, 4)),
    (GELU, (5, 7, 3, 4)),
    (lambda: GELU().eval(), (5, 7, 3, 4)),  # backward after an evaluation forward
    (lambda: BatchNorm2D(4, dtype="float64"), (5, 7, 3, 4)),
    (lambda: BatchNorm2D(4, dtype="float64").eval(), (5, 7, 3, 4)),
    (lambda: BatchNorm1D(6, dtype="float64"), (37, 6)),
    (lambda: MaxPool2D(2), (5, 6, 4, 3)),
    (lambda: MaxPool2D(2).eval(), (5, 6, 4, 3)),
    (lambda: MaxPool2D(3, stride=2), (5, 7, 7, 3)),
    (lambda: MaxPool2D(2, stride=1), (5, 6, 4, 3)),
    (lambda: AvgPool2D(2), (5, 6, 4, 3)),
    (lambda: AvgPool2D(3, stride=2), (5, 7, 7, 3)),
    (GlobalMaxPool2D, (5, 6, 4, 3)),
    (GlobalAvgPool2D, (5, 6, 4, 3)),
]


@pytest.mark.parametrize(("make", "shape"), LAYERS, ids=lambda v: getattr(v, "__name__", str(v)))
@pytest.mark.parametrize("threads", [1, 2])
def test_blocked_passes_match_one_pass(make, shape, threads, monkeypatch):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape)
    x[0, 0] = x[0, 1]  # ties for max pooling
    dy = rng.standard_normal(to_numpy(make()(asarray(x))).shape)
    monkeypatch.setattr(pooling, "BLOCKED_ELEMENTS", 1 << 40)
    monkeypatch.setattr(backend, "BLOCK_ELEMENTS", 1 << 40)
    monkeypatch.setattr(backend, "THREADED_BLOCK_ELEMENTS", 1 << 40)
    monkeypatch.setattr(backend, "PLAN", "whole")
    expected = _forward_backward(make, x, dy)
    monkeypatch.setattr(backend, "PLAN", "blocks")
    monkeypatch.setattr(pooling, "BLOCKED_ELEMENTS", 0)
    monkeypatch.setattr(backend, "BLOCK_ELEMENTS", 50)  # a few rows or images per block
    monkeypatch.setattr(backend, "THREADED_BLOCK_ELEMENTS", 50)
    monkeypatch.setattr(backend, "THREADS", threads)
    found = _forward_backward(make, x, dy)
    for a, b in zip(expected, found, strict=True):
        assert a.shape == b.shape
        assert np.allclose(a, b, rtol=1e-12, atol=1e-12)  # block sums round differently
