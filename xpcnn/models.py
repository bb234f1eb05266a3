"""Model presets — a network builder and its training recipe: `seed` (the notebook's network)
and `fast` (accuracy per FLOP)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
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
    num_classes: int = 10, in_channels: int = 3, image_size: int = 32, width: int = 16, **kw: Any
) -> Sequential:
    """A small VGG-style network for accuracy per FLOP (after airbench's layout, half as wide):

    stem conv (1.5w) – BN – GELU, then three blocks of widths 3w, 8w, 8w, each
    conv – maxpool 2 – BN – GELU – conv – BN – GELU, then global max pool and a linear head.
    Pooling right after the first conv of a block means BN and GELU run on a quarter of the
    pixels. Convolutions before BN have no bias (BN's shift replaces it). width=16: 24, 48,
    128, 128 channels, about 104 MFLOP per 32x32 image.
    """
    stem, widths = 3 * width // 2, (3 * width, 8 * width, 8 * width)

    def block(cin: int, cout: int) -> list:
        return [
            Conv2D(cin, cout, 3, padding="same", bias=False, **kw),
            MaxPool2D(2),
            BatchNorm2D(cout, **kw),
            GELU(),
            Conv2D(cout, cout, 3, padding="same", bias=False, **kw),
            BatchNorm2D(cout, **kw),
            GELU(),
        ]

    return Sequential(
        Conv2D(in_channels, stem, 3, padding="same", bias=False, **kw),
        BatchNorm2D(stem, **kw),
        GELU(),
        *block(stem, widths[0]),
        *block(widths[0], widths[1]),
        *block(widths[1], widths[2]),
        GlobalMaxPool2D(),
        Flatten(),  # a no-op on (N, C); keeps state-dict indices those of PyTorch's twin
        Dense(widths[2], num_classes, bias=False, **kw),
    )


@dataclass(frozen=True)
class Recipe:
    """How a preset is trained: the settings a run of it takes unless the caller chooses others.

    `lr` is the peak learning rate of `optimizer`; `tta`: the final evaluation (and `xpcnn eval`
    by default) averages each image with its mirror image.
    """

    epochs: int = 15
    batch_size: int = 64
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    schedule: str = "onecycle"
    label_smoothing: float = 0.0
    augment: bool = True  # random crop (pad 4, reflect) and horizontal flip
    tta: bool = False


@dataclass(frozen=True)
class Preset:
    build: Callable[..., Sequential]
    recipe: Recipe
    description: str
    min_image_size: int  # its pooling halves the image this many times (log2)


PRESETS = {
    "seed": Preset(
        seed,
        Recipe(),  # 77.0% validation accuracy in 15 epochs (BENCHMARKS.md)
        "the notebook's network: Conv32-Pool-Conv64-Pool-Dense128-Dense10",
        min_image_size=4,  # two 2x2 pools before the dense layers
    ),
    "fast": Preset(
        fast,
        Recipe(epochs=14, lr=0.1, label_smoothing=0.2, tta=True),  # 88.5% with TTA, 14 epochs
        "VGG-style, airbench's layout at half width: conv-BN-GELU blocks, global max pool",
        min_image_size=8,  # three 2x2 pools
    ),
}
MODELS = tuple(PRESETS)


def build_model(name: str, **kwargs: Any) -> Sequential:
    """A preset's network by name; keyword arguments (num_classes, image_size, dtype, ...) pass
    through to its builder."""
    if name not in PRESETS:
        raise ValueError(f"model: expected one of {', '.join(PRESETS)}, got {name!r}")
    return PRESETS[name].build(**kwargs)


def recipe(name: str) -> Recipe:
    """The training recipe of a preset."""
    if name not in PRESETS:
        raise ValueError(f"model: expected one of {', '.join(PRESETS)}, got {name!r}")
    return PRESETS[name].recipe
