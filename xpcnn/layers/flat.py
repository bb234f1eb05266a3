"""A model's float state in one buffer per dtype, each parameter and buffer a view into it.

PyTorch updates a list of tensors with `foreach` kernels, a few launches for the whole model; the
array API has no foreach, so one flat buffer is how an optimizer's update, Lookahead's average
and a data-parallel reduction become a handful of array operations for the whole model. Per
dtype: the parameters first, then the float buffers (BatchNorm's running statistics), so the
parameters are one contiguous prefix; the gradients live in a second buffer of the parameters'
size and one element more (where a data-parallel step puts its batch size, so that one
reduction of one buffer averages them), which each layer's `accumulate` writes into
(`Layer.grad_views`).

Layers update their state in place. One that rebinds an entry (`layer.params[name] = new`) is
adopted again by `sync`, at the cost of one copy that step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from math import prod
from typing import Any

from xpcnn.backend import device, namespace


@dataclass
class Entry:
    name: str  # the state-dict key
    layer: Any  # the leaf layer that holds it
    key: str  # its name in that layer
    kind: str  # "params" or "buffers"
    start: int
    shape: tuple[int, ...]
    view: Any = None

    @property
    def stop(self) -> int:
        return self.start + prod(self.shape)


@dataclass
class Group:
    """The state of one dtype: `state` the whole buffer, `params` its parameter prefix, `grads`
    the gradients; `scales` each parameter element's learning-rate multiplier (0 when frozen) and
    `inverse_scales` 1/scale (0 when frozen), so weight decay λ/scale keeps lr·λ unscaled."""

    state: Any
    reduced: Any  # the gradients and one more element (a data-parallel reduction's weight)
    size: int  # parameters' elements: state[:size]
    entries: list[Entry] = field(default_factory=list)
    scales: Any = None
    inverse_scales: Any = None
    scale_values: tuple[float, ...] = ()

    @property
    def params(self) -> Any:
        return self.state[: self.size]

    @property
    def grads(self) -> Any:
        return self.reduced[: self.size]


def leaves(model: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """(state-dict prefix, layer) of every layer that holds state itself."""
    children = list(model.named_children())
    if not children:
        return [(prefix, model)]
    return [leaf for name, child in children for leaf in leaves(child, f"{prefix}{name}.")]


class FlatState:
    """The flat buffers of `model` (`FlatState.of(model)` makes them once and keeps them)."""

    def __init__(self, model: Any) -> None:
        self.model = model
        by_dtype: dict[str, list[tuple[int, Entry, Any]]] = {}
        for prefix, layer in leaves(model):
            for kind in ("params", "buffers"):
                for key, value in getattr(layer, kind).items():
                    xp = namespace(value)
                    if not xp.isdtype(value.dtype, "real floating"):
                        continue  # num_batches_tracked: an integer, kept as it is
                    entry = Entry(f"{prefix}{key}", layer, key, kind, 0, tuple(value.shape))
                    by_dtype.setdefault(str(value.dtype), []).append(
                        (kind == "buffers", entry, value)
                    )
        self.groups: list[Group] = []
        for items in by_dtype.values():
            items.sort(key=lambda item: item[0])  # parameters first, each kind in model order
            first = items[0][2]
            xp, dtype, where = namespace(first), first.dtype, device(first)
            start = 0
            for _, entry, _ in items:
                entry.start, start = start, start + prod(entry.shape)
            size = sum(prod(e.shape) for is_buffer, e, _ in items if not is_buffer)
            group = Group(xp.zeros((start,), dtype=dtype, device=where),
                          xp.zeros((size + 1,), dtype=dtype, device=where), size)  # fmt: skip
            for _, entry, value in items:
                group.entries.append(entry)
                self._adopt(group, entry, value)
            self.groups.append(group)
        self.sync()

    @staticmethod
    def of(model: Any) -> FlatState:
        """The model's flat state, made at the first call."""
        if getattr(model, "flat_state", None) is None:
            model.flat_state = FlatState(model)
        return model.flat_state

    def _adopt(self, group: Group, entry: Entry, value: Any) -> None:
        """Copy `value` into the entry's slice and make the layer hold the view."""
        xp = namespace(group.state)
        view = xp.reshape(group.state[entry.start : entry.stop], entry.shape)
        view[...] = value
        entry.view = view
        getattr(entry.layer, entry.kind)[entry.key] = view
        if entry.kind == "params":
            grad = xp.reshape(group.grads[entry.start : entry.stop], entry.shape)
            entry.layer.grad_views[entry.key] = grad

    def sync(self) -> None:
        """Adopt any entry a layer rebound since; rebuild the learning-rate scales when a layer's
        `frozen` or `lr_scales` changed. Python-side checks only when nothing changed."""
        scales = dict(self.model.named_lr_scales())
        for group in self.groups:
            for entry in group.entries:
                current = getattr(entry.layer, entry.kind)[entry.key]
                if current is not entry.view:
                    self._adopt(group, entry, current)
            params = [e for e in group.entries if e.kind == "params"]
            values = tuple(scales[e.name] for e in params)
            if values != group.scale_values:
                group.scales = _per_element(group, params, values)
                group.inverse_scales = _per_element(
                    group, params, [1.0 / s if s > 0 else 0.0 for s in values]
                )
                group.scale_values = values

    def gather_gradients(self) -> None:
        """Make the flat gradient buffer hold this step's gradients: those `accumulate` wrote
        are there already; one set from outside (`layer.gradients[name] = g`, as a PyTorch user
        sets `.grad`) is copied in; a trained parameter without one gets zeros."""
        scales = dict(self.model.named_lr_scales())
        for group in self.groups:
            for entry in group.entries:
                if entry.kind != "params":
                    continue
                view = entry.layer.grad_views[entry.key]
                grad = entry.layer.gradients.get(entry.key)
                if grad is None and scales[entry.name] > 0:
                    view[...] = 0.0
                elif grad is not None and grad is not view:
                    view[...] = grad
                    entry.layer.gradients[entry.key] = view

    def trained(self) -> list[tuple[Group, Entry]]:
        """(group, entry) of every parameter the optimizer updates (learning-rate scale > 0)."""
        scales = dict(self.model.named_lr_scales())
        return [(g, e) for g in self.groups for e in g.entries
                if e.kind == "params" and scales[e.name] > 0]  # fmt: skip


def _per_element(group: Group, params: list[Entry], values: Any) -> Any:
    """One value per parameter, repeated over its elements: a (parameters' size,) vector."""
    xp, like = namespace(group.state), group.state
    parts = [xp.full((prod(e.shape),), v, dtype=like.dtype, device=device(like))
             for e, v in zip(params, values, strict=True)]  # fmt: skip
    return xp.concat(parts) if parts else xp.zeros((0,), dtype=like.dtype, device=device(like))
