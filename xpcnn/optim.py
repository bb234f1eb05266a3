"""Optimizers (SGD, Adam, AdamW) and learning-rate schedules, with PyTorch's update rules.

Optimizers update the model's parameter arrays in place. Their state (momentum buffers, moment
estimates, step count) is a flat dict of arrays, `state_dict()`, so checkpoints hold it as-is.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any

from xpcnn.backend import asarray, device, namespace, to_numpy
from xpcnn.layers.flat import FlatState


class Optimizer:
    """Base: `slot_kinds` names the per-parameter state an optimizer keeps ("momentum.0.weight").
    `lookahead`: a `Lookahead` run after every step (`Lookahead.attach`).

    The update works on the model's flat buffers (`FlatState`): a few array operations for the
    whole model, whatever its number of parameters. Each slot kind is one flat buffer per dtype
    too; `slots` maps "kind.name" to each trained parameter's view of it (what checkpoints hold).
    Inside a step every value that changes from step to step lives on the device: the learning
    rate is read from a table of the schedule (`set_schedule`) at a device step index, so the
    step issues the same operations with the same arguments every time (a CUDA graph can
    replay it) and reads nothing back to the host.
    """

    slot_kinds: tuple[str, ...] = ()
    lookahead: Lookahead | None = None

    def __init__(self, model: Any, lr: float, weight_decay: float = 0.0) -> None:
        if lr < 0 or weight_decay < 0:
            raise ValueError(f"lr and weight_decay must be >= 0, got {lr}, {weight_decay}")
        self.model, self.weight_decay = model, weight_decay
        self.flat = FlatState.of(model)
        self.steps = 0
        self.slots: OrderedDict[str, Any] = OrderedDict()  # name of slot.param -> a view
        self.flat_slots: dict[tuple[str, int], Any] = {}  # (kind, group) -> flat buffer
        self.lr = lr

    @property
    def lr(self) -> float:
        """The learning rate of the next step (the schedule's, when one is set)."""
        return self.schedule(self.steps) if self.schedule is not None else self._lr

    @lr.setter
    def lr(self, value: float) -> None:
        """A constant learning rate from now on (one copy to the device at the next step)."""
        self._lr, self.schedule, self._lr_table = float(value), None, None
        self._lr_device, self._step_index, self._index_at = None, None, None

    def set_schedule(self, schedule: Any, total_steps: int) -> None:
        """Learning rates from `schedule(step)` for steps 0 ... total_steps − 1, as one table on
        the device (one copy, now), read at the device's step index inside each step."""
        self.schedule = schedule
        rates = [schedule(step) for step in range(max(total_steps, 1))]
        like = self.flat.groups[0].state if self.flat.groups else None
        self._lr_table = asarray(rates, dtype=like.dtype if like is not None else "float32",
                                 device=device(like) if like is not None else None)  # fmt: skip
        self._step_index, self._index_at = None, None

    def _device_lr(self) -> Any:
        """The learning rate as a device array: the schedule's table at the device step index
        (which then moves on), or the constant. The host sends the index only when it does not
        follow from the last step (a fresh table, `steps` set by a restore, past the table)."""
        like = self.flat.groups[0].state
        xp = namespace(like)
        if self._lr_table is None:
            if self._lr_device is None:
                self._lr_device = asarray([self._lr], dtype=like.dtype, device=device(like))
            return self._lr_device
        last = self._lr_table.shape[0] - 1
        if self._index_at != self.steps or self.steps >= last:
            self._step_index = asarray([min(self.steps, last)], "int64", device=device(like))
        lr = xp.take(self._lr_table, self._step_index)
        self._step_index += 1
        return lr

    def flat_slot(self, kind: str, group_index: int) -> Any:
        """The flat buffer of slot `kind` for a group, made (zeros) at its first use, with each
        trained parameter's view in `slots`."""
        key = (kind, group_index)
        if key not in self.flat_slots:
            group = self.flat.groups[group_index]
            xp = namespace(group.params)
            self.flat_slots[key] = xp.zeros_like(group.params)
            for g, entry in self.flat.trained():
                if g is group:
                    view = self.flat_slots[key][entry.start : entry.stop]
                    self.slots[f"{kind}.{entry.name}"] = xp.reshape(view, entry.shape)
        return self.flat_slots[key]

    def step(self) -> None:
        """Update every parameter the model does not freeze. A parameter with learning-rate
        scale s takes lr·s and weight decay λ/s: its weight-decay step lr·λ·θ is unscaled."""
        self.apply()
        self.finish()

    def apply(self) -> None:
        """The step's device work (what a recorded step replays)."""
        self.flat.sync()
        self.flat.gather_gradients()
        if self.flat.groups:
            lr = self._device_lr()
            for index, group in enumerate(self.flat.groups):
                self.update(index, group, lr)

    def finish(self) -> None:
        """The step's host bookkeeping: the count, and Lookahead's sync when one is due."""
        self.steps += 1
        self._index_at = self.steps
        if self.lookahead is not None:
            self.lookahead.after_step(self)

    def update(self, index: int, group: Any, lr: Any) -> None:
        """Update group `index` (its `params`, `grads`, `scales`) with learning rate `lr`, a
        one-element device array."""
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
            slots[key] = asarray(value, dtype=like.dtype, device=device(like))
        self.steps = int(steps)
        self.slots, self.flat_slots = OrderedDict(), {}
        if self.lookahead is not None and any(k.startswith("slow.") for k in slots):
            self.lookahead.attach(self)
        self.flat.sync()
        for key, value in slots.items():
            kind = key.partition(".")[0]
            if kind != "slow":
                for index in range(len(self.flat.groups)):
                    self.flat_slot(kind, index)
            self.slots[key][...] = value


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


OPTIMIZERS = {"sgd": SGD, "adam": Adam, "adamw": AdamW}


class Lookahead:
    """Lookahead (Zhang et al., 2019) as airbench schedules it, over the model's float state
    (weights and BatchNorm statistics): every `every` steps

        slow ← d·slow + (1 − d)·fast,  fast ← slow,   d = max_decay · (step / total_steps)^power,

    so early steps are barely averaged and late ones keep a long memory; after the last step
    (step ≥ total_steps) fast ← slow. `attach` starts the slow copy from the state at that time;
    the slow copy is one flat buffer per dtype beside the model's (`FlatState`), and its views
    are the optimizer's slots "slow.<name>", so checkpoints hold them. The sync runs after the
    step, decided on the host by the step count (outside a captured step).
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
        flat = optimizer.flat
        flat.sync()
        for index, group in enumerate(flat.groups):
            xp = namespace(group.state)
            slow = optimizer.flat_slots[("slow", index)] = xp.asarray(group.state, copy=True)
            for entry in group.entries:
                view = xp.reshape(slow[entry.start : entry.stop], entry.shape)
                optimizer.slots[f"slow.{entry.name}"] = view

    def after_step(self, optimizer: Optimizer) -> None:
        decay = self.decay(optimizer.steps)
        if decay is None:
            return
        flat = optimizer.flat
        flat.sync()
        if ("slow", 0) not in optimizer.flat_slots:  # a state restored without slow copies
            self.attach(optimizer)
        for index, group in enumerate(flat.groups):
            slow = optimizer.flat_slots[("slow", index)]
            if decay < 1.0:
                slow *= decay
                slow += (1.0 - decay) * group.state
            group.state[...] = slow


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
