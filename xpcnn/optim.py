"""Optimizers (SGD, Adam, AdamW with PyTorch's update rules; Muon, airbench94_muon's) and
learning-rate schedules; the base class and Lookahead are in optimizer.py, re-exported here.

Optimizers update the model's parameter arrays in place. Their state (momentum buffers, moment
estimates, step count) is a flat dict of arrays, `state_dict()`, so checkpoints hold it as-is.
"""

from __future__ import annotations

from typing import Any

from xpcnn.backend import asarray, device, namespace
from xpcnn.muon import Muon
from xpcnn.optimizer import Lookahead, Optimizer

__all__ = ["OPTIMIZERS", "SGD", "Adam", "AdamW", "Lookahead", "Muon", "Optimizer"]


class SGD(Optimizer):
    """g ← ∇ + λθ;  v ← μv + g;  θ ← θ − η·(g + μv if Nesterov else v)."""

    slot_kinds = ("momentum",)

    def __init__(
        self,
        model: Any,
        lr: float = 0.01,
        momentum: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(model, lr, weight_decay)
        if nesterov and momentum <= 0:
            raise ValueError("Nesterov momentum needs momentum > 0")
        self.momentum, self.nesterov = momentum, nesterov

    def update(self, index: int, group: Any, lr: Any) -> None:
        grad, param = group.grads, group.params
        if self.weight_decay:
            grad = grad + (self.weight_decay * group.inverse_scales) * param
        if self.momentum:
            velocity = self.flat_slot("momentum", index)
            velocity *= self.momentum
            velocity += grad
            grad = grad + self.momentum * velocity if self.nesterov else velocity
        param -= (lr * group.scales) * grad


class Adam(Optimizer):
    """m ← β₁m + (1−β₁)g;  v ← β₂v + (1−β₂)g²;  θ ← θ − η·m̂/(√v̂ + ε), bias-corrected.

    `weight_decay` adds λθ to the gradient (L2), as PyTorch's Adam does. The bias corrections
    1 − β^t are computed on the device from a device step count.
    """

    decoupled = False
    slot_kinds = ("exp_avg", "exp_avg_sq")

    def __init__(
        self,
        model: Any,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(model, lr, weight_decay)
        self.betas, self.eps = betas, eps
        self._t = None

    def update(self, index: int, group: Any, lr: Any) -> None:
        xp = namespace(group.params)
        beta1, beta2 = self.betas
        grad, param = group.grads, group.params
        if index == 0:  # the step count t, once per step, on the device
            if self._t is None or self._index_at != self.steps:
                self._t = asarray([float(self.steps)], dtype=param.dtype, device=device(param))
            self._t += 1.0
        step_lr = lr * group.scales
        if self.weight_decay and self.decoupled:  # θ(1 − ηλ): the scale cancels in lr·s·λ/s
            param *= 1.0 - step_lr * (self.weight_decay * group.inverse_scales)
        elif self.weight_decay:
            grad = grad + (self.weight_decay * group.inverse_scales) * param
        m = self.flat_slot("exp_avg", index)
        v = self.flat_slot("exp_avg_sq", index)
        m *= beta1
        m += (1.0 - beta1) * grad
        v *= beta2
        v += (1.0 - beta2) * (grad * grad)
        m_hat = m / (1.0 - beta1**self._t)
        v_hat = v / (1.0 - beta2**self._t)
        param -= step_lr * m_hat / (xp.sqrt(v_hat) + self.eps)


class AdamW(Adam):
    """Adam with decoupled weight decay: θ ← θ(1 − ηλ) before the Adam step."""

    decoupled = True

    def __init__(self, model: Any, lr: float = 1e-3, weight_decay: float = 0.01, **kw: Any):
        super().__init__(model, lr=lr, weight_decay=weight_decay, **kw)


OPTIMIZERS = {"sgd": SGD, "adam": Adam, "adamw": AdamW, "muon": Muon}


# the learning-rate schedules, re-exported: `from xpcnn.optim import Triangular, make_schedule`
from xpcnn.schedules import (  # noqa: E402, F401
    SCHEDULES,
    Constant,
    Cosine,
    OneCycle,
    StepDecay,
    Triangular,
    make_schedule,
)
