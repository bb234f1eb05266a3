import numpy as np
import pytest
from gradcheck import relative_error

from xpcnn.backend import asarray, to_numpy
from xpcnn.losses import cross_entropy


def numeric_loss_gradient(logits, labels, smoothing, eps=1e-6):
    grad = np.zeros_like(logits)
    for index in np.ndindex(logits.shape):
        plus, minus = logits.copy(), logits.copy()
        plus[index] += eps
        minus[index] -= eps
        grad[index] = (
            float(cross_entropy(asarray(plus), labels, smoothing)[0])
            - float(cross_entropy(asarray(minus), labels, smoothing)[0])
        ) / (2 * eps)
    return grad


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_cross_entropy_gradient_matches_finite_differences(smoothing):
    rng = np.random.default_rng(0)
    logits, labels = rng.standard_normal((5, 4)), asarray(np.array([0, 3, 1, 1, 2]))
    _, grad = cross_entropy(asarray(logits), labels, smoothing)
    numeric = numeric_loss_gradient(logits, labels, smoothing)
    assert relative_error(to_numpy(grad), numeric) < 1e-6


def test_cross_entropy_known_value():
    loss, _ = cross_entropy(asarray(np.log(np.array([[0.5, 0.25, 0.25]]))), asarray(np.array([1])))
    assert abs(float(loss) - np.log(4.0)) < 1e-12


def test_label_smoothing_known_value():
    # q = (1-ε)·onehot + ε/K with ε = 0.3, K = 3: q = [0.1, 0.8, 0.1]
    p = np.array([[0.5, 0.25, 0.25]])
    loss, _ = cross_entropy(asarray(np.log(p)), asarray(np.array([1])), label_smoothing=0.3)
    expected = -(0.1 * np.log(0.5) + 0.8 * np.log(0.25) + 0.1 * np.log(0.25))
    assert abs(float(loss) - expected) < 1e-12


def test_cross_entropy_is_stable_at_huge_logits():
    logits = np.array([[1e4, 0.0, -1e4], [-1e4, 1e4, 1e4]], dtype=np.float32)
    loss, grad = cross_entropy(asarray(logits), asarray(np.array([0, 2])))
    assert np.isfinite(float(loss)) and np.all(np.isfinite(to_numpy(grad)))
    assert abs(float(loss) - np.log(2.0) / 2) < 1e-6  # sample 2 splits between classes 1 and 2


def test_cross_entropy_rejects_bad_smoothing():
    with pytest.raises(ValueError, match="label_smoothing"):
        cross_entropy(asarray(np.zeros((1, 2))), asarray(np.array([0])), label_smoothing=1.0)


def test_cross_entropy_issues_twelve_operations_on_whole_arrays():
    """Counted on array_api_strict after a first call, which makes the constants (classes,
    the scaled targets) once."""
    strict = pytest.importorskip("array_api_strict")
    from xpcnn.opcount import count_strict

    rng = np.random.default_rng(0)
    logits = strict.asarray(rng.standard_normal((8, 10)).astype(np.float32))
    labels = strict.asarray(rng.integers(0, 10, 8))
    cross_entropy(logits, labels, 0.2)
    with count_strict() as counter:
        cross_entropy(logits, labels, 0.2)
    assert counter.count() == 12  # log-softmax 6, target 2, loss 1, gradient 3
