"""The `xpcnn` command's parser: every command, its flags, their types and help; defaults that
are a recipe's stay absent, so the recipe (or `--resume`) decides."""

from __future__ import annotations

import argparse
from typing import Any

from xpcnn import __version__
from xpcnn.cli import commands
from xpcnn.distributed import launched_rank
from xpcnn.export import DEFAULT_OPSET, MIN_OPSET
from xpcnn.info import cpu_count
from xpcnn.models import PRESETS
from xpcnn.optim import OPTIMIZERS, SCHEDULES
from xpcnn.runs.budget import parse_duration
from xpcnn.runs.config import TrainConfig
from xpcnn.runs.scoring import EVAL_BATCH


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error: `xpcnn: error: <what> (see 'xpcnn train --help')`."""

    def error(self, message: str) -> None:  # type: ignore[override]
        if launched_rank() != 0:  # under mpiexec every rank parses the same flags: one says it
            self.exit(2)
        self.exit(2, f"xpcnn: error: {message} (see '{self.prog} --help')\n")


def _number(kind: type, low: float, high: float, expected: str) -> Any:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not low <= value < high:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return parse


_positive_int = _number(int, 1, float("inf"), "a positive integer")
_non_negative = _number(float, 0.0, float("inf"), "a number >= 0")
_fraction = _number(float, 0.0, 1.0, "a fraction in [0, 1)")
_seed = _number(int, 0, 2**63, "an integer >= 0")


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


# flag -> (type or action, metavar, help); every default is the preset's recipe or TrainConfig's
_TRAIN_FLAGS: dict[str, tuple[Any, str | None, str]] = {
    "--data": (str, "SOURCE", "cifar10 (the default), cifar100[-coarse], mnist, fashion-mnist "
               "(downloaded once), their files, or an image folder/archive ROOT/<class>/*.png|jpg"),
    "--epochs": (_positive_int, "N", "(default: the preset's recipe)"),
    "--time": (_duration, "DURATION", "a time budget instead of --epochs (90s, 30m, 1h30m): the "
               "run times its first steps and trains the epochs that fit, validation, "
               "checkpoints and the final score included"),
    "--batch-size": (_positive_int, "B", "(default: the preset's recipe)"),
    "--lr": (_non_negative, "X", "peak learning rate (default: the recipe's; 0.001 for adam and "
             "adamw when the recipe uses sgd)"),
    "--momentum": (_non_negative, "M", "SGD momentum (default: the recipe's)"),
    "--nesterov": ("bool", None, "Nesterov momentum for SGD (default: on when momentum > 0)"),
    "--weight-decay": (_non_negative, "W", "(default: the recipe's)"),
    "--label-smoothing": (_fraction, "S", "(default: the recipe's)"),
    "--augment": ("bool", None, "the preset's random crop and horizontal flip (default: on)"),
    "--tta": ("bool", None, "score the final model with 6-view TTA (default: the recipe's)"),
    "--val-split": (_fraction, "F", "stratified validation fraction of the training images, "
                    f"0 for none (default: {TrainConfig.val_split})"),
    "--seed": (_seed, "N", f"seeds weights, split, subset, shuffling, augmentation (default: "
               f"{TrainConfig.seed})"),
    "--limit": (_positive_int, "N", "train on a seeded, stratified subset of N training images"),
    "--image-size": (_positive_int, "N", "resize images to N x N (default: their own size)"),
    "--init": (str, "FILE", "start from these weights instead of the preset's initialisation: "
               "a .safetensors file (xpcnn export --safetensors, or a PyTorch state dict with the "
               "preset's keys) or a run's checkpoint.npz"),
}  # fmt: skip


def _add_train_arguments(p: argparse.ArgumentParser) -> None:
    keep = argparse.SUPPRESS  # an absent flag stays absent: the recipe (or --resume) decides
    p.add_argument(
        "--model",
        choices=list(PRESETS),
        default=keep,
        help="network preset and its recipe, see 'xpcnn models' (default: seed)",
    )
    p.add_argument(
        "--optimizer", choices=list(OPTIMIZERS), default=keep, help="(default: the recipe's)"
    )
    p.add_argument("--schedule", choices=SCHEDULES, default=keep,
                   help="learning-rate schedule (default: the recipe's)")  # fmt: skip
    for flag, (kind, metavar, text) in _TRAIN_FLAGS.items():
        if kind == "bool":
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=keep, help=text)
        else:
            p.add_argument(flag, type=kind, metavar=metavar, default=keep, help=text)
    # fmt: off
    p.add_argument("--out", metavar="DIR",
                   help="run folder for checkpoints, history and plots (default: runs/<date-time>)")
    again = p.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true",
                       help="continue the run in --out from its last completed epoch")
    again.add_argument("--force", action="store_true",
                       help="overwrite the run files in an existing --out")
    # fmt: on


def _presets(text: str) -> str:
    unknown = [name for name in text.split(",") if name not in PRESETS]
    if unknown or not text:
        raise argparse.ArgumentTypeError(
            f"expected presets among {', '.join(PRESETS)}, got {text!r}"
        )
    return text


def _sizes(text: str) -> str:
    for size in text.split(","):
        _positive_int(size)
    return text


# flag -> (type, default, metavar, help) of `xpcnn bench`; store_true flags have type None
_BENCH_FLAGS: dict[str, tuple[Any, Any, str | None, str]] = {
    "--models": (_presets, "seed,fast", "NAMES", "presets, comma-separated (default: seed,fast)"),
    "--batch-sizes": (_sizes, "64,256", "B,B", "comma-separated (default: 64,256)"),
    "--steps": (_positive_int, 10, "N", "timed steps per round (default: 10)"),
    "--rounds": (_positive_int, 5, "N", "alternating rounds (default: 5)"),
    "--threads": (_positive_int, cpu_count(), "N",
                  "BLAS and PyTorch threads (default: the CPUs this process may use)"),
    "--no-peer": (None, False, None, "skip PyTorch even if installed"),
    "--no-tf32": (None, False, None,
                  "PyTorch on a GPU without TF32 (CuPy uses it only with CUPY_TF32=1)"),
    "--memory-images": (_number(int, 0, float("inf"), "an integer >= 0"), 0, "N",
                        "also measure peak memory of a training epoch of N images (0: skip)"),
    "--profile": (None, False, None, "also time each layer's forward and backward (xpcnn)"),
    "--ops": (None, False, None,
              "count the array operations of one training step instead of timing, per layer, "
              "xpcnn's and the twin's (XPCNN_BACKEND=array_api_strict or torch)"),
    "--json": (str, None, "FILE", "also write the results as JSON"),
}  # fmt: skip


def _add_bench_arguments(p: argparse.ArgumentParser) -> None:
    for flag, (kind, default, metavar, text) in _BENCH_FLAGS.items():
        if kind is None:
            p.add_argument(flag, action="store_true", help=text)
        else:
            p.add_argument(flag, type=kind, default=default, metavar=metavar, help=text)


def build_parser() -> Parser:
    """The argument parser of every command."""
    parser = Parser(prog="xpcnn", description="Train and use CNNs written on the Python array API.")
    parser.add_argument("--version", action="version", version=f"xpcnn {__version__}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND", dest="command")
    debug = Parser(add_help=False)
    debug.add_argument("--debug", action="store_true", help="show the full traceback on errors")

    def add(name: str, handler: Any, text: str) -> argparse.ArgumentParser:
        sub = subparsers.add_parser(name, parents=[debug], help=text)
        sub.set_defaults(parser=sub, handler=handler)
        return sub

    add("info", commands.info, "backend, device, versions, BLAS")
    add("models", commands.models, "the presets: parameters, MFLOP per image, training recipe")
    _add_train_arguments(add("train", commands.train, "train a model, save a run folder"))

    evaluate = add("eval", commands.eval, "score a checkpoint")
    evaluate.add_argument("--checkpoint", required=True, metavar="FILE")
    evaluate.add_argument(
        "--data",
        metavar="SOURCE",
        help="data to evaluate on (default: the checkpoint's training data)",
    )
    evaluate.add_argument(
        "--split",
        choices=("test", "val", "train", "all"),
        help="default: test when the source has one, else all of it",
    )
    evaluate.add_argument(
        "--tta",
        action=argparse.BooleanOptionalAction,
        help="average six views: mirror image, 1-pixel shifts (default: the run's recipe)",
    )
    evaluate.add_argument(
        "--json", action="store_true", help="print one JSON object on stdout, nothing else there"
    )
    evaluate.add_argument("--batch-size", type=_positive_int, default=EVAL_BATCH, metavar="B")
    evaluate.add_argument(
        "--out", metavar="DIR", help="folder for confusion.png (default: the checkpoint's folder)"
    )

    predict = add("predict", commands.predict, "classify image files")
    predict.add_argument("--checkpoint", required=True, metavar="FILE")
    predict.add_argument("images", nargs="+", metavar="IMAGE")
    predict.add_argument(
        "--top", type=_positive_int, default=3, metavar="K", help="classes per image (default: 3)"
    )
    predict.add_argument(
        "--tta",
        action=argparse.BooleanOptionalAction,
        help="average six views: mirror image, 1-pixel shifts (default: the run's recipe)",
    )

    _add_bench_arguments(add("bench", commands.bench, "time training steps against PyTorch"))

    # fmt: off
    export = add("export", commands.export, "write a checkpoint as an ONNX model (uint8 images in, "
                 "probabilities out) or as safetensors weights (PyTorch's keys)")
    export.add_argument("--checkpoint", required=True, metavar="FILE")
    out = export.add_mutually_exclusive_group(required=True)
    out.add_argument("--onnx", metavar="OUT", help="the .onnx file to write")
    out.add_argument("--safetensors", metavar="OUT", help="the .safetensors file to write: the "
                     "state dict; classes, mean, std and preset in its metadata")
    export.add_argument("--opset", metavar="N",
                        type=_number(int, MIN_OPSET, float("inf"), f"an opset >= {MIN_OPSET}"),
                        help=f"ONNX opset (default: {DEFAULT_OPSET}; from 20 GELU is one operator)")
    # fmt: on
    return parser
