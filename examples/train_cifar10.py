"""The notebook's experiment through the Python API: the seed network on CIFAR-10.

40,000 / 10,000 stratified train/validation split of the training images (seed 42), then the
official 10,000 test images when the source has them (`cifar10`, the CIFAR-10 archives); an
image-folder copy such as cifar10-jpeg/train.tar.gz has no test split, so it reports validation.
Training uses the `xpcnn train` recipe: SGD with Nesterov momentum 0.9, one-cycle learning rate
up to 0.05, weight decay 5e-4, random crop + flip, batch 64.

    python examples/train_cifar10.py                                  # downloads CIFAR-10
    python examples/train_cifar10.py --data ../shared/data/cifar10-jpeg/train.tar.gz --epochs 2
"""

import argparse
import sys
import time

import xpcnn
from xpcnn import plots
from xpcnn.callbacks import ProgressBar
from xpcnn.data import Augment, Batches, channel_stats, load_dataset, stratified_split
from xpcnn.models import build_model
from xpcnn.optim import SGD, OneCycle
from xpcnn.train import Callback, evaluate, fit


class PrintEpoch(Callback):
    def on_epoch_end(self, record):
        print(
            f"epoch {record['epoch']:2d}  train loss {record['train_loss']:.4f} "
            f"acc {record['train_acc']:.4f}  val loss {record['val_loss']:.4f} "
            f"acc {record['val_acc']:.4f}  {record['seconds']:.0f} s",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="cifar10", help="cifar10 or a path (default: cifar10)")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--limit", type=int, help="use only this many training images")
    parser.add_argument("--curves", default="curves.png", help="where to save the curves")
    args = parser.parse_args()

    xpcnn.manual_seed(42)
    data = load_dataset(args.data, split="train")
    if args.limit:
        data = data.subset(stratified_split(data.labels, n_val=args.limit, seed=42)[1])
    train_idx, val_idx = stratified_split(data.labels, 0.2, seed=42)  # 40k / 10k on CIFAR-10
    train, val = data.subset(train_idx), data.subset(val_idx)
    mean, std = channel_stats(train.images)  # normalise with the training images' statistics
    print(f"{args.data}: train {len(train)}, validation {len(val)}, classes {data.classes}")

    batches = Batches(train.images, train.labels, 64, seed=42, mean=mean, std=std,
                      augment=Augment(crop_padding=4, flip=True))  # fmt: skip
    val_batches = Batches(val.images, val.labels, 256, shuffle=False, mean=mean, std=std)
    model = build_model("seed", num_classes=len(data.classes), image_size=data.images.shape[2])
    optimizer = SGD(model, lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    schedule = OneCycle(0.05, total_steps=args.epochs * len(batches))

    started = time.perf_counter()
    callbacks = [ProgressBar(file=sys.stderr), PrintEpoch()]
    history = fit(model, batches, optimizer=optimizer, epochs=args.epochs, schedule=schedule,
                  val=val_batches, callbacks=callbacks)  # fmt: skip
    print(f"trained {args.epochs} epochs in {time.perf_counter() - started:.0f} s")

    print("\nepoch  train_acc  val_acc")
    for r in history:
        print(f"{r['epoch']:5d}  {r['train_acc']:9.4f}  {r['val_acc']:7.4f}")
    if plots.available():
        print(f"curves: {plots.plot_curves(history, args.curves)}")

    test = load_dataset(args.data, split="test")
    if test.has_test:
        scores = evaluate(model, Batches(test.images, test.labels, 256, shuffle=False,
                                         mean=mean, std=std))  # fmt: skip
        print(f"test accuracy {scores['accuracy']:.4f} ({scores['n']} images)")
    else:
        print(f"validation accuracy {history[-1]['val_acc']:.4f} (the source has no test split)")


if __name__ == "__main__":
    main()
