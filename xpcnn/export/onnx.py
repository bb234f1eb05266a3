"""ONNX export: a Sequential as an ONNX graph that takes uint8 images and gives probabilities.

The graph is laid out as PyTorch would export the network's twin (NCHW, the same weight layouts
and initializer names as the state dict's keys):

    images  uint8 (N, C, H, W)
      Cast → Mul scale → Sub shift          x = (images / 255 − mean) / std, as `Batches` does it
      the layers, one ONNX operator each (GELU: several below opset 20)
      Softmax over the classes
    probabilities  float32 (N, K)

The model's metadata holds the class names, the normalisation, the preset and xpcnn's version.
`onnx` is imported when a graph is built, not before: it is an optional extra.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

import xpcnn
from xpcnn.backend import to_numpy
from xpcnn.files import atomic_file
from xpcnn.layers import (
    GELU,
    AvgPool2D,
    BatchNorm1D,
    BatchNorm2D,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    GlobalAvgPool2D,
    GlobalMaxPool2D,
    Layer,
    MaxPool2D,
    ReLU,
    Residual,
    Scale,
    Sequential,
)
from xpcnn.layers.conv import resolve_padding
from xpcnn.layers.layout import channels_first, channels_last

MIN_OPSET = 13  # Softmax over one axis (13); every operator used here has its current form
# PyTorch's long-time default, read by the runtimes of the last years (servers, phones,
# browsers); GELU is then composed of Mul, Add and Tanh
DEFAULT_OPSET = 17
GELU_OPSET = 20  # the first opset with a Gelu operator (approximate="tanh")
INPUT, OUTPUT = "images", "probabilities"


class ExportError(ValueError):
    """What cannot be exported to ONNX: `what` (the layer at fault, the setting "opset", or None
    for the exporter itself) and what was `expected`."""

    def __init__(self, what: Layer | str | None, expected: str) -> None:
        self.what, self.expected = what, expected
        if isinstance(what, Layer):
            super().__init__(f"{' '.join(repr(what).split())}: {expected}")
        else:
            super().__init__(expected if what is None else f"{what}: {expected}")


def _import_onnx() -> Any:
    try:
        import onnx
    except ImportError:
        raise ExportError(
            None, "ONNX export needs the onnx package: pip install 'xpcnn[onnx]'"
        ) from None
    return onnx


class _Graph:
    """The nodes and initializers of a graph being built, in order; a node's name is also the
    name of its one output."""

    def __init__(self, onnx: Any, opset: int) -> None:
        self.onnx, self.opset = onnx, opset
        self.nodes: list[Any] = []
        self.initializers: dict[str, Any] = {}

    def constant(self, name: str, value: Any) -> str:
        """A float32 initializer (a layer's weight under its state-dict key, or a constant)."""
        if name not in self.initializers:
            array = np.asarray(to_numpy(value), dtype=np.float32)
            self.initializers[name] = self.onnx.numpy_helper.from_array(array, name)
        return name

    def node(self, op: str, inputs: Sequence[str], name: str, **attributes: Any) -> str:
        self.nodes.append(self.onnx.helper.make_node(op, inputs, [name], name=name, **attributes))
        return name


# One exporter per layer type: (graph, layer, input name, one image's input shape (C, H, W) or
# (F,), the layer's state-dict prefix) → output name.
Exporter = Callable[[_Graph, Any, str, tuple, str], str]


def _conv(g: _Graph, layer: Conv2D, x: str, shape: tuple, name: str) -> str:
    (kh, kw), stride = layer.kernel, layer.stride
    top, bottom = resolve_padding(layer.padding, shape[1], kh, stride)
    left, right = resolve_padding(layer.padding, shape[2], kw, stride)
    inputs = [x] + [g.constant(f"{name}.{key}", value) for key, value in layer.params.items()]
    return g.node("Conv", inputs, f"{name}.conv", kernel_shape=[kh, kw], strides=[stride] * 2,
                  pads=[top, left, bottom, right])  # fmt: skip


def _pool(op: str) -> Exporter:
    def export(g: _Graph, layer: Any, x: str, shape: tuple, name: str) -> str:
        # floor mode and no padding, as the layers pool
        return g.node(op, [x], f"{name}.{op.lower()}", kernel_shape=list(layer.kernel),
                      strides=list(layer.stride))  # fmt: skip

    return export


def _global_pool(op: str) -> Exporter:
    def export(g: _Graph, layer: Any, x: str, shape: tuple, name: str) -> str:
        pooled = g.node(op, [x], f"{name}.{op[6:].lower()}")  # (N, C, 1, 1)
        return g.node("Flatten", [pooled], f"{name}.flatten", axis=1)  # (N, C), as the layer

    return export


def _dense(g: _Graph, layer: Dense, x: str, shape: tuple, name: str) -> str:
    inputs = [x] + [g.constant(f"{name}.{key}", value) for key, value in layer.params.items()]
    return g.node("Gemm", inputs, f"{name}.gemm", transB=1)  # x @ W.T + b


def _batch_norm(g: _Graph, layer: Any, x: str, shape: tuple, name: str) -> str:
    keys = ("weight", "bias", "running_mean", "running_var")
    inputs = [x] + [g.constant(f"{name}.{key}", layer.state_dict()[key]) for key in keys]
    return g.node("BatchNormalization", inputs, f"{name}.batchnorm", epsilon=layer.eps)


def _relu(g: _Graph, layer: ReLU, x: str, shape: tuple, name: str) -> str:
    return g.node("Relu", [x], f"{name}.relu")


def _gelu(g: _Graph, layer: GELU, x: str, shape: tuple, name: str) -> str:
    if g.opset >= GELU_OPSET:
        return g.node("Gelu", [x], f"{name}.gelu", approximate="tanh")
    # y = x·h,  h = ½(1 + tanh u),  u = √(2/π)(x + 0.044715x³) = x·(C·A·x² + C)
    c = math.sqrt(2.0 / math.pi)
    square = g.node("Mul", [x, x], f"{name}.square")
    u = g.node("Mul", [square, g.constant("gelu.ca", c * 0.044715)], f"{name}.cax2")
    u = g.node("Add", [u, g.constant("gelu.c", c)], f"{name}.cax2_c")
    u = g.node("Mul", [u, x], f"{name}.u")
    h = g.node("Tanh", [u], f"{name}.tanh")
    h = g.node("Mul", [h, g.constant("gelu.half", 0.5)], f"{name}.half_tanh")
    h = g.node("Add", [h, "gelu.half"], f"{name}.h")
    return g.node("Mul", [x, h], f"{name}.gelu")


def _scale(g: _Graph, layer: Scale, x: str, shape: tuple, name: str) -> str:
    return g.node("Mul", [x, g.constant(f"{name}.factor", layer.factor)], f"{name}.scale")


def _flatten(g: _Graph, layer: Flatten, x: str, shape: tuple, name: str) -> str:
    if len(shape) == 1:
        return x  # (N, F) stays as it is
    return g.node("Flatten", [x], f"{name}.flatten", axis=1)  # (C, H, W) order, as the layer


def _identity(g: _Graph, layer: Dropout, x: str, shape: tuple, name: str) -> str:
    return x  # dropout is the identity at inference


def _sequential(g: _Graph, layer: Sequential, x: str, shape: tuple, name: str) -> str:
    return _layers(g, layer.named_children(), x, shape, f"{name}.")[0]


def _residual(g: _Graph, layer: Residual, x: str, shape: tuple, name: str) -> str:
    body, out_shape = _layers(g, layer.body_children(), x, shape, f"{name}.")
    skip = x
    if layer.shortcut is not None:
        skip = _exporter(layer.shortcut)(g, layer.shortcut, x, shape, f"{name}.downsample")
    y = g.node("Add", [body, skip], f"{name}.add")
    if layer.activation is None:
        return y
    return _exporter(layer.activation)(g, layer.activation, y, out_shape, f"{name}.activation")


EXPORTERS: dict[type, Exporter] = {
    Conv2D: _conv,
    MaxPool2D: _pool("MaxPool"),
    AvgPool2D: _pool("AveragePool"),
    GlobalAvgPool2D: _global_pool("GlobalAveragePool"),
    GlobalMaxPool2D: _global_pool("GlobalMaxPool"),
    Dense: _dense,
    BatchNorm2D: _batch_norm,
    BatchNorm1D: _batch_norm,
    ReLU: _relu,
    GELU: _gelu,
    Scale: _scale,
    Flatten: _flatten,
    Dropout: _identity,
    Sequential: _sequential,
    Residual: _residual,
}


def _exporter(layer: Layer) -> Exporter:
    """The exporter of the layer's class or of the nearest base class that has one (a faster
    Conv2D is still a Conv in the graph)."""
    for cls in type(layer).__mro__:
        if cls in EXPORTERS:
            return EXPORTERS[cls]
    names = ", ".join(sorted(cls.__name__ for cls in EXPORTERS))
    raise ExportError(layer, f"no ONNX form for this layer (exportable: {names})")


def _layers(
    g: _Graph, layers: Iterable[tuple[str, Layer]], x: str, shape: tuple, prefix: str
) -> tuple[str, tuple]:
    """(name, layer) pairs applied in order, each named by `prefix` and its name (the
    initializers get its state-dict keys): (output name, one image's output shape)."""
    for child, layer in layers:
        x = _exporter(layer)(g, layer, x, shape, f"{prefix}{child}")
        shape = channels_first(layer.output_shape(channels_last(shape)))
    return x, shape


def onnx_model(
    model: Sequential,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    classes: Sequence[str],
    input_shape: tuple[int, int, int],
    opset: int | None = None,
    preset: str | None = None,
) -> Any:
    """The model (evaluation form) as a checked `onnx.ModelProto`: input "images" uint8
    (N, C, H, W) with `input_shape` (C, H, W), output "probabilities" (N, K)."""
    onnx = _import_onnx()
    opset = DEFAULT_OPSET if opset is None else opset
    newest = onnx.defs.onnx_opset_version()
    if not isinstance(opset, int) or not MIN_OPSET <= opset <= newest:
        raise ExportError("opset", f"expected {MIN_OPSET} to {newest} (onnx {onnx.__version__}), "
                          f"got {opset!r}")  # fmt: skip
    channels = input_shape[0]
    mean64, std64 = (np.asarray(v, dtype=np.float64).reshape(-1) for v in (mean, std))
    if mean64.shape != (channels,) or std64.shape != (channels,) or std64.min() <= 0:
        raise ValueError(f"mean and std: expected {channels} numbers each, std > 0")

    g = _Graph(onnx, opset)
    x = g.node("Cast", [INPUT], "pixels", to=onnx.TensorProto.FLOAT)
    # (x / 255 − mean) / std  as  x·scale − shift, with Batches' float32 constants
    scale = (1.0 / (255.0 * std64)).reshape(1, channels, 1, 1)
    x = g.node("Mul", [x, g.constant("input.scale", scale)], "scaled")
    x = g.node("Sub", [x, g.constant("input.shift", (mean64 / std64).reshape(scale.shape))],
               "normalized")  # fmt: skip
    x, shape = _layers(g, model.named_children(), x, tuple(input_shape), "")
    if len(shape) != 1:
        raise ExportError(model, f"expected the network to end in class scores (K,), got {shape}")
    if len(classes) != shape[0]:
        raise ValueError(f"classes: expected {shape[0]} names, got {len(classes)}")
    g.node("Softmax", [x], OUTPUT, axis=1)

    helper, types = onnx.helper, onnx.TensorProto
    graph = helper.make_graph(
        g.nodes, "xpcnn", [helper.make_tensor_value_info(INPUT, types.UINT8, ["N", *input_shape])],
        [helper.make_tensor_value_info(OUTPUT, types.FLOAT, ["N", shape[0]])],
        list(g.initializers.values()),
    )  # fmt: skip
    opsets = [helper.make_opsetid("", opset)]
    proto = helper.make_model(
        graph, opset_imports=opsets, producer_name="xpcnn", producer_version=xpcnn.__version__,
        ir_version=helper.find_min_ir_version_for(opsets),  # the oldest runtime that can read it
        doc_string="uint8 RGB images (N, C, H, W) -> class probabilities (N, K)",
    )  # fmt: skip
    props = {"classes": json.dumps(list(classes)), "mean": json.dumps(mean64.tolist()),
             "std": json.dumps(std64.tolist()), "xpcnn_version": xpcnn.__version__}  # fmt: skip
    if preset is not None:
        props["preset"] = preset
    helper.set_model_props(proto, props)
    onnx.checker.check_model(proto, full_check=True)
    return proto


def to_onnx(
    model: Sequential,
    path: str | os.PathLike,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    classes: Sequence[str],
    input_shape: tuple[int, int, int],
    opset: int | None = None,
    preset: str | None = None,
) -> Any:
    """Write `onnx_model(...)` to `path` atomically (making its folder if need be); returns the
    ModelProto."""
    proto = onnx_model(model, mean=mean, std=std, classes=classes, input_shape=input_shape,
                       opset=opset, preset=preset)  # fmt: skip
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as out:
        out.write(proto.SerializeToString())
    return proto


def export_checkpoint(
    checkpoint_path: str | os.PathLike, path: str | os.PathLike, opset: int | None = None
) -> Any:
    """A run's checkpoint as an ONNX file: its model, its normalisation, its class names."""
    from xpcnn.runs import load_run, restore_model

    checkpoint, record = load_run(checkpoint_path)
    model = restore_model(checkpoint, record)
    size = record.image_size
    return to_onnx(model, path, mean=record.mean, std=record.std, classes=record.classes,
                   input_shape=(record.model_args["in_channels"], size, size), opset=opset,
                   preset=record.model)  # fmt: skip


def describe(proto: Any) -> str:
    """One line: opset, input and output with their shapes."""

    def shape(value: Any) -> str:
        dims = value.type.tensor_type.shape.dim
        return "(" + ", ".join(d.dim_param or str(d.dim_value) for d in dims) + ")"

    (inp,), (out,) = proto.graph.input, proto.graph.output
    return f"opset {proto.opset_import[0].version}: {inp.name} uint8 {shape(inp)} -> " \
           f"{out.name} float32 {shape(out)}"  # fmt: skip
