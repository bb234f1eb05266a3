"""The `xpcnn` command (also `python -m xpcnn`): parses, calls the library, prints; the only
module that knows flag names, turning library errors into one line and an exit code.

Exit codes: 0 success, 1 training diverged (NaN/Inf loss), 2 bad input (one line on stderr;
`--debug` shows the traceback), 130 interrupted by Ctrl-C, 143 by SIGTERM (128 + the signal).
"""

from __future__ import annotations

import argparse
import json
import shlex
import signal
import sys
from collections.abc import Sequence
from typing import Any

from xpcnn import __version__
from xpcnn.backend import BackendError
from xpcnn.checkpoint import CheckpointError
from xpcnn.data import DataError
from xpcnn.distributed import abort_job, communicator, launched_rank
from xpcnn.export import DEFAULT_OPSET, MIN_OPSET, ExportError
from xpcnn.info import cpu_count
from xpcnn.models import PRESETS
from xpcnn.optim import OPTIMIZERS, SCHEDULES
from xpcnn.runs.config import ConfigError, ResumeMismatch, TrainConfig
from xpcnn.runs.folder import RunFolderError, RunFolderNotEmpty
from xpcnn.runs.scoring import EVAL_BATCH, ScoringError

BAD_INPUT = (
    BackendError, CheckpointError, ConfigError, DataError, ExportError, RunFolderError,
    ScoringError, OSError,
)  # fmt: skip


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

# flag -> (type or action, metavar, help); every default is the preset's recipe or TrainConfig's
_TRAIN_FLAGS: dict[str, tuple[Any, str | None, str]] = {
    "--data": (str, "SOURCE", "cifar10 (the default), cifar100[-coarse], mnist, fashion-mnist "
               "(downloaded once), their files, or an image folder/archive ROOT/<class>/*.png|jpg"),
    "--epochs": (_positive_int, "N", "(default: the preset's recipe)"),
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
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", dest="command")
    debug = Parser(add_help=False)
    debug.add_argument("--debug", action="store_true", help="show the full traceback on errors")

    def add(name: str, handler: Any, text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, parents=[debug], help=text)
        sub.set_defaults(parser=sub, handler=handler)
        return sub

    add("info", _info, "backend, device, versions, BLAS")
    add("models", _models, "the presets: parameters, MFLOP per image, training recipe")
    _add_train_arguments(add("train", _train, "train a model, save a run folder"))

    evaluate = add("eval", _eval, "score a checkpoint")
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

    predict = add("predict", _predict, "classify image files")
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

    _add_bench_arguments(add("bench", _bench, "time training steps against PyTorch"))

    # fmt: off
    export = add("export", _export, "write a checkpoint as an ONNX model (uint8 images in, "
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


def _info(args: argparse.Namespace) -> int:
    from xpcnn.info import system_info

    info = system_info()
    width = max(map(len, info))
    for key, value in info.items():
        print(f"{key:<{width}}  {value}")
    return 0


def _models(args: argparse.Namespace) -> int:
    from xpcnn.backend import manual_seed
    from xpcnn.models import build_model

    for name, preset in PRESETS.items():
        manual_seed(0)
        summary = build_model(name).summary((3, 32, 32))
        print(f"{name}: {preset.description}")
        print(f"  {summary.parameters:,} parameters, {summary.flops / 1e6:.1f} MFLOP per "
              "32x32 image (forward)")  # fmt: skip
        config = TrainConfig.resolve({"model": name})
        print(f"  recipe: {config.describe()}")
    return 0


def _train(args: argparse.Namespace) -> int:
    from xpcnn.callbacks import ProgressBar
    from xpcnn.runs import TrainingInterrupted, train
    from xpcnn.train import TrainingDiverged

    options = {name: getattr(args, name) for name in TrainConfig.names() if name in args}
    comm = communicator()
    if comm.note and comm.is_root:
        print(f"xpcnn: note: {comm.note}", file=sys.stderr)
    bar = ProgressBar(file=sys.stderr)
    try:
        train(options, args.out, resume=args.resume, force=args.force, comm=comm,
              log=lambda line: print(line, flush=True), callbacks=[bar])  # fmt: skip
    except TrainingDiverged as err:
        bar.close()  # the half-drawn bar, before the message
        if comm.is_root:  # every rank stops at the same step: one says why
            print(f"xpcnn: error: {err} (try a smaller --lr)", file=sys.stderr)
        return 1
    except TrainingInterrupted as stop:
        bar.close()
        code = 128 + (stop.signum or signal.SIGINT)  # as the shell reports a signal: 130, 143
        if not comm.is_root:
            return code
        print(f"\nxpcnn: {stop}", file=sys.stderr)
        command = ["xpcnn", "train", "--data", stop.config.data, "--out", str(stop.out)]
        print(f"{stop.out}/checkpoint.npz holds epoch {stop.saved_epoch}/{stop.config.epochs}; "
              f"continue with: {shlex.join(command)} --resume" if stop.saved_epoch
              else "no epoch finished, nothing was saved", file=sys.stderr)  # fmt: skip
        return code
    return 0


def _eval(args: argparse.Namespace) -> int:
    from xpcnn.runs import evaluate_checkpoint

    log = (lambda line: print(line, file=sys.stderr)) if args.json else print
    result = evaluate_checkpoint(
        args.checkpoint, args.data, args.split, tta=args.tta, batch_size=args.batch_size,
        out=args.out, log=log,
    )  # fmt: skip
    if args.json:
        print(json.dumps({key: result[key] for key in ("accuracy", "n", "per_class")}))
        return 0
    what = "all of it" if result["split"] == "all" else f"its {result['split']} split"
    print(
        f"{args.checkpoint} on {result['data']}, {what}{' with TTA' if result['tta'] else ''}: "
        f"{result['n']} images"
    )
    print(f"accuracy {result['accuracy']:.4f}  loss {result['loss']:.4f}")
    width = max(map(len, result["per_class"]), default=0)
    for name, accuracy in result["per_class"].items():
        print(f"  {name:<{width}}  {accuracy:.4f}")
    if "confusion_png" in result:
        print(f"confusion matrix: {result['confusion_png']}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from xpcnn.runs import predict_images

    for name, top in predict_images(args.checkpoint, args.images, top=args.top, tta=args.tta):
        print(f"{name}: " + "  ".join(f"{label} {p:.3f}" for label, p in top))
    return 0


def _bench(args: argparse.Namespace) -> int:
    import xpcnn.bench

    return xpcnn.bench.run(args)


def _export(args: argparse.Namespace) -> int:
    from xpcnn.export import describe, export_checkpoint, export_safetensors

    if args.safetensors:
        print(f"{args.safetensors}: {export_safetensors(args.checkpoint, args.safetensors)}")
        return 0
    model = export_checkpoint(args.checkpoint, args.onnx, opset=args.opset)
    print(f"{args.onnx}: {describe(model)}")
    return 0


def _flag(field: str, value: Any = None) -> str:
    """A setting as the person typed it: `--weight-decay 0.1`, `--no-augment`."""
    name = "--" + field.replace("_", "-")
    if isinstance(value, bool):
        return name if value else f"--no-{name[2:]}"
    return name if value is None else f"{name} {value}"


def _message(err: BaseException, command: str | None) -> str:
    """One line naming the flag or file and what was expected."""
    if isinstance(err, ResumeMismatch):
        return (f"--resume: {_flag(err.field, err.value)} differs from the run's "
                f"{err.stored} ({err.path}); resume with the run's own settings or start a "
                "new --out")  # fmt: skip
    if isinstance(err, ConfigError):
        return f"{_flag(err.field, err.value)}: {err.expected}"
    if isinstance(err, RunFolderNotEmpty):
        return (f"--out: {str(err.path)!r} already exists and is not empty; pass --resume to "
                "continue its run or --force to overwrite it")  # fmt: skip
    if isinstance(err, RunFolderError):
        return f"--out: {err}"
    if isinstance(err, CheckpointError):
        return f"{'--resume' if command == 'train' else '--checkpoint'}: {err}"
    if isinstance(err, DataError):
        return f"{'IMAGE' if command == 'predict' else '--data'}: {err}"
    if isinstance(err, ExportError):
        return f"{_flag(err.what)}: {err.expected}" if isinstance(err.what, str) else str(err)
    if isinstance(err, ScoringError):
        return f"{_flag(err.what, err.value)}: {err.expected}"
    if isinstance(err, OSError) and err.filename is not None:
        return f"{err.filename}: {err.strerror or err}"
    return str(err)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # reported by the command's own parser, so the hint names its --help
        getattr(args, "parser", parser).error(f"unrecognized arguments: {' '.join(extra)}")
    if not hasattr(args, "handler"):
        parser.print_help(sys.stderr)
        return 2
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        print("\nxpcnn: interrupted", file=sys.stderr)
        return 130
    except BAD_INPUT as err:
        if args.debug:
            raise
        rank = launched_rank()
        where = f"rank {rank}: " if rank else ""
        print(f"xpcnn: error: {where}{_message(err, args.command)}", file=sys.stderr, flush=True)
        abort_job(2)  # under mpiexec: the other ranks would wait for this one forever
        return 2
    except MemoryError:
        if args.debug:
            raise
        print("xpcnn: error: out of memory: the input asks for more than this machine has "
              "(lower --batch-size or --image-size, or the XPCNN_MAX_FILE_MB, XPCNN_MAX_IMAGE_MP "
              "and XPCNN_MAX_DATA_GB budgets)", file=sys.stderr)  # fmt: skip
        return 2
