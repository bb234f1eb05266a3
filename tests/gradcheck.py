"""Finite-difference gradient checks for layers and functions (float64)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from xpcnn.backend import asarray, manual_seed, to_numpy


def _numeric_gradient(f: Callable[[np.ndarray], float], x: np.ndarray, eps: float) -> np.ndarray:
    grad = np.zeros_like(x)
    flat, out = x.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):  # tests only: one central difference per element
        saved = flat[i]
        flat[i] = saved + eps
        plus = f(x)
        flat[i] = saved - eps
        minus = f(x)
        flat[i] = saved
        out[i] = (plus - minus) / (2 * eps)
    return grad


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(a) + np.linalg.norm(b), 1e-300))


def gradient_error(
    layer: Any, input_shape: tuple[int, ...], seed: int = 0, eps: float = 1e-6
) -> float:
    """Largest relative error between backward() and central differences, over the input and
    every parameter, for the scalar L = Σ y·R with a fixed random R."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(input_shape)
    manual_seed(seed)  # dropout masks: the same every forward
    projection = rng.standard_normal(to_numpy(layer(asarray(x))).shape)

    def loss_at(x_host: np.ndarray) -> float:
        manual_seed(seed)
        return float(np.sum(to_numpy(layer(asarray(x_host))) * projection))

    manual_seed(seed)
    layer(asarray(x))
    layer.zero_grad()
    dx = to_numpy(layer.backward(asarray(projection)))
    analytic_params = {name: to_numpy(g) for name, g in layer.grads().items()}
    errors = [relative_error(dx, _numeric_gradient(loss_at, x.copy(), eps))]
    for name, value in list(layer.named_parameters()):
        host = to_numpy(value).copy()

        def loss_at_param(p: np.ndarray, name: str = name) -> float:
            layer.set_state(name, asarray(p))
            return loss_at(x)

        numeric = _numeric_gradient(loss_at_param, host, eps)
        layer.set_state(name, asarray(host))
        errors.append(relative_error(analytic_params[name], numeric))
    return max(errors)
