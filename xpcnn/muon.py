"""Muon: Nesterov momentum whose step for each convolution filter bank is orthogonalised by a
few Newton–Schulz iterations; the other parameters keep Nesterov SGD (airbench94_muon)."""

from __future__ import annotations

import math
from typing import Any

from xpcnn.backend import namespace
from xpcnn.optimizer import Optimizer

# the quintic's coefficients (Jordan, "Muon: An optimizer for hidden layers", 2024): chosen for
# the largest slope at 0, so that a few steps lift small singular values into a band around 1
QUINTIC = (3.4445, -4.7750, 2.0315)


def newton_schulz(g: Any, steps: int = 3, eps: float = 1e-7) -> Any:
    """≈ U·Vᵀ of g = U·Σ·Vᵀ (r × c): X ← g / (‖g‖_F + ε), then `steps` times

        A = X·Xᵀ,   X ← a·X + (b·A + c·A²)·X,

    with X transposed while r > c, so that A is the smaller Gram matrix. Each step maps every
    singular value σ of X by f(σ) = aσ + bσ³ + cσ⁵ and keeps U and V. f leaves [0.68, 1.14]
    within itself but does not converge to 1 (airbench: "something like U·S'·Vᵀ", which trains
    as well as U·Vᵀ); in 3 steps singular values from 0.02·‖g‖_F up end in [0.68, 1.21], those
    from 0.1·‖g‖_F up in [0.68, 1.14]; smaller ones grow by up to a³ ≈ 41."""
    xp = namespace(g)
    a, b, c = QUINTIC
    x = g / (xp.sqrt(xp.sum(g * g)) + eps)
    tall = g.shape[0] > g.shape[1]
    if tall:
        x = x.T
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * (gram @ gram)) @ x
    return x.T if tall else x


class Muon(Optimizer):
    """Momentum SGD with orthogonalised steps for convolution filters, as airbench94_muon
    (Jordan, cifar10-airbench) trains: its `Muon` for the 4-D filter banks, PyTorch's Nesterov
    SGD for everything else (biases, BatchNorm, the head).

    Every trained parameter keeps one momentum slot v (the layout of SGD's checkpoints):

        others:   g ← ∇ + λθ;  v ← μv + g;  θ ← θ − η·(g + μv)
        filters:  v ← μ_f·v + ∇;  W ← W·√r / (‖W‖_F + ε);  W ← W − η_f·k·NS(∇ + μ_f·v)

    with W seen as an r × c matrix, r = C_out, c = C_in·kh·kw (the stored (C_out, C_in, kh, kw)
    order; NS is the same for any order of the columns). `newton_schulz` runs `ns_steps` (3 in
    airbench94_muon) in the parameters' dtype (airbench: bfloat16). The filters as airbench has
    them: no weight decay, and the weight renormalised to ‖W‖_F = √r before every step (BatchNorm
    after each conv makes the scale free); `normalize_filters=False` leaves out the
    renormalisation, for networks without BatchNorm after their convolutions. k = √max(1, r/c),
    the scale of the Muon write-up (Jordan, 2024), keeps the step's RMS at 1/√c for tall
    matrices too; it is 1 for every filter bank of airbench's network.

    Rates: η is the learning rate (the schedule's, when one is set); the filters take
    η_f = η · filter_lr / lr, so with a constant rate η_f = filter_lr and a schedule scales both
    alike (airbench94_muon decays both linearly to 0). A parameter with learning-rate scale s
    takes s·η (s·η_f for filters) and weight decay λ/s, as with SGD; a frozen one never moves.
    airbench94_muon: lr 0.24 and momentum 0.6 for the filters, Nesterov momentum 0.85 for the
    rest. `nesterov=False` steps along v instead of g + μv for both.
    """

    slot_kinds = ("momentum",)

    def __init__(
        self,
        model: Any,
        lr: float = 0.05,
        momentum: float = 0.85,
        nesterov: bool = True,
        weight_decay: float = 0.0,
        filter_lr: float = 0.24,
        filter_momentum: float = 0.6,
        ns_steps: int = 3,
        normalize_filters: bool = True,
    ) -> None:
        super().__init__(model, lr, weight_decay)
        if lr <= 0 or filter_lr < 0:
            raise ValueError(f"Muon: expected lr > 0 and filter_lr >= 0, got {lr}, {filter_lr}")
        if momentum < 0 or filter_momentum < 0:
            raise ValueError(f"Muon: momenta must be >= 0, got {momentum}, {filter_momentum}")
        if nesterov and min(momentum, filter_momentum) <= 0:
            raise ValueError("Nesterov momentum needs momentum > 0 and filter_momentum > 0")
        if ns_steps < 1:
            raise ValueError(f"Muon: ns_steps must be >= 1, got {ns_steps}")
        self.momentum, self.filter_momentum, self.nesterov = momentum, filter_momentum, nesterov
        self.filter_ratio, self.ns_steps = filter_lr / lr, ns_steps
        self.normalize_filters = normalize_filters
        self._plans: dict[int, tuple] = {}

    def _plan(self, index: int, group: Any) -> tuple:
        """For group `index`: per-element SGD rate scales and weight decay (0 on the filters),
        per-element momenta, and (start, stop, r, rate) of each trained filter bank; made again
        when the learning-rate scales change (a layer frozen or unfrozen)."""
        cached = self._plans.get(index)
        if cached is not None and cached[0] is group.scale_values:
            return cached[1]
        xp = namespace(group.params)
        params = [e for e in group.entries if e.kind == "params"]
        filters = [(e.start, e.stop, e.shape[0], s * self.filter_ratio * _shape_scale(e.shape))
                   for e, s in zip(params, group.scale_values, strict=True)
                   if len(e.shape) == 4 and s > 0]  # fmt: skip
        others = xp.ones_like(group.params)
        for start, stop, _, _ in filters:
            others[start:stop] = 0.0
        momenta = self.momentum * others + self.filter_momentum * (1.0 - others)
        decay = (self.weight_decay * group.inverse_scales) * others
        plan = (group.scales * others, decay, momenta, filters)
        self._plans[index] = (group.scale_values, plan)
        return plan

    def update(self, index: int, group: Any, lr: Any) -> None:
        xp = namespace(group.params)
        scales, decay, momenta, filters = self._plan(index, group)
        grad, param = group.grads, group.params
        if self.weight_decay:
            grad = grad + decay * param
        if self.momentum or self.filter_momentum:
            velocity = self.flat_slot("momentum", index)
            velocity *= momenta
            velocity += grad
            grad = grad + momenta * velocity if self.nesterov else velocity
        param -= (lr * scales) * grad
        for start, stop, rows, rate in filters:
            step = newton_schulz(xp.reshape(grad[start:stop], (rows, -1)), self.ns_steps)
            weight = param[start:stop]
            if self.normalize_filters:
                weight *= math.sqrt(rows) / (xp.sqrt(xp.sum(weight * weight)) + 1e-7)
            weight -= xp.reshape((lr * rate) * step, (-1,))


def _shape_scale(shape: tuple[int, ...]) -> float:
    """√max(1, r/c) of a filter bank (C_out, C_in, kh, kw) seen as C_out × C_in·kh·kw."""
    rows, columns = shape[0], math.prod(shape[1:])
    return math.sqrt(max(1.0, rows / columns))
