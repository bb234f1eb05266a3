"""Count the array operations a piece of code issues, and where they come from.

On a GPU each array operation is a kernel launch (~10 µs of host time on CuPy whatever its size),
so a training step's operation count sets a floor under its time. Two counters see them:

    count_strict   array_api_strict: every public function of the namespace (and its linalg) and
                   every operator of its Array, patched while counting
    count_torch    torch tensors (xpcnn under XPCNN_BACKEND=torch, or the PyTorch twin): the
                   aten operations PyTorch's dispatcher runs (a TorchDispatchMode)

Each call the code makes (the outermost one only: a function that calls another counts once) is
an `Event` of one kind:

    op      an operation that computes: a new array, or a write into one (x[i] = v, x += y)
    view    a result that shares memory with an input (reshape without a copy, permute_dims,
            basic slicing, broadcast_to): no kernel, not counted as an operation
    alloc   an allocation without a fill (empty, empty_like): no kernel either
    h2d     host data made an array (asarray of a list, a NumPy array, a Python scalar; PyTorch's
            lift_fresh), or a copy from the host's device to another
    d2h     the host reads a value (float(x), int(x), bool(x), x.__index__(); PyTorch's
            .item()), or a copy onto the host's device

Shape queries (.shape, .ndim, .dtype, .device) read the host's own metadata: not events.
array_api_strict's CPU_DEVICE is the host, so NumPy conversion of its arrays is not seen; on
`device1` (the CI stand-in for an accelerator) every way to the host goes through `to_device`
and is counted. Each event keeps the Python scalars passed to it (shapes, slice bounds and
scalar operands included, flattened in order), so that the traces of two steps can be compared:
a step that can be recorded once and replayed (a CUDA graph) issues the same trace whatever its
learning rate.

`Counter.scope(label)` names where events come from; `xpcnn_step_scopes` and
`torch_step_scopes` label a training step's events by layer and phase ("3 Conv2D/forward",
"loss", "optimizer", "other").
"""

from __future__ import annotations

import inspect
import warnings
from collections import Counter as Tally
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from functools import wraps
from numbers import Number
from typing import Any, NamedTuple

import numpy as np

from xpcnn.backend import BackendError

KINDS = ("op", "view", "alloc", "h2d", "d2h")
OTHER = "other"


class Event(NamedTuple):
    """One call the counted code made: its kind (one of KINDS), the function or aten operation,
    the Python scalars it was given, and the scope it ran in."""

    kind: str
    name: str
    scalars: tuple
    scope: str


class Counter:
    """The events of the code run while counting, each labelled with the innermost scope."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.scopes: list[str] = []  # a stack; hooks push and pop directly
        self.depth = 0  # > 0 inside a counted call: nested calls are part of it

    @property
    def current_scope(self) -> str:
        return self.scopes[-1] if self.scopes else OTHER

    @contextmanager
    def scope(self, label: str) -> Iterator[None]:
        """Label the events inside with `label` (an inner scope wins); on exit the stack is as
        it was on entry, whatever hooks pushed inside."""
        depth = len(self.scopes)
        self.scopes.append(label)
        try:
            yield
        finally:
            del self.scopes[depth:]

    def record(self, kind: str, name: str, scalars: tuple) -> None:
        self.events.append(Event(kind, name, scalars, self.current_scope))

    def count(self, kind: str = "op") -> int:
        return sum(event.kind == kind for event in self.events)

    def by_scope(self, kind: str = "op") -> dict[str, int]:
        """Events of `kind` per scope, in the order the scopes first issued one."""
        return dict(Tally(event.scope for event in self.events if event.kind == kind))

    def trace(self) -> list[tuple[str, str, tuple]]:
        """(kind, name, scalars) of every event in order: what a recorded step would replay."""
        return [(event.kind, event.name, event.scalars) for event in self.events]


def python_scalars(*values: Any) -> tuple:
    """The Python (and NumPy) scalars among `values`, tuples, lists, dicts (keys too) and slices
    flattened in order; arrays, dtypes, devices and None left out (except a slice's bounds)."""
    found: list[Any] = []

    def walk(value: Any) -> None:
        if isinstance(value, (bool, int, float, complex)):
            found.append(value)
        elif isinstance(value, np.generic) and isinstance(value, Number):
            found.append(value.item())
        elif isinstance(value, slice):  # bounds as given, None included: a[1:] is not a[:1]
            found.extend((value.start, value.stop, value.step))
        elif isinstance(value, (tuple, list)):
            for item in value:
                walk(item)
        elif isinstance(value, dict):
            for key, item in value.items():
                found.append(key)
                walk(item)

    walk(values)
    return tuple(found)


# --- array_api_strict ------------------------------------------------------------------------

# Operators of array_api_strict.Array that compute; their in-place forms always write.
_BINARY = ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul", "and", "or", "xor",
           "lshift", "rshift")  # fmt: skip
_OPERATORS = (
    *(f"__{prefix}{name}__" for name in _BINARY for prefix in ("", "r", "i")),
    *("__eq__", "__ne__", "__lt__", "__le__", "__gt__", "__ge__"),
    *("__abs__", "__neg__", "__pos__", "__invert__", "__getitem__", "__setitem__"),
)
_WRITES = {f"__i{name}__" for name in _BINARY} | {"__setitem__"}
_READS = ("__bool__", "__int__", "__float__", "__index__", "__complex__")
_FROM_HOST = {"asarray", "from_dlpack"}
_ALLOCATIONS = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided"}


def _arrays(value: Any, array_type: type) -> list[Any]:
    """The arrays in a value, a tuple, list or dict of values (arguments, results)."""
    if isinstance(value, array_type):
        return [value]
    if isinstance(value, (tuple, list)):
        return [a for item in value for a in _arrays(item, array_type)]
    if isinstance(value, dict):
        return _arrays(list(value.values()), array_type)
    return []


def _strict_kind(name: str, args: tuple, kwargs: dict, result: Any, array_type: type) -> str:
    """What an outermost call of array_api_strict did (one of KINDS), or "" for a call that made
    no array (finfo, result_type, an operator that returned NotImplemented)."""
    if name in _READS:
        return "d2h"
    inputs = _arrays((args, kwargs), array_type)
    outputs = _arrays(result, array_type)
    if name == "to_device" or (name in _FROM_HOST and inputs):
        source, target = inputs[0].device, outputs[0].device
        if source == target:
            return "view" if np.may_share_memory(outputs[0]._array, inputs[0]._array) else "op"
        return "d2h" if target == _host_device() else "h2d"
    if name in _FROM_HOST:
        return "h2d"
    if name in _WRITES:
        return "op"
    if not outputs:
        return ""
    if name == "__getitem__" and not _arrays(args[1:], array_type):
        return "view"  # basic indexing; x[0, 0] is a 0-d view in CuPy and torch, a copy here
    if name in _ALLOCATIONS:
        return "alloc"
    shared = all(any(np.may_share_memory(out._array, x._array) for x in inputs) for out in outputs)
    return "view" if shared else "op"


def _host_device() -> Any:
    import array_api_strict

    return array_api_strict.__array_namespace_info__().default_device()


def _patch(stack: ExitStack, owner: Any, name: str, replacement: Any) -> None:
    """owner.name = replacement until `stack` closes; then as it was (a method patched on an
    instance is deleted there, so that its class's shows through again)."""
    own = vars(owner)
    if name in own:
        stack.callback(setattr, owner, name, own[name])
    else:
        stack.callback(delattr, owner, name)
    setattr(owner, name, replacement)


def _counted(counter: Counter, name: str, fn: Any, array_type: type) -> Any:
    @wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        if counter.depth:
            return fn(*args, **kwargs)
        counter.depth += 1
        try:
            result = fn(*args, **kwargs)
        finally:
            counter.depth -= 1
        kind = _strict_kind(name, args, kwargs, result, array_type)
        if kind:
            counter.record(kind, name, python_scalars(args, kwargs))
        return result

    return call


@contextmanager
def count_strict() -> Iterator[Counter]:
    """Count what array_api_strict computes inside: its public functions (namespace and linalg)
    and Array's operators, scalar reads and `to_device`, patched and restored on exit. Code must
    look functions up as `xp.name` at call time (xpcnn does: `xp` is the module itself)."""
    import array_api_strict
    from array_api_strict._array_object import Array

    counter = Counter()
    with ExitStack() as stack:
        for module in (array_api_strict, array_api_strict.linalg):
            for name in dir(module):
                fn = getattr(module, name)
                if not name.startswith("_") and inspect.isfunction(fn):
                    _patch(stack, module, name, _counted(counter, name, fn, Array))
        for name in (*_OPERATORS, *_READS, "to_device"):
            if hasattr(Array, name):
                _patch(stack, Array, name, _counted(counter, name, getattr(Array, name), Array))
        yield counter


# --- PyTorch's dispatcher --------------------------------------------------------------------


def _torch_kind(func: Any, args: tuple, kwargs: dict) -> str:
    """What an aten operation did (one of KINDS), or "" for the profiler's markers."""
    import torch

    if func.namespace == "profiler":
        return ""
    name = func.__name__.split(".")[0]
    if name == "_local_scalar_dense":
        return "d2h"
    if name in ("lift_fresh", "lift_fresh_copy"):
        return "h2d"
    if name in ("_to_copy", "copy_"):
        tensors = _arrays((args, kwargs), torch.Tensor)
        target = kwargs.get("device") or tensors[0].device
        source = tensors[-1].device if name == "copy_" else tensors[0].device
        target = torch.device(target)
        if source.type != target.type:
            return "d2h" if target.type == "cpu" else "h2d"
    if name in _ALLOCATIONS:
        return "alloc"
    aliases = [r.alias_info for r in func._schema.returns if r.alias_info is not None]
    metadata_only = name == "_unsafe_view" or torch.Tag.inplace_view in func.tags
    if metadata_only or (aliases and not any(a.is_write for a in aliases)):
        return "view"
    return "op"


@contextmanager
def count_torch() -> Iterator[Counter]:
    """Count the aten operations PyTorch dispatches inside (autograd's included; views, the
    profiler's markers and allocations without a fill are their own kinds)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    counter = Counter()

    class Counting(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
            kwargs = kwargs or {}
            result = func(*args, **kwargs)  # nested operations run below this mode: unseen
            kind = _torch_kind(func, args, kwargs)
            scalars = python_scalars(args, kwargs)
            if str(func).startswith("aten.lift_fresh") and args[0].numel() == 1:
                scalars = (args[0].item(),)  # a Python scalar torch.asarray lifted: its value
            if kind:
                counter.record(kind, str(func), scalars)
            return result

    with Counting():
        yield counter


def counter_for(backend: str) -> Any:
    """The counter of xpcnn's operations on `backend` (`count_strict` or `count_torch`); a
    BackendError for any other: NumPy's and CuPy's calls cannot be intercepted one by one."""
    if backend == "array_api_strict":
        return count_strict
    if backend == "torch":
        return count_torch
    raise BackendError(
        f"counting operations needs XPCNN_BACKEND=array_api_strict (XPCNN_DEVICE=device1 stands "
        f"in for an accelerator) or torch, not {backend}"
    )


# --- a training step, by layer ---------------------------------------------------------------


def layer_labels(model: Any) -> list[str]:
    """Scope names of the layers of a Sequential: "<index> <layer class>"."""
    return [f"{i} {type(layer).__name__}" for i, layer in enumerate(model.layers)]


def _scoped(counter: Counter, fn: Any, label: str) -> Any:
    @wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        with counter.scope(label):
            return fn(*args, **kwargs)

    return call


@contextmanager
def xpcnn_step_scopes(counter: Counter, model: Any, optimizer: Any) -> Iterator[None]:
    """Label a training step of an xpcnn Sequential (`xpcnn.train.train_step`): each layer's
    forward and backward ("3 Conv2D/forward"), "loss" from the network's output to the start
    of its backward, "optimizer", "other" for the rest. The methods are wrapped on the
    instances and restored on exit."""
    with ExitStack() as stack, counter.scope(OTHER):
        for label, layer in zip(layer_labels(model), model.layers, strict=True):
            for method, phase in (("forward_channels_last", "forward"),
                                  ("backward_channels_last", "backward")):  # fmt: skip
                wrapped = _scoped(counter, getattr(layer, method), f"{label}/{phase}")
                _patch(stack, layer, method, wrapped)
        forward, backward = model.forward, model.backward

        def forward_then_loss(*args: Any, **kwargs: Any) -> Any:
            out = forward(*args, **kwargs)
            counter.scopes.append("loss")  # until the backward starts
            return out

        def backward_after_loss(*args: Any, **kwargs: Any) -> Any:
            if counter.current_scope == "loss":
                counter.scopes.pop()
            return backward(*args, **kwargs)

        _patch(stack, model, "forward", forward_then_loss)
        _patch(stack, model, "backward", backward_after_loss)
        _scope_optimizer(stack, counter, optimizer)
        yield


def _scope_optimizer(stack: ExitStack, counter: Counter, optimizer: Any) -> None:
    """Label what the optimizer does "optimizer": its `step`, and xpcnn's split of it into
    device work and host bookkeeping (`apply`, `finish`), which a TrainStep calls."""
    for method in ("step", "apply", "finish"):
        if hasattr(optimizer, method):
            wrapped = _scoped(counter, getattr(optimizer, method), "optimizer")
            _patch(stack, optimizer, method, wrapped)


@contextmanager
def torch_step_scopes(
    counter: Counter, twin: Any, optimizer: Any, labels: list[str]
) -> Iterator[None]:
    """Label a training step of a torch.nn.Sequential (the twin) as `xpcnn_step_scopes` does,
    through module hooks: each child's forward; its backward from autograd reaching its output
    to autograd reaching the next child's output; "loss" from the network's output to the last
    child's backward; "optimizer" (its step). `labels` name the children (`layer_labels` of
    the xpcnn model, so that the rows match)."""
    handles = []

    def push(label: str) -> Any:
        def hook(*_: Any) -> None:
            counter.scopes.append(label)

        return hook

    def pop(*_: Any) -> None:
        counter.scopes.pop()

    def backward_from(label: str) -> Any:
        def hook(*_: Any) -> None:
            if counter.current_scope == "loss" or counter.current_scope.endswith("/backward"):
                counter.scopes.pop()
            counter.scopes.append(f"{label}/backward")

        return hook

    with ExitStack() as stack, counter.scope(OTHER), warnings.catch_warnings():
        # the first child's input needs no gradient; its backward hook says so, and is unused
        warnings.filterwarnings("ignore", "Full backward hook is firing")
        for label, child in zip(labels, twin, strict=True):
            handles.append(child.register_forward_pre_hook(push(f"{label}/forward")))
            handles.append(child.register_forward_hook(pop))
            handles.append(child.register_full_backward_pre_hook(backward_from(label)))
        handles.append(twin.register_forward_hook(lambda *_: counter.scopes.append("loss")))
        for handle in handles:
            stack.callback(handle.remove)
        _scope_optimizer(stack, counter, optimizer)
        yield
