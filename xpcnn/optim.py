"""Optimizers (SGD, Adam, AdamW) and learning-rate schedules, with PyTorch's update rules.

Optimizers update the model's parameter arrays in place. Their state (momentum buffers, moment
estimates, step count) is a flat dict of arrays, `state_dict()`, so checkpoints hold it as-is.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any

from xpcnn.backend import asarray, device, namespace, to_numpy


class Optimizer:
    """Base: `slot_kinds` names the per-parameter state an optimizer keeps ("momentum.0.weight").
    `lookahead`: a `Lookahead` run after every step (`Lookahead.attach`)."""

    slot_kinds: tuple[str, ...] = ()
    lookahead: Lookahead | None = None

    def __init__(self, model: Any, lr: float, weight_decay: float = 0.0) -> None:
        if lr < 0 or weight_decay < 0:
            raise ValueError(f"lr and weight_decay must be >= 0, got {lr}, {weight_decay}")
        self.model, self.lr, self.weight_decay = model, lr, weight_decay
        self.steps = 0
        self.slots: OrderedDict[str, Any] = OrderedDict()  # name of slot.param -> array

    def slot(self, kind: str, name: str, like: Any) -> Any:
        key = f"{kind}.{name}"
        if key not in self.slots:
            self.slots[key] = namespace(like).zeros_like(like)
        return self.slots[key]

    def step(self) -> None:
        """Update every parameter the model does not freeze. A parameter with learning-rate
        scale s takes lr·s and weight decay λ/s: its weight-decay step lr·λ·θ is unscaled."""
        self.steps += 1
        grads = self.model.grads()
        scales = dict(self.model.named_lr_scales())
        for name, param in self.model.named_parameters():
            scale = scales.get(name, 1.0)
            if scale > 0:
                self.update(name, param, grads[name], self.lr * scale, self.weight_decay / scale)
        if self.lookahead is not None:
            self.lookahead.after_step(self)

    def update(self, name: str, param: Any, grad: Any, lr: float, weight_decay: float) -> None:
        raise NotImplementedError

    def zero_grad(self) -> None:
        self.model.zero_grad()

    def state_dict(self) -> OrderedDict[str, Any]:
        state = OrderedDict(self.slots)
        state["steps"] = self.steps
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Take `state` (arrays of any backend) after checking every entry: "steps" a
        non-negative integer, each slot of a kind this optimizer keeps, for a parameter of the
        model, of that parameter's shape. Nothing changes when a check fails (ValueError)."""
        params = dict(self.model.named_parameters())
        kinds = self.slot_kinds + (("slow",) if self.lookahead is not None else ())
        averaged = Lookahead.targets(self.model) if self.lookahead is not None else {}
        steps = to_numpy(state["steps"]) if "steps" in state else None
        if steps is None or steps.shape != () or steps.dtype.kind not in "iu" or steps < 0:
            raise ValueError("optimizer state 'steps': expected a non-negative integer")
        slots = OrderedDict()
        for key, value in state.items():
            if key == "steps":
                continue
            kind, _, name = key.partition(".")
            if kind not in kinds:
                raise ValueError(
                    f"optimizer state {key!r}: {type(self).__name__} keeps "
                    f"{', '.join(kinds) or 'no per-parameter state'}"
                )
            targets = averaged if kind == "slow" else params
            if name not in targets:
                raise ValueError(f"optimizer state {key!r} has no parameter {name!r} in the model")
            like, value = targets[name], to_numpy(value)
            if tuple(value.shape) != tuple(like.shape) or value.dtype.kind != "f":
                raise ValueError(
                    f"optimizer state {key!r}: expected float {tuple(like.shape)}, got "
                    f"{value.dtype} {tuple(value.shape)}"
                )
            slots[key] = asarray(value, dtype=like.dtype, device=device(like), copy=True)
        self.steps, self.slots = int(steps), slots


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

    def update(self, name: str, param: Any, grad: Any, lr: float, weight_decay: float) -> None:
        if weight_decay:
            grad = grad + weight_decay * param
        if self.momentum:
            velocity = self.slot("momentum", name, param)
            velocity *= self.momentum
            velocity += grad
            grad = grad + self.momentum * velocity if self.nesterov else velocity
        param -= lr * grad


class Adam(Optimizer):
    """m ← β₁m + (1−β₁)g;  v ← β₂v + (1−β₂)g²;  θ ← θ − η·m̂/(√v̂ + ε), bias-corrected.

    `weight_decay` adds λθ to the gradient (L2), as PyTorch's Adam does.
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

    def update(self, name: str, param: Any, grad: Any, lr: float, weight_decay: float) -> None:
        xp = namespace(param)
        beta1, beta2 = self.betas
        if weight_decay and self.decoupled:
            param *= 1.0 - lr * weight_decay
        elif weight_decay:
            grad = grad + weight_decay * param
        m = self.slot("exp_avg", name, param)
        v = self.slot("exp_avg_sq", name, param)
        m *= beta1
        m += (1.0 - beta1) * grad
        v *= beta2
        v += (1.0 - beta2) * grad * grad
        m_hat_scale = 1.0 / (1.0 - beta1**self.steps)
        v_hat_scale = 1.0 / (1.0 - beta2**self.steps)
        param -= lr * (m * m_hat_scale) / (xp.sqrt(v * v_hat_scale) + self.eps)


class AdamW(Adam):
    """Adam with decoupled weight decay: θ ← θ(1 − ηλ) before the Adam step."""

    decoupled = True

    def __init__(self, model: Any, lr: float = 1e-3, weight_decay: float = 0.01, **kw: Any):
        super().__init__(model, lr=lr, weight_decay=weight_decay, **kw)


OPTIMIZERS = {"sgd": SGD, "adam": Adam, "adamw": AdamW}


class Lookahead:
    """Lookahead (Zhang et al., 2019) as airbench schedules it, over the model's float state
    (weights and BatchNorm statistics): every `every` steps

        slow ← d·slow + (1 − d)·fast,  fast ← slow,   d = max_decay · (step / total_steps)^power,

    so early steps are barely averaged and late ones keep a long memory; after the last step
    (step ≥ total_steps) fast ← slow. `attach` starts the slow copy from the state at that time;
    the slow copies are the optimizer's slots "slow.<name>", so checkpoints hold them.
    """

    def __init__(
        self, total_steps: int, every: int = 5, max_decay: float = 0.95**5, power: float = 3.0
    ) -> None:
        if total_steps < 1 or every < 1 or not 0 <= max_decay <= 1:
            raise ValueError(
                f"Lookahead: expected total_steps, every >= 1 and max_decay in [0, 1], got "
                f"{total_steps}, {every}, {max_decay}"
            )
        self.total_steps, self.every, self.max_decay, self.power = (
            total_steps, every, max_decay, power,
        )  # fmt: skip

    @staticmethod
    def targets(model: Any) -> dict[str, Any]:
        """The state Lookahead averages: every float entry of the model's state dict."""
        return {
            name: value for name, value in model.named_state()
            if namespace(value).isdtype(value.dtype, "real floating")
        }  # fmt: skip

    def decay(self, step: int) -> float | None:
        """d at `step` (counted from 1), 1.0 once training is over, None between syncs."""
        if step % self.every == 0:
            return self.max_decay * min(step / self.total_steps, 1.0) ** self.power
        return 1.0 if step >= self.total_steps else None

    def attach(self, optimizer: Optimizer) -> None:
        """Make `optimizer` sync its model with a slow copy of the model's state as it is now."""
        optimizer.lookahead = self
        for name, value in self.targets(optimizer.model).items():
            optimizer.slots[f"slow.{name}"] = namespace(value).asarray(value, copy=True)

    def after_step(self, optimizer: Optimizer) -> None:
        decay = self.decay(optimizer.steps)
        if decay is None:
            return
        for name, fast in self.targets(optimizer.model).items():
            xp = namespace(fast)  # a state restored without slow copies starts them here
            slow = optimizer.slots.setdefault(f"slow.{name}", xp.asarray(fast, copy=True))
            if decay < 1.0:
                slow *= decay
                slow += (1.0 - decay) * fast
            optimizer.model.set_state(name, xp.asarray(slow, copy=True))


# Learning-rate schedules: callables step -> lr, with step counted from 0.


class Constant:
    def __init__(self, lr: float) -> None:
        self.lr = lr

    def __call__(self, step: int) -> float:
        return self.lr


class StepDecay:
    """lr · γ^⌊step / step_size⌋ (PyTorch's StepLR, counted in steps)."""

    def __init__(self, lr: float, step_size: int, gamma: float = 0.1) -> None:
        if step_size < 1:
            raise ValueError(f"step_size must be >= 1, got {step_size}")
        self.lr, self.step_size, self.gamma = lr, step_size, gamma

    def __call__(self, step: int) -> float:
        return self.lr * self.gamma ** (step // self.step_size)


def _cosine(start: float, end: float, fraction: float) -> float:
    return end + (start - end) * (1.0 + math.cos(math.pi * min(max(fraction, 0.0), 1.0))) / 2.0


class Cosine:
    """Linear warm-up from 0 over `warmup_steps`, then cosine from lr down to min_lr."""

    def __init__(
        self, lr: float, total_steps: int, warmup_steps: int = 0, min_lr: float = 0.0
    ) -> None:
        self.lr, self.total_steps, self.warmup_steps, self.min_lr = (
            lr,
            total_steps,
            warmup_steps,
            min_lr,
        )

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        span = max(self.total_steps - self.warmup_steps, 1)
        return _cosine(self.lr, self.min_lr, (step - self.warmup_steps) / span)


class OneCycle:
    """PyTorch's OneCycleLR (cosine form): from max_lr/div_factor up to max_lr over the first
    `pct_start` of the steps, then down to max_lr/(div_factor·final_div_factor)."""

    def __init__(
        self,
        max_lr: float,
        total_steps: int,
        pct_start: float = 0.3,
        div_factor: float = 25.0,
        final_div_factor: float = 1e4,
    ) -> None:
        self.max_lr, self.total_steps = max_lr, total_steps
        self.initial_lr = max_lr / div_factor
        self.min_lr = self.initial_lr / final_div_factor
        self.peak_step = float(pct_start * total_steps) - 1

    def __call__(self, step: int) -> float:
        if step <= self.peak_step:
            return _cosine(self.initial_lr, self.max_lr, step / self.peak_step)
        span = self.total_steps - 1 - self.peak_step
        return _cosine(self.max_lr, self.min_lr, (step - self.peak_step) / span)


class Triangular:
    """Linear from lr·start up to lr over the first `peak` of the steps, then linear down to
    lr·end at the last step (airbench's triangular schedule: 0.2, 0.23, 0.07)."""

    def __init__(
        self, lr: float, total_steps: int, peak: float = 0.23, start: float = 0.2,
        end: float = 0.07,
    ) -> None:  # fmt: skip
        self.lr, self.total_steps = lr, max(total_steps, 1)
        self.peak_step, self.start, self.end = int(peak * self.total_steps), start, end

    def __call__(self, step: int) -> float:
        if step < self.peak_step:
            return self.lr * (self.start + (1.0 - self.start) * step / self.peak_step)
        span = max(self.total_steps - self.peak_step, 1)
        fraction = min((step - self.peak_step) / span, 1.0)
        return self.lr * (1.0 + (self.end - 1.0) * fraction)


SCHEDULES = ("constant", "step", "cosine", "onecycle", "triangular")


def make_schedule(name: str, lr: float, total_steps: int, steps_per_epoch: int) -> Any:
    """A schedule by name (SCHEDULES): constant, step (×0.1 every third of training), cosine
    (one-epoch warm-up, at most a tenth of training), onecycle, triangular."""
    if name == "constant":
        return Constant(lr)
    if name == "step":
        return StepDecay(lr, step_size=max(total_steps // 3, 1), gamma=0.1)
    if name == "cosine":
        return Cosine(lr, total_steps, warmup_steps=min(steps_per_epoch, total_steps // 10))
    if name == "onecycle":
        return OneCycle(lr, total_steps)
    if name == "triangular":
        return Triangular(lr, total_steps)
    raise ValueError(f"schedule: expected one of {', '.join(SCHEDULES)}, got {name!r}")
