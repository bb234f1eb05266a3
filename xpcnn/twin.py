"""The PyTorch twin of an xpcnn network: one torch module per layer, the same state-dict keys,
the same weights (a benchmark peer and a test oracle; PyTorch is never a dependency)."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import numpy as np

from xpcnn.backend import to_numpy
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
    MaxPool2D,
    ReLU,
    Residual,
    Scale,
    Sequential,
)


def torch_twin(model: Sequential) -> Any:
    """The same network in PyTorch, one module per xpcnn layer (so state-dict keys match),
    loaded with the same weights."""
    import torch
    from torch import nn

    class TorchScale(nn.Module):
        def __init__(self, factor: float) -> None:
            super().__init__()
            self.factor = factor

        def forward(self, x: Any) -> Any:
            return x * self.factor

    class TorchResidual(nn.Module):
        """y = act(body(x) + shortcut(x)), its body's modules named as in `Residual`."""

        def __init__(self, body: list, downsample: Any, activation: Any) -> None:
            super().__init__()
            self.body_names = [name for name, _ in body]
            for name, module in body:
                self.add_module(name, module)
            self.downsample, self.activation = downsample, activation

        def forward(self, x: Any) -> Any:
            y = x
            for name in self.body_names:
                y = getattr(self, name)(y)
            y = y + (x if self.downsample is None else self.downsample(x))
            return y if self.activation is None else self.activation(y)

    def convert(layer: Any) -> Any:
        if layer is None:
            return None
        if isinstance(layer, Sequential):
            return nn.Sequential(
                OrderedDict((name, convert(inner)) for name, inner in layer.named_children())
            )
        if isinstance(layer, Residual):
            body = [(name, convert(inner)) for name, inner in layer.body_children()]
            return TorchResidual(body, convert(layer.shortcut), convert(layer.activation))
        if isinstance(layer, Conv2D):
            padding = layer.padding
            if padding == "same" and layer.stride > 1:
                padding = layer.kernel[0] // 2  # odd kernels: the symmetric form of "same"
            return nn.Conv2d(
                layer.in_channels,
                layer.out_channels,
                layer.kernel,
                stride=layer.stride,
                padding=padding,
                bias="bias" in layer.params,
            )
        if isinstance(layer, Dense):
            return nn.Linear(layer.in_features, layer.out_features, bias="bias" in layer.params)
        if isinstance(layer, BatchNorm2D):
            return nn.BatchNorm2d(layer.num_features, eps=layer.eps, momentum=layer.momentum)
        if isinstance(layer, BatchNorm1D):
            return nn.BatchNorm1d(layer.num_features, eps=layer.eps, momentum=layer.momentum)
        if isinstance(layer, MaxPool2D):
            return nn.MaxPool2d(layer.kernel, layer.stride)
        if isinstance(layer, AvgPool2D):
            return nn.AvgPool2d(layer.kernel, layer.stride)
        simple = {
            ReLU: nn.ReLU,
            Flatten: nn.Flatten,
            GlobalMaxPool2D: lambda: nn.AdaptiveMaxPool2d(1),
            GlobalAvgPool2D: lambda: nn.AdaptiveAvgPool2d(1),
            GELU: lambda: nn.GELU(approximate="tanh"),
        }
        if isinstance(layer, Dropout):
            return nn.Dropout(layer.p)
        if isinstance(layer, Scale):
            return TorchScale(layer.factor)
        for kind, make in simple.items():
            if isinstance(layer, kind):
                return make()
        raise TypeError(f"no PyTorch twin for {type(layer).__name__}")

    twin = convert(model)
    twin.load_state_dict(
        {k: torch.from_numpy(np.array(to_numpy(v))) for k, v in model.state_dict().items()}
    )
    parameters = dict(twin.named_parameters())
    for name, scale in model.named_lr_scales():
        parameters[name].requires_grad_(scale > 0)  # a frozen weight: no gradient, as in xpcnn
    return twin
