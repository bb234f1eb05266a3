"""Softmax cross-entropy with a stable log-softmax and optional label smoothing."""

from __future__ import annotations

from typing import Any

from xpcnn.backend import device, namespace


def log_softmax(logits: Any) -> Any:
    """log p = z − max z − log Σ exp(z − max z): no overflow however large the logits."""
    xp = namespace(logits)
    shifted = logits - xp.max(logits, axis=1, keepdims=True)
    return shifted - xp.log(xp.sum(xp.exp(shifted), axis=1, keepdims=True))


def one_hot(labels: Any, num_classes: int, dtype: Any) -> Any:
    xp = namespace(labels)
    classes = xp.arange(num_classes, dtype=labels.dtype, device=device(labels))
    return xp.astype(labels[:, None] == classes[None, :], dtype)


def cross_entropy(logits: Any, labels: Any, label_smoothing: float = 0.0) -> tuple[Any, Any]:
    """L = −(1/N) Σ_i Σ_k q_ik log softmax(z_i)_k,  q = (1 − ε)·onehot + ε/K.

    logits: (N, K), labels: (N,) integers. Returns (mean loss as a 0-d array, dL/dlogits).
    The loss stays on the device: reading it (float()) is the caller's choice.
    """
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    xp = namespace(logits)
    n, k = logits.shape
    log_p = log_softmax(logits)
    target = one_hot(labels, k, logits.dtype)
    if label_smoothing:
        target = target * (1.0 - label_smoothing) + label_smoothing / k
    loss = -xp.sum(target * log_p) / n
    grad = (xp.exp(log_p) - target) / n
    return loss, grad
