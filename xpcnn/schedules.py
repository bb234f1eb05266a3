"""Learning-rate schedules: callables step -> lr, with step counted from 0 (PyTorch's, and
airbench's triangular); `Optimizer.set_schedule` tabulates one on the device."""

from __future__ import annotations

import math
from typing import Any


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
