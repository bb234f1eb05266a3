"""Train on any folder of labelled images, ROOT/<class>/*.png|jpg (or a .zip/.tar.gz of one),
then classify a few of them — the same library calls `xpcnn train` and `xpcnn predict` make.

    python examples/custom_dataset.py path/to/flowers --epochs 10 --image-size 64
"""

import argparse
import sys
from pathlib import Path

from xpcnn.callbacks import ProgressBar
from xpcnn.runs import predict_images, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder", help="ROOT/<class>/*.png|jpg, or an archive of it")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--image-size", type=int, help="resize to N x N (needed for mixed sizes)")
    parser.add_argument("--out", default="runs/custom", help="run folder (default: runs/custom)")
    args = parser.parse_args()

    options = {"data": args.folder, "epochs": args.epochs, "image_size": args.image_size}
    summary = train(
        options, args.out, force=True, log=print, callbacks=[ProgressBar(file=sys.stderr)]
    )

    checkpoint = Path(args.out) / "checkpoint.npz"
    if Path(args.folder).is_dir():
        examples = sorted(p for p in Path(args.folder).glob("*/*") if p.is_file())[::7][:5]
        for name, top in predict_images(checkpoint, examples):
            print(f"{name}: " + ", ".join(f"{label} {p:.2f}" for label, p in top))
    print(f"run folder: {summary['out']} (checkpoint, history, curves.png, samples.png)")


if __name__ == "__main__":
    main()
