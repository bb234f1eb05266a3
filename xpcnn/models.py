"""Model presets — a network builder and its training recipe: `seed` (the notebook's network),
`fast` (airbench's network and recipe, for accuracy per minute), `fast-v1` (its predecessor,
kept so that its checkpoints load), and the residual networks `resnet20` and `resnet18`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from xpcnn.backend import default_generator
from xpcnn.data.augment import Augment
from xpcnn.layers import (
    GELU,
    BatchNorm2D,
    Conv2D,
    Dense,
    Flatten,
    GlobalAvgPool2D,
    GlobalMaxPool2D,
    MaxPool2D,
    ReLU,
    Residual,
    Scale,
    Sequential,
    identity_init,
    whitening_init,
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


def fast_v1(
    num_classes: int = 10, in_channels: int = 3, image_size: int = 32, width: int = 16, **kw: Any
) -> Sequential:
    """The first `fast`: a small VGG-style network (airbench's layout at half width, standard
    initialisation):

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


BIAS_LR_SCALE = 64.0  # airbench's BatchNorm-bias learning-rate multiplier


def fast(
    num_classes: int = 10, in_channels: int = 3, image_size: int = 32, width: int = 64,
    **kw: Any,
) -> Sequential:  # fmt: skip
    """airbench94's network (Jordan, 2024) with block widths w, 4w, 4w:

    a 2x2 whitening conv (2·C·4 filters set from the data by `init_from_data`, frozen) – GELU,
    then three blocks conv – maxpool 2 – BN – GELU – conv – BN – GELU, global max pool, a linear
    head and logits scaled by 1/9. Every 3x3 conv starts as an identity on its first channels
    (`identity_init`); BatchNorm has no trained scale, its bias learns at 64x the learning rate,
    momentum 0.4 (PyTorch's convention) and eps 1e-12. The whitening conv pads "same" (one pixel
    after), so 32x32 images keep 32x32 maps.
    """
    whiten = 2 * in_channels * 4
    widths = (width, 4 * width, 4 * width)

    def conv(cin: int, cout: int) -> Conv2D:
        layer = Conv2D(cin, cout, 3, padding="same", bias=False, **kw)
        layer.params["weight"] = fan_in_uniform(layer.params["weight"], 9 * cin)
        identity_init(layer)
        return layer

    def norm(channels: int) -> BatchNorm2D:
        layer = BatchNorm2D(channels, eps=1e-12, momentum=0.4, **kw)
        layer.frozen.add("weight")
        layer.lr_scales["bias"] = BIAS_LR_SCALE
        return layer

    def block(cin: int, cout: int) -> list:
        return [conv(cin, cout), MaxPool2D(2), norm(cout), GELU(),
                conv(cout, cout), norm(cout), GELU()]  # fmt: skip

    stem = Conv2D(in_channels, whiten, 2, padding="same", bias=True, **kw)
    stem.frozen.add("weight")
    head = Dense(widths[2], num_classes, bias=False, **kw)
    head.params["weight"] = fan_in_uniform(head.params["weight"], widths[2])
    return Sequential(
        stem,
        GELU(),
        *block(whiten, widths[0]),
        *block(widths[0], widths[1]),
        *block(widths[1], widths[2]),
        GlobalMaxPool2D(),
        Flatten(),  # a no-op on (N, C); keeps state-dict indices those of PyTorch's twin
        head,
        Scale(1 / 9),
    )


def basic_block(cin: int, cout: int, stride: int = 1, **kw: Any) -> Residual:
    """He et al.'s basic block, torchvision's names: conv1 (3x3, `stride`) – bn1 – relu – conv2
    (3x3) – bn2, plus the input, then ReLU. Where the shape changes the shortcut ("downsample")
    is a strided 1x1 conv and BatchNorm (the paper's option B)."""
    body = Sequential(
        ("conv1", Conv2D(cin, cout, 3, stride=stride, padding=1, bias=False, **kw)),
        ("bn1", BatchNorm2D(cout, **kw)),
        ("relu", ReLU()),
        ("conv2", Conv2D(cout, cout, 3, padding=1, bias=False, **kw)),
        ("bn2", BatchNorm2D(cout, **kw)),
    )
    shortcut = None
    if stride != 1 or cin != cout:
        shortcut = Sequential(
            Conv2D(cin, cout, 1, stride=stride, padding=0, bias=False, **kw),
            BatchNorm2D(cout, **kw),
        )
    return Residual(body, shortcut, activation=ReLU())


def resnet(
    widths: tuple[int, ...], blocks: int, num_classes: int, in_channels: int, **kw: Any
) -> Sequential:
    """A CIFAR ResNet with torchvision's module names: conv1 (3x3, stride 1) – bn1 – relu, then
    stages layer1, layer2, ... of `blocks` basic blocks each (every stage after the first halves
    the image in its first block), global average pool and fc."""
    stages, cin = [], widths[0]
    for i, width in enumerate(widths):
        stride = 1 if i == 0 else 2
        layers = [basic_block(cin, width, stride, **kw)]
        layers += [basic_block(width, width, **kw) for _ in range(blocks - 1)]
        stages.append((f"layer{i + 1}", Sequential(*layers)))
        cin = width
    return Sequential(
        ("conv1", Conv2D(in_channels, widths[0], 3, padding=1, bias=False, **kw)),
        ("bn1", BatchNorm2D(widths[0], **kw)),
        ("relu", ReLU()),
        *stages,
        ("avgpool", GlobalAvgPool2D()),
        ("flatten", Flatten()),
        ("fc", Dense(widths[-1], num_classes, **kw)),
    )


def resnet20(
    num_classes: int = 10, in_channels: int = 3, image_size: int = 32, **kw: Any
) -> Sequential:
    """He et al. (2016)'s CIFAR ResNet-20: three stages of three basic blocks, 16, 32 and 64
    channels; 0.27 M parameters, about 82 MFLOP (41 M multiply-adds) per 32x32 image."""
    return resnet((16, 32, 64), 3, num_classes, in_channels, **kw)


def resnet18(
    num_classes: int = 10, in_channels: int = 3, image_size: int = 32, **kw: Any
) -> Sequential:
    """ResNet-18 in its CIFAR form (3x3 stem at stride 1, no max pool): four stages of two basic
    blocks, 64 to 512 channels; 11.2 M parameters, about 1.1 GFLOP (0.56 G multiply-adds) per
    32x32 image. A state dict of PyTorch's CIFAR ResNet-18 with torchvision's names loads as
    it is."""
    return resnet((64, 128, 256, 512), 2, num_classes, in_channels, **kw)


def fan_in_uniform(like: Any, fan_in: int) -> Any:
    """PyTorch's default weights for Conv2d and Linear, of `like`'s shape and dtype: uniform in
    ±1/√fan_in (airbench keeps them)."""
    bound = 1.0 / fan_in**0.5
    return (2.0 * default_generator().uniform(like.shape, like.dtype) - 1.0) * bound


def whiten_first_conv(model: Sequential, images: Any) -> None:
    """`fast`'s data-dependent initialisation: the first conv whitens the 2x2 patches of
    `images` (normalised, N x C x H x W; airbench uses 5,000 training images)."""
    whitening_init(model[0], images)


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
    augment: bool = True  # the preset's augmentation (Preset.augmentation)
    tta: bool = False


@dataclass(frozen=True)
class Preset:
    """A network builder and how it is trained. `augmentation`: what `Recipe.augment` turns
    on; `alternate_flip`: each image mirrored on every other epoch (from a random first epoch)
    instead of at random; `drop_last`: an epoch leaves out its last, partial batch (at a large
    learning rate, a step on a few images and their BatchNorm statistics set the model back);
    `init_from_data(model, images)`: run on a fresh model with up to `INIT_IMAGES` normalised
    training images before training; `lookahead`: sync the weights with their slow average every
    this many steps (`xpcnn.optim.Lookahead`, airbench's schedule), 0 for none."""

    build: Callable[..., Sequential]
    recipe: Recipe
    description: str
    min_image_size: int  # its pooling halves the image this many times (log2)
    augmentation: Augment = Augment()
    alternate_flip: bool = False
    drop_last: bool = False
    init_from_data: Callable[[Sequential, Any], None] | None = None
    lookahead: int = 0


INIT_IMAGES = 5000
# Lookahead's slow average spans ~5 / (1 - 0.95**5) ≈ 22 steps at the end: in runs shorter than
# ten times that it would hold the weights back, so they train without it
LOOKAHEAD_MIN_STEPS = 220


PRESETS = {
    "seed": Preset(
        seed,
        Recipe(),  # 77.0% validation accuracy in 15 epochs (BENCHMARKS.md)
        "the notebook's network: Conv32-Pool-Conv64-Pool-Dense128-Dense10",
        min_image_size=4,  # two 2x2 pools before the dense layers
    ),
    "fast": Preset(
        fast,
        # airbench94's optimizer settings for the mean loss: lr 11.5 per 1024 images / (1 +
        # 1/(1 - 0.85)), weight decay 0.0153 / 11.5
        Recipe(
            epochs=8,
            batch_size=1024,
            lr=1.5,
            momentum=0.85,
            weight_decay=0.0153 / 11.5,
            schedule="triangular",
            label_smoothing=0.2,
            tta=True,
        ),  # fmt: skip
        "airbench94's network and recipe: whitening conv, conv-BN-GELU blocks 64-256-256",
        min_image_size=8,  # three 2x2 pools
        augmentation=Augment(crop_padding=2, flip=False),
        alternate_flip=True,
        drop_last=True,
        init_from_data=whiten_first_conv,
        lookahead=5,
    ),
    "fast-v1": Preset(
        fast_v1,
        Recipe(epochs=14, lr=0.1, label_smoothing=0.2, tta=True),  # 88.5% with TTA, 14 epochs
        "the first fast (xpcnn 0.1): airbench's layout at half width, standard initialisation",
        min_image_size=8,  # three 2x2 pools
    ),
    # He et al. train 164 epochs at lr 0.1, batch 128, weight decay 1e-4; these shorter one-cycle
    # recipes are not measured yet (BENCHMARKS.md)
    "resnet20": Preset(
        resnet20,
        Recipe(epochs=40, batch_size=128, lr=0.1, weight_decay=5e-4, schedule="onecycle"),
        "He et al.'s CIFAR ResNet-20: 3 stages of 3 basic blocks, 16-32-64 channels",
        min_image_size=4,  # two stride-2 stages
    ),
    "resnet18": Preset(
        resnet18,
        Recipe(epochs=30, batch_size=128, lr=0.1, weight_decay=5e-4, schedule="onecycle"),
        "ResNet-18, CIFAR form (3x3 stem, no max pool), torchvision's module names",
        min_image_size=8,  # three stride-2 stages
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
