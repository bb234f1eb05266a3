"""How a fresh run's model and optimizer start: the preset's data-dependent initialisation or the
weights of `TrainConfig.init`, and the optimizer of the run's settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from xpcnn.checkpoint import CheckpointError
from xpcnn.data import Dataset
from xpcnn.layers import BatchNorm2D
from xpcnn.layers.flat import leaves
from xpcnn.models import INIT_IMAGES, LOOKAHEAD_MIN_STEPS, PRESETS
from xpcnn.optim import OPTIMIZERS, Lookahead
from xpcnn.runs.config import ConfigError, TrainConfig
from xpcnn.runs.record import load_run
from xpcnn.runs.scoring import eval_batches


def init_from_data(
    model: Any, config: TrainConfig, train_set: Dataset, mean: Any, std: Any
) -> None:
    """The preset's data-dependent initialisation, from up to INIT_IMAGES training images spread
    evenly over the training split, normalised as training sees them."""
    init = PRESETS[config.model].init_from_data
    if init is None:
        return
    step = max(len(train_set) // INIT_IMAGES, 1)
    sample = train_set.subset(np.arange(0, len(train_set), step)[:INIT_IMAGES])
    x, _ = next(eval_batches(sample, mean, std, batch_size=len(sample)).epoch(0))
    init(model, x)


def load_init(model: Any, config: TrainConfig) -> None:
    """Start from `config.init`'s weights: a .safetensors file (xpcnn's export, or a PyTorch
    state dict with the preset's keys, as `safetensors.torch.save_file` writes it) or a run's
    checkpoint .npz. Keys and shapes must be the network's exactly."""
    from xpcnn.export import ExportError, read_safetensors

    path = Path(config.init)
    try:
        if path.suffix == ".npz":
            checkpoint, stored = load_run(path)
            state, preset = checkpoint.model, stored.model
        else:
            state, metadata = read_safetensors(path)
            preset = metadata.get("preset", config.model)
    except CheckpointError as err:  # the path is the flag's value: say only what is wrong
        what = f"{err.field}: {err.expected}" if err.field else err.expected
        raise ConfigError("init", config.init, what) from None
    except ExportError as err:
        raise ConfigError("init", config.init, str(err)) from None
    if preset != config.model:
        raise ConfigError("init", config.init, f"holds a {preset} network, not {config.model}")
    try:
        model.load_state_dict(state)
    except ValueError as err:
        raise ConfigError("init", config.init, f"does not fit this {config.model}: {err}") from None


def make_optimizer(config: TrainConfig, model: Any, total_steps: int) -> Any:
    """The run's optimizer, with the config's Lookahead when the run has `total_steps` of at
    least LOOKAHEAD_MIN_STEPS."""
    kwargs: dict[str, Any] = {"lr": config.lr, "weight_decay": config.weight_decay}
    if config.optimizer in ("sgd", "muon"):
        kwargs |= {"momentum": config.momentum, "nesterov": config.nesterov}
    if config.optimizer == "muon":  # renormalised filters: only where BatchNorm makes scale free
        kwargs["normalize_filters"] = any(
            isinstance(layer, BatchNorm2D) for _, layer in leaves(model)
        )
    optimizer = OPTIMIZERS[config.optimizer](model, **kwargs)
    if config.lookahead and total_steps >= LOOKAHEAD_MIN_STEPS:
        Lookahead(total_steps, every=config.lookahead).attach(optimizer)
    return optimizer
