"""The layer protocol (`Layer`) and `Sequential`, the layers in order.

Spatial layers work channels-last, x: (N, H, W, C), so that a convolution is one GEMM whose rows
are output pixels. `Sequential` is the boundary the user sees: it takes and returns (N, C, H, W)
batches, like PyTorch, and converts once on the way in and once on the way out.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from math import prod
from typing import Any

from xpcnn.backend import (
    active_device,
    active_namespace,
    asarray,
    default_generator,
    device,
    dtype_of,
    namespace,
    to_numpy,
)
from xpcnn.layers.layout import channels_first, channels_last
from xpcnn.layers.summary import Summary, SummaryRow


def he_normal(shape: tuple[int, ...], fan_in: int, dtype: Any = "float32") -> Any:
    """Kaiming normal initialisation: N(0, 2 / fan_in), right for layers followed by ReLU."""
    return default_generator().normal(shape, std=(2.0 / fan_in) ** 0.5, dtype=dtype)


def zeros(shape: tuple[int, ...], dtype: Any = "float32") -> Any:
    xp = active_namespace()
    return xp.zeros(shape, dtype=dtype_of(dtype, xp), device=active_device())


def ones(shape: tuple[int, ...], dtype: Any = "float32") -> Any:
    xp = active_namespace()
    return xp.ones(shape, dtype=dtype_of(dtype, xp), device=active_device())


class Layer:
    """A layer: `forward(x)` keeps what `backward` needs; `backward(dy)` accumulates the
    parameter gradients and returns dL/dx. `params` are trained, `buffers` are state that is
    saved but not trained; both are saved by `state_dict` under their names.

    `frozen` names parameters the optimizer leaves alone (PyTorch's requires_grad=False): saved,
    never updated, their gradients not computed. `lr_scales` maps a parameter name to a
    multiplier of its learning rate (the optimizer keeps its weight-decay step unscaled).

    Shapes given to `output_shape` and `flops` are one image's, channels-last: (H, W, C) for
    feature maps, (F,) for features.
    """

    # Capabilities, read by Sequential.execution_order.
    # The layer commutes with max pooling, gradients included (ReLU: max(relu(a)) = relu(max(a))).
    commutes_with_max_pool = False
    # The layer is a max pooling: a layer before it that commutes with it may run after it.
    is_max_pool = False

    def __init__(self) -> None:
        self.params: OrderedDict[str, Any] = OrderedDict()
        self.buffers: OrderedDict[str, Any] = OrderedDict()
        self.gradients: dict[str, Any] = {}
        self.frozen: set[str] = set()
        self.lr_scales: dict[str, float] = {}
        self.training = True
        # name -> the parameter's slice of the model's flat gradient buffer (layers/flat.py)
        self.grad_views: dict[str, Any] = {}
        self.flat_state: Any = None

    def __call__(self, x: Any) -> Any:
        return self.forward(x)

    def forward(self, x: Any) -> Any:
        raise NotImplementedError

    def backward(self, dy: Any, input_grad: bool = True) -> Any:
        """Accumulate parameter gradients; return dL/dx, or None when `input_grad` is False
        (the first layer of a network: nobody needs its input gradient)."""
        raise NotImplementedError

    def forward_channels_last(self, x: Any) -> Any:
        """forward on a channels-last batch (a Sequential inside a Sequential skips its
        boundary's transposes)."""
        return self.forward(x)

    def backward_channels_last(self, dy: Any, input_grad: bool = True) -> Any:
        return self.backward(dy, input_grad)

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """One image's output shape for one image's input shape, channels-last."""
        return tuple(input_shape)

    def flops(self, input_shape: tuple[int, ...]) -> int:
        """Forward FLOPs per image, a multiply-add counted as 2. Only the GEMMs count (Conv2D,
        Dense): element-wise layers, normalisation and pooling are 0."""
        return 0

    def train(self, mode: bool = True) -> Layer:
        self.training = mode
        for _, child in self.named_children():
            child.train(mode)
        return self

    def eval(self) -> Layer:
        return self.train(False)

    def zero_grad(self) -> None:
        self.gradients.clear()
        for _, child in self.named_children():
            child.zero_grad()

    def needs_grad(self, name: str) -> bool:
        """Whether backward computes `name`'s gradient: a parameter of the layer that is not
        frozen. Every layer asks this before computing one (PyTorch's requires_grad)."""
        return name in self.params and name not in self.frozen

    def accumulate(self, name: str, grad: Any) -> None:
        """gradients[name] += grad; the first gradient after zero_grad is stored as it is, copied
        into the model's flat gradient buffer where it has one (`grad_views`)."""
        if name in self.gradients:
            self.gradients[name] += grad
        elif name in self.grad_views:
            self.grad_views[name][...] = grad
            self.gradients[name] = self.grad_views[name]
        else:
            self.gradients[name] = grad

    def named_children(self) -> Iterator[tuple[str, Layer]]:
        """The layers this one holds, by the names their state-dict keys start with; every
        named_* method lists the layer's own entries, then each child's as "<child>.<key>"."""
        return iter(())

    def _children(self, method: str) -> Iterator[tuple[str, Any]]:
        for prefix, child in self.named_children():
            for name, value in getattr(child, method)():
                yield f"{prefix}.{name}", value

    def named_parameters(self) -> Iterator[tuple[str, Any]]:
        yield from self.params.items()
        yield from self._children("named_parameters")

    def named_lr_scales(self) -> Iterator[tuple[str, float]]:
        """Each parameter's learning-rate multiplier: 0 when frozen, else its `lr_scales` entry
        (default 1)."""
        for name in self.params:
            yield name, 0.0 if name in self.frozen else float(self.lr_scales.get(name, 1.0))
        yield from self._children("named_lr_scales")

    def trains(self) -> bool:
        """Whether any parameter of the layer is trained (not frozen)."""
        return any(scale > 0 for _, scale in self.named_lr_scales())

    def named_gradients(self) -> Iterator[tuple[str, Any]]:
        for name, value in self.params.items():
            grad = self.gradients.get(name)
            yield name, grad if grad is not None else namespace(value).zeros_like(value)
        yield from self._children("named_gradients")

    def named_state(self) -> Iterator[tuple[str, Any]]:
        """Parameters then buffers, in PyTorch's state-dict order."""
        yield from self.params.items()
        yield from self.buffers.items()
        yield from self._children("named_state")

    def set_state(self, name: str, value: Any) -> None:
        prefix, child, rest = name.partition(".")
        if child:  # "<child>.<key>"
            dict(self.named_children())[prefix].set_state(rest, value)
        else:
            (self.params if name in self.params else self.buffers)[name] = value

    def parameters(self) -> list[Any]:
        return [value for _, value in self.named_parameters()]

    def num_parameters(self) -> int:
        return sum(prod(value.shape) for _, value in self.named_parameters())

    def grads(self) -> OrderedDict[str, Any]:
        """Gradients under the same keys as `state_dict`'s parameters (zeros before backward)."""
        return OrderedDict(self.named_gradients())

    def state_dict(self) -> OrderedDict[str, Any]:
        """Name -> array, with the keys and layouts of the equivalent PyTorch module."""
        return OrderedDict(self.named_state())

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Copy in arrays of any backend (NumPy, CuPy, torch tensors via NumPy) with each
        entry's dtype; keys and shapes must match exactly."""
        own = self.state_dict()
        missing = [key for key in own if key not in state]
        unexpected = [key for key in state if key not in own]
        if missing or unexpected:
            raise ValueError(
                f"state dict does not fit this model: missing {missing}, unexpected {unexpected}"
            )
        for key, current in own.items():
            value = to_numpy(state[key])
            if tuple(value.shape) != tuple(current.shape):
                raise ValueError(
                    f"state dict entry {key!r} has shape {tuple(value.shape)}, "
                    f"expected {tuple(current.shape)}"
                )
            self.set_state(
                key, asarray(value, dtype=current.dtype, device=device(current), copy=True)
            )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.extra_repr()})"

    def extra_repr(self) -> str:
        return ""

    def brief(self) -> str:
        """One line for a summary row: the repr, or the class and its children's classes."""
        children = ", ".join(type(child).__name__ for _, child in self.named_children())
        return f"{type(self).__name__}({children})" if children else " ".join(repr(self).split())


# hook(layer index, "forward" or "backward", run): calls run() (the layer's pass) and returns
# its result; Sequential's walk calls it around each layer (bench's profile times it)
Hook = Callable[[int, str, Callable[[], Any]], Any]


def _run(index: int, phase: str, run: Callable[[], Any]) -> Any:
    return run()


class Sequential(Layer):
    """Layers applied in order; takes and returns (N, C, H, W) batches at its boundary.

    Layers may be named, `Sequential(("conv1", Conv2D(...)), ...)` or `Sequential({"conv1":
    ...})`; an unnamed layer is named by its index. State-dict keys are "<name>.<key>", the same
    as `torch.nn.Sequential`'s ("0.weight", or "conv1.weight").
    """

    def __init__(self, *layers: Layer | tuple[str, Layer] | Mapping[str, Layer]) -> None:
        super().__init__()
        if len(layers) == 1 and isinstance(layers[0], Mapping):
            layers = tuple(layers[0].items())
        named = [
            item if isinstance(item, tuple) else (str(i), item) for i, item in enumerate(layers)
        ]
        names = [name for name, _ in named]
        for name in names:
            if not name or "." in name or names.count(name) > 1:
                expected = "unique, non-empty and without '.'"
                raise ValueError(f"Sequential: layer names must be {expected}, got {name!r}")
        self.names = names
        self.layers = [layer for _, layer in named]

    def __getitem__(self, index: int | str) -> Layer:
        return self.layers[self.names.index(index) if isinstance(index, str) else index]

    def __len__(self) -> int:
        return len(self.layers)

    def forward(self, x: Any) -> Any:
        images = x.ndim == 4  # (N, C, H, W) at the boundary
        if images:
            x = namespace(x).permute_dims(x, (0, 2, 3, 1))
        x = self.forward_channels_last(x)
        if images and x.ndim == 4:
            x = namespace(x).permute_dims(x, (0, 3, 1, 2))
        return x

    def execution_order(self) -> list[int]:
        """Layer indices in the order they run. A layer that commutes with max pooling (ReLU)
        right before a MaxPool2D runs after it instead: max(relu(a)) = relu(max(a)), with the same
        gradients, and the ReLU then touches a quarter of the pixels."""
        order = list(range(len(self.layers)))
        for i in range(len(order) - 1):
            layer, following = self.layers[order[i]], self.layers[order[i + 1]]
            if layer.commutes_with_max_pool and following.is_max_pool:
                order[i], order[i + 1] = order[i + 1], order[i]
        return order

    def walk(
        self,
        value: Any,
        visit: Callable[[int, int, Any], Any],
        order: list[int] | None = None,
        reverse: bool = False,
    ) -> Any:
        """The one walk over the layers (forward, backward, profiling, the summary): for each
        position of `order` (default: the declared order), value = visit(position, layer index,
        value), backwards with `reverse`; the walk ends where a visit returns None."""
        order = list(range(len(self.layers))) if order is None else order
        positions = range(len(order) - 1, -1, -1) if reverse else range(len(order))
        for position in positions:
            value = visit(position, order[position], value)
            if value is None:
                break
        return value

    def forward_channels_last(self, x: Any, hook: Hook | None = None) -> Any:
        """The layers in `execution_order`; `hook(index, "forward", run)` wraps each layer's
        call `run()` (profiling: time it) and returns its result."""
        self.order = self.execution_order()  # kept for backward
        hook = hook or _run

        def forward(position: int, index: int, x: Any) -> Any:
            return hook(index, "forward", lambda: self.layers[index].forward_channels_last(x))

        return self.walk(x, forward, self.order)

    def backward(self, dy: Any, input_grad: bool = True) -> Any:
        """Accumulate parameter gradients; return dL/dx, or None when `input_grad` is False
        (then the first layer skips its input-gradient work)."""
        if dy.ndim == 4:
            dy = namespace(dy).permute_dims(dy, (0, 2, 3, 1))
        dx = self.backward_channels_last(dy, input_grad)
        if dx is not None and dx.ndim == 4:
            dx = namespace(dx).permute_dims(dx, (0, 3, 1, 2))
        return dx

    def input_grads_needed(self, input_grad: bool) -> list[bool]:
        """Per position of `execution_order`: whether that layer's input gradient is needed,
        i.e. the caller asks for the network's or a layer before it trains (what PyTorch's
        autograd skips for a frozen prefix)."""
        needed, trains = [], input_grad
        for position in self.execution_order():
            needed.append(trains)
            trains = trains or self.layers[position].trains()
        return needed

    def backward_channels_last(
        self, dy: Any, input_grad: bool = True, hook: Hook | None = None
    ) -> Any:
        """Layers in reverse order; the pass ends at the first layer whose input gradient is
        not needed (`input_grads_needed`). `hook(index, "backward", run)` as in forward."""
        needed = self.input_grads_needed(input_grad)
        hook = hook or _run

        def backward(position: int, index: int, dy: Any) -> Any:
            layer = self.layers[index]
            return hook(
                index, "backward", lambda: layer.backward_channels_last(dy, needed[position])
            )

        return self.walk(dy, backward, self.order, reverse=True)

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        shapes = self._shapes(input_shape)
        return tuple(shapes[-1][2]) if shapes else tuple(input_shape)

    def flops(self, input_shape: tuple[int, ...]) -> int:
        return sum(layer.flops(shape) for layer, shape, _ in self._shapes(input_shape))

    def _shapes(self, input_shape: tuple[int, ...]) -> list[tuple[Layer, tuple, tuple]]:
        """(layer, its input shape, its output shape) for one image, channels-last, in the
        declared order."""
        shapes = []

        def visit(position: int, index: int, shape: tuple[int, ...]) -> tuple[int, ...]:
            output = self.layers[index].output_shape(shape)
            shapes.append((self.layers[index], tuple(shape), output))
            return output

        self.walk(tuple(input_shape), visit)
        return shapes

    def summary(self, input_shape: tuple[int, ...]) -> Summary:
        """Output shape, parameters and forward FLOPs of each layer for one image of
        `input_shape` as the user sees it: (C, H, W), or (F,) for features (Keras' summary)."""
        rows = []
        for index, (layer, shape, output) in enumerate(self._shapes(channels_last(input_shape))):
            name = layer.brief()
            if self.names[index] != str(index):
                name = f"{self.names[index]}: {name}"
            flops = layer.flops(shape)
            rows.append(
                SummaryRow(index, name, channels_first(output), layer.num_parameters(), flops)
            )
        return Summary(tuple(input_shape), tuple(rows))

    def named_children(self) -> Iterator[tuple[str, Layer]]:
        return zip(self.names, self.layers, strict=True)

    def __repr__(self) -> str:
        inner = "\n".join(f"  ({name}): {layer!r}" for name, layer in self.named_children())
        return f"Sequential(\n{inner}\n)"
