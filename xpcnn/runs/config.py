"""TrainConfig: the settings of a training run — resolved from a preset's recipe and the caller's
choices, validated field by field, and reconciled with a stored run on resume."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from xpcnn.data import is_dataset_name
from xpcnn.data.limits import Limits
from xpcnn.models import LOOKAHEAD_MIN_STEPS, PRESETS, recipe
from xpcnn.optim import OPTIMIZERS, SCHEDULES

# the peak learning rate when the optimizer is not the recipe's own
DEFAULT_LR = {"sgd": 0.05, "adam": 1e-3, "adamw": 1e-3}
RESUMABLE = ("epochs", "data")  # what a resumed run may change: extend it, find moved data


class ConfigError(ValueError):
    """A setting out of its range: the `field` (a TrainConfig name), its `value`, and what was
    `expected`."""

    def __init__(self, field: str, value: Any, expected: str) -> None:
        self.field, self.value, self.expected = field, value, expected
        super().__init__(f"{field}={value!r}: {expected}")


class ResumeMismatch(ConfigError):
    """A setting chosen for a resumed run that differs from the run's own (`stored`)."""

    def __init__(self, field: str, value: Any, stored: Any, path: Path) -> None:
        super().__init__(field, value, f"differs from the run's {stored!r} ({path})")
        self.stored, self.path = stored, path


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of a run, as stored in its record. Build one with `TrainConfig.resolve`,
    which fills what the caller left out from the preset's recipe."""

    data: str = "cifar10"
    model: str = "seed"
    epochs: int = 15
    batch_size: int = 64
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9  # SGD and Muon
    nesterov: bool = True  # SGD and Muon
    weight_decay: float = 5e-4
    schedule: str = "onecycle"
    label_smoothing: float = 0.0
    augment: bool = True  # the preset's augmentation: random crop and horizontal flip
    tta: bool = False  # the final evaluation averages six views: mirror image, 1-pixel shifts
    val_split: float = 0.2
    seed: int = 42
    limit: int | None = None  # train on a stratified subset of this many training images
    image_size: int | None = None  # None: the images' own (square) size
    init: str | None = None  # start from these weights (.safetensors, checkpoint .npz): a path
    time: float | None = None  # a budget in seconds: the run plans its epochs to fit (budget.py)

    @classmethod
    def resolve(cls, options: dict[str, Any]) -> TrainConfig:
        """The chosen `options` (field -> value), the rest from the recipe of
        `options["model"]` (default seed) and the defaults above; validated."""
        unknown = sorted(set(options) - {f.name for f in fields(cls)})
        if unknown:
            raise TypeError(f"TrainConfig: unknown settings {unknown}")
        if options.get("time") is not None and "epochs" in options:
            raise ConfigError("epochs", options["epochs"], "cannot be given with a time budget, "
                              "which plans the epochs")  # fmt: skip
        name = options.get("model", cls.model)
        if name not in PRESETS:
            raise ConfigError("model", name, f"expected one of {', '.join(PRESETS)}")
        settings = {**asdict(recipe(name)), **options}
        optimizer = settings["optimizer"]
        if "lr" not in options and optimizer != recipe(name).optimizer:
            settings["lr"] = DEFAULT_LR.get(optimizer, settings["lr"])
        if "nesterov" not in options:
            settings["nesterov"] = bool(settings["nesterov"]) and settings["momentum"] > 0
        config = cls(**{k: v for k, v in settings.items() if k in cls.names()})
        config = replace(config, data=_absolute(config.data), init=_absolute_file(config.init))
        config.validate()
        return config

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    def validate(self) -> None:
        """Raise ConfigError on the first field of the wrong type or out of range."""
        _check(self, "data", isinstance(self.data, str) and self.data != "", "a data source")
        _choice(self, "model", PRESETS)
        _check(self, "epochs", _int(self.epochs) and self.epochs >= 1, "a positive integer")
        _check(self, "batch_size", _int(self.batch_size) and self.batch_size >= 1,
               "a positive integer")  # fmt: skip
        _choice(self, "optimizer", OPTIMIZERS)
        for name in ("lr", "momentum", "weight_decay"):
            value = getattr(self, name)
            _check(self, name, _real(value) and 0 <= value < math.inf, "a number >= 0")
        for name in ("nesterov", "augment", "tta"):
            _check(self, name, isinstance(getattr(self, name), bool), "true or false")
        if self.optimizer in ("sgd", "muon") and self.nesterov and self.momentum <= 0:
            raise ConfigError("nesterov", True, "needs momentum > 0")
        _choice(self, "schedule", SCHEDULES)
        for name in ("label_smoothing", "val_split"):
            value = getattr(self, name)
            _check(self, name, _real(value) and 0 <= value < 1, "a fraction in [0, 1)")
        _check(self, "seed", _int(self.seed) and 0 <= self.seed < 2**63, "an integer >= 0")
        for name in ("limit", "image_size"):
            value = getattr(self, name)
            _check(self, name, value is None or (_int(value) and value >= 1),
                   "a positive integer or none")  # fmt: skip
        if self.image_size is not None:
            smallest = PRESETS[self.model].min_image_size
            _check(self, "image_size", self.image_size >= smallest,
                   f"at least {smallest} for the {self.model} preset")  # fmt: skip
            problem = Limits.from_env().image_problem(self.image_size, self.image_size)
            _check(self, "image_size", problem is None, str(problem))
        _check(self, "time", self.time is None or (_real(self.time) and self.time > 0),
               "a positive number of seconds")  # fmt: skip
        _check(self, "init", self.init is None or (isinstance(self.init, str) and self.init != ""),
               "a .safetensors or checkpoint .npz file")  # fmt: skip

    def resumed(self, options: dict[str, Any], finished: int, path: Path) -> TrainConfig:
        """This stored config with the caller's `options` for a resumed run: only `epochs` (not
        below the `finished` epochs) and `data` may differ from the stored settings."""
        for name, value in options.items():
            value = _absolute_file(value) if name == "init" else value
            if name not in RESUMABLE and value != getattr(self, name):
                raise ResumeMismatch(name, value, getattr(self, name), path)
        epochs = options.get("epochs", self.epochs)
        if epochs < finished:
            raise ConfigError("epochs", epochs, f"the run already finished epoch {finished}")
        data = options.get("data", self.data)
        config = replace(self, epochs=epochs, data=_absolute(data))
        config.validate()
        return config

    @property
    def lookahead(self) -> int:
        """The preset's Lookahead period for this run's optimizer, 0 for none: Muon trains
        without it (airbench94_muon does)."""
        return 0 if self.optimizer == "muon" else PRESETS[self.model].lookahead

    def describe(self, mirrored: bool = True) -> str:
        """The resolved recipe in one line (for data whose images are `mirrored` or not)."""
        parts = [f"{self.optimizer} lr {self.lr:g} ({self.schedule})"]
        if self.optimizer in ("sgd", "muon") and self.momentum:
            parts.append(f"{'nesterov ' if self.nesterov else ''}momentum {self.momentum:g}")
        if self.optimizer == "muon":
            parts.append(
                "convolution filters orthogonalised (Muon: lr 0.24·schedule, momentum 0.6)"
            )
        parts.append(f"weight decay {self.weight_decay:g}")
        parts.append(f"batch {self.batch_size}, {self.epochs} epoch{'s' * (self.epochs != 1)}")
        preset = PRESETS[self.model]
        flip = "alternating flip" if preset.alternate_flip else "flip"
        flips = preset.alternate_flip or preset.augmentation.flip
        flip = f" + {flip}" if mirrored and flips else ""
        crop = preset.augmentation.crop_padding
        parts.append(f"augment crop {crop}{flip}" if self.augment else "no augmentation")
        if self.lookahead:
            parts.append(f"lookahead every {self.lookahead} steps (runs of "
                         f"{LOOKAHEAD_MIN_STEPS}+ steps)")  # fmt: skip
        if self.label_smoothing:
            parts.append(f"label smoothing {self.label_smoothing:g}")
        if self.tta:
            parts.append("TTA at evaluation")
        if self.init:
            parts.append(f"starting from {self.init}")
        if self.time:
            parts.append(f"epochs planned for a time budget of {self.time:g} s")
        return ", ".join(parts)


def _absolute(data: str) -> str:
    """A data path made absolute, so that evaluating and resuming find it from any folder."""
    if isinstance(data, str) and not is_dataset_name(data) and Path(data).exists():
        return str(Path(data).resolve())
    return data


def _absolute_file(path: str | None) -> str | None:
    """A file named from any folder: absolute when it exists (else as given, to be reported)."""
    if isinstance(path, str) and path and Path(path).exists():
        return str(Path(path).resolve())
    return path


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check(config: TrainConfig, name: str, ok: bool, expected: str) -> None:
    if not ok:
        raise ConfigError(name, getattr(config, name), f"expected {expected}")


def _choice(config: TrainConfig, name: str, choices: Any) -> None:
    value = getattr(config, name)
    if not isinstance(value, str) or value not in choices:
        raise ConfigError(name, value, f"expected one of {', '.join(choices)}")
