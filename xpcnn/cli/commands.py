"""What each `xpcnn` command does once its flags are parsed: call the library, print."""

from __future__ import annotations

import argparse
import json
import shlex
import signal
import sys

from xpcnn.distributed import communicator
from xpcnn.models import PRESETS
from xpcnn.runs.config import TrainConfig


def info(args: argparse.Namespace) -> int:
    from xpcnn.info import system_info

    info = system_info()
    width = max(map(len, info))
    for key, value in info.items():
        print(f"{key:<{width}}  {value}")
    return 0


def models(args: argparse.Namespace) -> int:
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


def train(args: argparse.Namespace) -> int:
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


def eval(args: argparse.Namespace) -> int:
    from xpcnn.runs import evaluate_checkpoint

    log = (lambda line: print(line, file=sys.stderr)) if args.json else print
    result = evaluate_checkpoint(
        args.checkpoint, args.data, args.split, tta=args.tta, batch_size=args.batch_size,
        out=args.out, log=log,
    )  # fmt: skip
    if args.json:
        print(json.dumps({key: result[key] for key in ("accuracy", "loss", "n", "per_class")}))
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


def predict(args: argparse.Namespace) -> int:
    from xpcnn.runs import predict_images

    for name, top in predict_images(args.checkpoint, args.images, top=args.top, tta=args.tta):
        print(f"{name}: " + "  ".join(f"{label} {p:.3f}" for label, p in top))
    return 0


def bench(args: argparse.Namespace) -> int:
    import xpcnn.bench

    return xpcnn.bench.run(args)


def export(args: argparse.Namespace) -> int:
    from xpcnn.export import describe, export_checkpoint, export_safetensors

    if args.safetensors:
        print(f"{args.safetensors}: {export_safetensors(args.checkpoint, args.safetensors)}")
        return 0
    model = export_checkpoint(args.checkpoint, args.onnx, opset=args.opset)
    print(f"{args.onnx}: {describe(model)}")
    return 0
