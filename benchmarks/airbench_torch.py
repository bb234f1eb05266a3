"""airbench94 in plain PyTorch on the CPU, the accuracy-per-minute peer of `xpcnn train` (fast).

An independent implementation of Keller Jordan's airbench94 (network, initialisation, data
order, optimizer, schedule, six-view TTA), written from the paper's description, trained on the
same 40,000 / 10,000 split (stratified, seed 42) that `xpcnn train` uses. It answers one
question: what does airbench's recipe reach on *this* data, in so many epochs and minutes, on
*this* machine? xpcnn's layers are not used (only its data loading and split, which are tested).

    python benchmarks/airbench_torch.py --data ../shared/data/cifar10-jpeg/train.tar.gz --epochs 8

Prints one line per epoch (validation accuracy without TTA, seconds) and the final accuracy
with airbench's six-view TTA. Needs torch (the benchmark peer; not a dependency of xpcnn).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from xpcnn.data import channel_stats, load_dataset, train_val_indices


def conv(cin: int, cout: int) -> nn.Conv2d:
    layer = nn.Conv2d(cin, cout, 3, padding="same", bias=False)
    with torch.no_grad():  # dirac on the first cin output channels: starts as an identity
        nn.init.dirac_(layer.weight[:cin])
    return layer


def norm(channels: int) -> nn.BatchNorm2d:
    layer = nn.BatchNorm2d(channels, eps=1e-12, momentum=0.4)  # airbench's "momentum 0.6"
    layer.weight.requires_grad_(False)
    return layer


def block(cin: int, cout: int) -> list[nn.Module]:
    return [conv(cin, cout), nn.MaxPool2d(2), norm(cout), nn.GELU(),
            conv(cout, cout), norm(cout), nn.GELU()]  # fmt: skip


class Mul(nn.Module):
    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


def network(width: int = 64) -> nn.Sequential:
    widths = (width, 4 * width, 4 * width)
    whiten = nn.Conv2d(3, 24, 2, padding=0, bias=True)
    whiten.weight.requires_grad_(False)
    return nn.Sequential(
        whiten, nn.GELU(),
        *block(24, widths[0]), *block(widths[0], widths[1]), *block(widths[1], widths[2]),
        nn.MaxPool2d(3), nn.Flatten(), nn.Linear(widths[2], 10, bias=False), Mul(1 / 9),
    )  # fmt: skip


def init_whitening(layer: nn.Conv2d, images: torch.Tensor, eps: float = 5e-4) -> None:
    """Filters = eigenvectors of the (uncentred) 2x2 patch covariance / sqrt(eigenvalue), and
    their negatives."""
    patches = F.unfold(images, 2).transpose(1, 2).reshape(-1, 12)  # (N·31·31, C·2·2)
    cov = patches.T @ patches / len(patches)
    values, vectors = torch.linalg.eigh(cov.double())
    values, vectors = values.flip(0).float(), vectors.T.flip(0).float()
    # unfold orders a patch channel-major (c, kh, kw), as the conv weight is laid out
    filters = (vectors / torch.sqrt(values + eps)[:, None]).reshape(12, 3, 2, 2)
    with torch.no_grad():
        layer.weight.copy_(torch.cat([filters, -filters]))
        layer.bias.zero_()


def crop(padded: torch.Tensor, size: int) -> torch.Tensor:
    """A random size x size window of each padded image (one gather, no loop over images)."""
    n, _, h, w = padded.shape
    dy = torch.randint(0, h - size + 1, (n,))
    dx = torch.randint(0, w - size + 1, (n,))
    rows = (dy[:, None] + torch.arange(size))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(size))[:, None, None, :]
    return padded[torch.arange(n)[:, None, None, None], torch.arange(3)[None, :, None, None],
                  rows, cols]  # fmt: skip


def tta_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    def mirrored(v: torch.Tensor) -> torch.Tensor:
        return 0.5 * (model(v) + model(v.flip(-1)))

    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
    shifted = 0.5 * (mirrored(padded[..., :32, :32]) + mirrored(padded[..., 2:, 2:]))
    return 0.5 * mirrored(x) + 0.5 * shifted


@torch.no_grad()
def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, tta: bool) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(images), 1000):
        x = images[i : i + 1000]
        logits = tta_logits(model, x) if tta else model(x)
        correct += int((logits.argmax(1) == labels[i : i + 1000]).sum())
    model.train()
    return correct / len(images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--epochs", type=float, default=8)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--lookahead", action="store_true", help="airbench's Lookahead")
    parser.add_argument("--json", help="write the per-epoch history here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    start = time.perf_counter()

    dataset = load_dataset(args.data, split="train", progress=False)
    train_idx, val_idx = train_val_indices(dataset.labels, 0.2, args.seed)
    mean, std = channel_stats(dataset.images[train_idx])

    def normalised(idx: np.ndarray) -> torch.Tensor:
        x = dataset.images[idx].astype(np.float32) / 255.0
        return torch.from_numpy((x - mean[:, None, None]) / std[:, None, None]).float()

    train_x, val_x = normalised(train_idx), normalised(val_idx)
    train_y = torch.from_numpy(dataset.labels[train_idx].astype(np.int64))
    val_y = torch.from_numpy(dataset.labels[val_idx].astype(np.int64))

    model = network(args.width)
    init_whitening(model[0], train_x[:5000])
    batch, momentum, bias_scale = 1024, 0.85, 64.0
    kilostep = 1024 * (1 + 1 / (1 - momentum))
    lr, wd = 11.5 / kilostep, 0.0153 * batch / kilostep  # for the summed loss
    biases = [m.bias for m in model if isinstance(m, nn.BatchNorm2d)]
    others = [p for p in model.parameters() if p.requires_grad and all(p is not b for b in biases)]
    optimizer = torch.optim.SGD(
        [dict(params=biases, lr=lr * bias_scale, weight_decay=wd / (lr * bias_scale)),
         dict(params=others, lr=lr, weight_decay=wd / lr)],
        momentum=momentum, nesterov=True,
    )  # fmt: skip
    steps_per_epoch = len(train_x) // batch  # the last partial batch dropped
    total = int(args.epochs * steps_per_epoch)
    schedule = np.interp(np.arange(total + 1), [0, int(0.23 * total), total], [0.2, 1.0, 0.07])
    groups_lr = [g["lr"] for g in optimizer.param_groups]

    flipped = torch.where(torch.rand(len(train_x))[:, None, None, None] < 0.5,
                          train_x.flip(-1), train_x)  # fmt: skip
    padded = F.pad(flipped, (2, 2, 2, 2), mode="reflect")
    slow = {k: v.clone() for k, v in model.state_dict().items() if v.is_floating_point()}

    @torch.no_grad()
    def sync(decay: float) -> None:  # slow ← decay·slow + (1 − decay)·fast; fast ← slow
        for key, value in model.state_dict().items():
            if key in slow:
                slow[key].lerp_(value, 1 - decay)
                value.copy_(slow[key])

    history, step, epoch = [], 0, 0
    print(f"data ready in {time.perf_counter() - start:.1f} s; {total} steps", flush=True)
    while step < total:
        t0 = time.perf_counter()
        x_epoch = crop(padded, 32)
        if epoch % 2 == 1:
            x_epoch = x_epoch.flip(-1)
        order = torch.randperm(len(train_x))
        for i in range(steps_per_epoch):
            if step >= total:
                break
            idx = order[i * batch : (i + 1) * batch]
            loss = F.cross_entropy(model(x_epoch[idx]), train_y[idx], label_smoothing=0.2,
                                   reduction="sum")  # fmt: skip
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            for group, base in zip(optimizer.param_groups, groups_lr, strict=True):
                group["lr"] = base * schedule[step]
            optimizer.step()
            step += 1
            if args.lookahead and step % 5 == 0:
                sync(0.95**5 * (step / total) ** 3)
        epoch += 1
        if args.lookahead and step >= total and step % 5:
            sync(1.0)
        train_s = time.perf_counter() - t0
        acc = accuracy(model, val_x, val_y, tta=False)
        history.append({"epoch": epoch, "val_acc": acc, "train_s": train_s})
        print(f"epoch {epoch}: val {acc:.4f}, train {train_s:.0f} s, "
              f"wall {time.perf_counter() - start:.0f} s", flush=True)  # fmt: skip
    tta = accuracy(model, val_x, val_y, tta=True)
    wall = time.perf_counter() - start
    print(f"final: val {history[-1]['val_acc']:.4f}, TTA {tta:.4f}, wall {wall:.0f} s", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"history": history, "tta": tta, "wall_s": wall, "args": vars(args)}, f)


if __name__ == "__main__":
    main()
