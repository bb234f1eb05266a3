"""The `xpcnn` command (also `python -m xpcnn`): parses, calls `xpcnn.run`, prints.

Exit codes: 0 success, 1 training diverged (NaN/Inf loss), 2 bad input (one line on stderr;
`--debug` shows the traceback), 130 interrupted by Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Sequence
from dataclasses import fields

from xpcnn import __version__
from xpcnn.backend import BackendError
from xpcnn.checkpoint import CheckpointError
from xpcnn.data import DataError
from xpcnn.models import MODELS
from xpcnn.optim import OPTIMIZERS
from xpcnn.run import TrainConfig, UsageError

SCHEDULES = ("constant", "step", "cosine", "onecycle")
BAD_INPUT = (BackendError, CheckpointError, DataError, UsageError, OSError)


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error: `xpcnn: error: <what> (see 'xpcnn train --help')`."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"xpcnn: error: {message} (see '{self.prog} --help')\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1), got {text!r}")
    return value


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def _add_train_arguments(p: argparse.ArgumentParser) -> None:
    d = TrainConfig()
    keep = argparse.SUPPRESS  # an absent flag stays absent: --resume tells chosen from default
    p.add_argument(
        "--data",
        default=keep,
        metavar="SOURCE",
        help=f"'cifar10' (downloaded on first use), a CIFAR-10 archive or folder, or "
        f"an image folder/archive ROOT/<class>/*.png|jpg (default: {d.data})",
    )
    p.add_argument(
        "--model", choices=list(MODELS), default=keep, help=f"network preset (default: {d.model})"
    )
    p.add_argument(
        "--epochs", type=_positive_int, default=keep, metavar="N", help=f"(default: {d.epochs})"
    )
    p.add_argument(
        "--batch-size",
        type=_positive_int,
        default=keep,
        metavar="B",
        help=f"(default: {d.batch_size})",
    )
    p.add_argument(
        "--optimizer", choices=list(OPTIMIZERS), default=keep, help=f"(default: {d.optimizer})"
    )
    p.add_argument(
        "--lr",
        type=_non_negative,
        default=keep,
        metavar="X",
        help="peak learning rate (default: 0.05 for sgd, 0.001 for adam and adamw)",
    )
    p.add_argument(
        "--momentum",
        type=_non_negative,
        default=keep,
        metavar="M",
        help=f"SGD momentum (default: {d.momentum})",
    )
    p.add_argument(
        "--nesterov",
        action=argparse.BooleanOptionalAction,
        default=keep,
        help="Nesterov momentum for SGD (default: on when momentum > 0)",
    )
    p.add_argument(
        "--weight-decay",
        type=_non_negative,
        default=keep,
        metavar="W",
        help=f"(default: {d.weight_decay:g})",
    )
    p.add_argument(
        "--schedule",
        choices=SCHEDULES,
        default=keep,
        help=f"learning-rate schedule over all steps (default: {d.schedule})",
    )
    p.add_argument(
        "--label-smoothing",
        type=_fraction,
        default=keep,
        metavar="S",
        help=f"(default: {d.label_smoothing:g})",
    )
    p.add_argument(
        "--augment",
        action=argparse.BooleanOptionalAction,
        default=keep,
        help="random crop (pad 4, reflect) and horizontal flip (default: on)",
    )
    p.add_argument(
        "--val-split",
        type=_fraction,
        default=keep,
        metavar="F",
        help=f"stratified validation fraction of the training images, 0 for none "
        f"(default: {d.val_split})",
    )
    p.add_argument(
        "--seed",
        type=_integer,
        default=keep,
        metavar="N",
        help=f"seeds weights, split, subset, shuffling, augmentation (default: {d.seed})",
    )
    p.add_argument(
        "--limit",
        type=_positive_int,
        default=keep,
        metavar="N",
        help="train on a seeded, stratified subset of N training images",
    )
    p.add_argument(
        "--image-size",
        type=_positive_int,
        default=keep,
        metavar="N",
        help="resize images to N x N (default: their own size)",
    )
    p.add_argument(
        "--out",
        metavar="DIR",
        help="run folder for checkpoints, history and plots (default: runs/<date-time>)",
    )
    again = p.add_mutually_exclusive_group()
    again.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its last completed epoch",
    )
    again.add_argument("--force", action="store_true",
                       help="overwrite the run files in an existing --out")  # fmt: skip


def build_parser(command: str | None = None) -> Parser:
    """The argument parser; `command` == "bench" loads the benchmark's own arguments."""
    parser = Parser(prog="xpcnn", description="Train and use CNNs written on the Python array API.")
    parser.add_argument("--version", action="version", version=f"xpcnn {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    debug = Parser(add_help=False)
    debug.add_argument("--debug", action="store_true", help="show the full traceback on errors")

    info = commands.add_parser("info", parents=[debug], help="backend, device, versions, BLAS")
    info.set_defaults(parser=info, handler=_info)

    train = commands.add_parser("train", parents=[debug], help="train a model, save a run folder")
    _add_train_arguments(train)
    train.set_defaults(parser=train, handler=_train)

    evaluate = commands.add_parser("eval", parents=[debug], help="score a checkpoint")
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
        "--tta", action="store_true", help="average with the horizontally flipped images"
    )
    evaluate.add_argument(
        "--json", action="store_true", help="print one JSON object on stdout, nothing else there"
    )
    evaluate.add_argument("--batch-size", type=_positive_int, default=256, metavar="B")
    evaluate.add_argument(
        "--out", metavar="DIR", help="folder for confusion.png (default: the checkpoint's folder)"
    )
    evaluate.set_defaults(parser=evaluate, handler=_eval)

    predict = commands.add_parser("predict", parents=[debug], help="classify image files")
    predict.add_argument("--checkpoint", required=True, metavar="FILE")
    predict.add_argument("images", nargs="+", metavar="IMAGE")
    predict.add_argument(
        "--top",
        type=_positive_int,
        default=3,
        metavar="K",
        help="classes to show per image (default: 3)",
    )
    predict.add_argument("--tta", action="store_true",
                         help="average with the horizontally flipped image")  # fmt: skip
    predict.set_defaults(parser=predict, handler=_predict)

    bench = commands.add_parser("bench", parents=[debug], help="time training steps")
    if command == "bench":
        import xpcnn.bench

        xpcnn.bench.add_arguments(bench)
    bench.set_defaults(parser=bench, handler=_bench)
    return parser


def _info(args: argparse.Namespace) -> int:
    from xpcnn.run import system_info

    info = system_info()
    width = max(map(len, info))
    for key, value in info.items():
        print(f"{key:<{width}}  {value}")
    return 0


def _train(args: argparse.Namespace) -> int:
    from xpcnn.run import TrainingInterrupted, train
    from xpcnn.train import ProgressBar, TrainingDiverged

    options = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if f.name in args}
    bar = ProgressBar(file=sys.stderr)
    try:
        train(options, args.out, resume=args.resume, force=args.force,
              log=lambda line: print(line, flush=True), callbacks=[bar])  # fmt: skip
    except TrainingDiverged as err:
        bar.on_epoch_end({})  # close the half-drawn bar before the message
        print(f"xpcnn: error: {err}", file=sys.stderr)
        return 1
    except TrainingInterrupted as stop:
        bar.on_epoch_end({})
        print(f"\nxpcnn: {stop}", file=sys.stderr)
        if stop.saved_epoch:
            command = ["xpcnn", "train", "--data", stop.config.data, "--out", str(stop.out)]
            print(
                f"{stop.out}/checkpoint.npz holds epoch {stop.saved_epoch}/{stop.config.epochs}; "
                f"continue with: {shlex.join(command)} --resume",
                file=sys.stderr,
            )
        else:
            print("no epoch finished, nothing was saved", file=sys.stderr)
        return 130
    return 0


def _eval(args: argparse.Namespace) -> int:
    from xpcnn.run import evaluate_checkpoint

    log = (lambda line: print(line, file=sys.stderr)) if args.json else print
    result = evaluate_checkpoint(
        args.checkpoint, args.data, args.split, tta=args.tta, batch_size=args.batch_size,
        out=args.out, log=log,
    )  # fmt: skip
    if args.json:
        keys = ("accuracy", "n", "per_class")
        print(json.dumps({key: result[key] for key in keys}))
        return 0
    what = "all of it" if result["split"] == "all" else f"its {result['split']} split"
    print(
        f"{args.checkpoint} on {result['data']}, {what}{' with TTA' if args.tta else ''}: "
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
    from xpcnn.run import predict_images

    for name, top in predict_images(args.checkpoint, args.images, top=args.top, tta=args.tta):
        print(f"{name}: " + "  ".join(f"{label} {p:.3f}" for label, p in top))
    return 0


def _bench(args: argparse.Namespace) -> int:
    import xpcnn.bench

    return xpcnn.bench.run(args)


def _message(err: BaseException) -> str:
    if isinstance(err, OSError) and err.filename is not None:
        return f"{err.filename}: {err.strerror or err}"
    return str(err)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv else None
    try:
        parser = build_parser(command)
    except ImportError as err:  # `xpcnn bench` without its module or its extra
        if "--debug" in argv:
            raise
        print(f"xpcnn: error: bench: {err} (pip install 'xpcnn[bench]')", file=sys.stderr)
        return 2
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
        print(f"xpcnn: error: {_message(err)}", file=sys.stderr)
        return 2
