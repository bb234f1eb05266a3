"""Softmax cross-entropy with a stable log-softmax and optional label smoothing."""

from __future__ import annotations

from typing import Any

from xpcnn.backend import constant, device, namespace


def log_softmax(logits: Any) -> Any:
    """log p = z − max z − log Σ exp(z − max z): no overflow however large the logits."""
    xp = namespace(logits)
    shifted = logits - xp.max(logits, axis=1, keepdims=True)
    return shifted - xp.log(xp.sum(xp.exp(shifted), axis=1, keepdims=True))


def one_hot(labels: Any, num_classes: int, dtype: Any) -> Any:
    xp = namespace(labels)
    classes = constant(xp, (1, num_classes), labels.dtype, device(labels))
    return xp.astype(labels[:, None] == classes, dtype)


def cross_entropy(logits: Any, labels: Any, label_smoothing: float = 0.0) -> tuple[Any, Any]:
    """L = −(1/N) Σ_i Σ_k q_ik log softmax(z_i)_k,  q = (1 − ε)·onehot + ε/K;
    dL/dz = (softmax(z) − q)/N.

    logits: (N, K), labels: (N,) integers. Returns (mean loss as a 0-d array, dL/dlogits).
    The loss stays on the device: reading it (float()) is the caller's choice.
    """
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    xp = namespace(logits)
    n, k = logits.shape
    where = device(logits)
    log_p = log_softmax(logits)
    # −q/N: at the label and elsewhere, constants on the device (made once per N, K and ε)
    off = label_smoothing / k
    at_label = constant(xp, (), logits.dtype, where, fill=-(1.0 - label_smoothing + off) / n)
    elsewhere = constant(xp, (), logits.dtype, where, fill=-off / n)
    classes = constant(xp, (1, k), labels.dtype, device(labels))
    scaled_target = xp.where(labels[:, None] == classes, at_label, elsewhere)
    loss = xp.tensordot(scaled_target, log_p, axes=2)
    grad = xp.exp(log_p)
    grad *= 1.0 / n
    grad += scaled_target
    return loss, grad
