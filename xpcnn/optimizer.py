"""The optimizer protocol: an update of the model's flat buffers (`FlatState`) with its state
in flat slots, the learning rate read on the device from a schedule's table; Lookahead, which
keeps its slow weights among them. SGD, Adam, AdamW (optim.py) and Muon (muon.py) subclass it."""

from __future__ import annotations

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
