"""`Residual`: a skip connection, y = body(x) + shortcut(x) (He et al., 2016)."""

from __future__ import annotations

from collections.abc import Iterator
from math import prod
from typing import Any

from xpcnn.layers.base import Layer, Sequential


class Residual(Layer):
    """y = act(body(x) + shortcut(x)), the shortcut the identity when None, `activation` (act)
    none when None.   x: (N, H, W, C) → y: (N, OH, OW, C_out).

    Backward: dL/dx = body'ᵀ·g + shortcut'ᵀ·g with g = act'ᵀ·dy: the gradient goes down both
    branches and the two add at the input.

    State-dict keys are those of torchvision's BasicBlock: a Sequential body's layers sit at the
    block's level under their own names ("conv1.weight", "bn1.running_mean"), the shortcut is
    "downsample" ("downsample.0.weight"); any other body is "body".
    """

    def __init__(
        self, body: Layer, shortcut: Layer | None = None, activation: Layer | None = None
    ) -> None:
        super().__init__()
        self.body, self.shortcut, self.activation = body, shortcut, activation

    def body_children(self) -> list[tuple[str, Layer]]:
        """The body's layers by their state-dict names (the PyTorch twin names them so too)."""
        if isinstance(self.body, Sequential):
            return list(self.body.named_children())
        return [("body", self.body)]

    def named_children(self) -> Iterator[tuple[str, Layer]]:
        yield from self.body_children()
        if self.shortcut is not None:
            yield "downsample", self.shortcut
        if self.activation is not None:
            yield "activation", self.activation

    def train(self, mode: bool = True) -> Residual:
        super().train(mode)
        self.body.train(mode)  # the body itself, not only its layers (this block's children)
        return self

    def forward(self, x: Any) -> Any:
        y = self.body.forward_channels_last(x)
        y = y + (x if self.shortcut is None else self.shortcut.forward_channels_last(x))
        return y if self.activation is None else self.activation.forward_channels_last(y)

    def backward(self, dy: Any, input_grad: bool = True) -> Any:
        if self.activation is not None:
            dy = self.activation.backward_channels_last(dy)
        dx = self.body.backward_channels_last(dy, input_grad)
        skip = dy if self.shortcut is None else self.shortcut.backward_channels_last(dy, input_grad)
        return dx + skip if input_grad else None

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        output = tuple(self.body.output_shape(input_shape))
        skip = input_shape if self.shortcut is None else self.shortcut.output_shape(input_shape)
        if tuple(skip) != output:
            raise ValueError(f"Residual: the body gives {output}, the shortcut {tuple(skip)}")
        return output

    def flops(self, input_shape: tuple[int, ...]) -> int:
        """The branches' FLOPs and the add: one FLOP per output element (the one element-wise
        operation counted, as it belongs to no GEMM layer)."""
        shortcut = 0 if self.shortcut is None else self.shortcut.flops(input_shape)
        return self.body.flops(input_shape) + shortcut + prod(self.output_shape(input_shape))

    def __repr__(self) -> str:
        parts = [f"body={self.body!r}"]
        if self.shortcut is not None:
            parts.append(f"shortcut={self.shortcut!r}")
        if self.activation is not None:
            parts.append(f"activation={self.activation!r}")
        return f"Residual({', '.join(parts)})"
