"""Model presets: `seed` (the notebook's network) and `fast` (accuracy per FLOP)."""

from __future__ import annotations

from typing import Any

from xpcnn.layers import (
    GELU,
    BatchNorm2D,
    Conv2D,
    Dense,
    Flatten,
    GlobalMaxPool2D,
    MaxPool2D,
    ReLU,
    Sequential,
)


def seed(
    num_classes: int = 10, in_channels: int = 3, image_size: int = 32, **kw: Any
) -> Sequential:
    """Conv 3→32 3x3 same, ReLU, MaxPool 2, Conv 32→64 3x3 same, ReLU, MaxPool 2,
    Flatten, Dense 128, ReLU, Dense 10 — the notebook's network, He-initialised."""
    features = 64 * (image_size // 4) ** 2
    return Sequential(
        Conv2D(in_channels, 32, 3, padding="same", **kw),
        ReLU(),
        MaxPool2D(2),
        Conv2D(32, 64, 3, padding="same", **kw),
        ReLU(),
        MaxPool2D(2),
        Flatten(),
        Dense(features, 128, **kw),
        ReLU(),
        Dense(128, num_classes, **kw),
    )


def fast(
    num_classes: int = 10, in_channels: int = 3, image_size: int = 32, width: int = 64, **kw: Any
) -> Sequential:
    """A small VGG-style network: conv–pool–BatchNorm–GELU blocks, global max pool, linear head.

    Widths w, 2w, 4w, 4w; pooling before BatchNorm so normalisation and activation run on a
    quarter of the pixels.
    """
    w1, w2, w3 = width, 2 * width, 4 * width
    return Sequential(
        Conv2D(in_channels, w1 // 2, 3, padding="same", bias=False, **kw),
        BatchNorm2D(w1 // 2, **kw),
        GELU(),
        Conv2D(w1 // 2, w1, 3, padding="same", bias=False, **kw),
        MaxPool2D(2),
        BatchNorm2D(w1, **kw),
        GELU(),
        Conv2D(w1, w2, 3, padding="same", bias=False, **kw),
        MaxPool2D(2),
        BatchNorm2D(w2, **kw),
        GELU(),
        Conv2D(w2, w3, 3, padding="same", bias=False, **kw),
        MaxPool2D(2),
        BatchNorm2D(w3, **kw),
        GELU(),
        GlobalMaxPool2D(),
        Flatten(),  # a no-op on (N, C); keeps state-dict indices those of PyTorch's twin
        Dense(w3, num_classes, bias=False, **kw),
    )


MODELS = {"seed": seed, "fast": fast}


def build_model(name: str, **kwargs: Any) -> Sequential:
    """A preset by name; keyword arguments (num_classes, image_size, dtype, ...) pass through."""
    if name not in MODELS:
        raise ValueError(f"model: expected one of {', '.join(MODELS)}, got {name!r}")
    return MODELS[name](**kwargs)
