"""`xpcnn bench`'s operation counts: the array operations of one training step of each preset,
xpcnn's (`xpcnn.opcount`) against its PyTorch twin's, in total and per layer."""

from __future__ import annotations

import argparse
import json
from typing import Any

from xpcnn import opcount
from xpcnn.backend import backend_name, manual_seed
from xpcnn.bench import _torch_inputs, _torch_step, _xpcnn_inputs, torch_device
from xpcnn.info import system_info
from xpcnn.models import build_model
from xpcnn.train import train_step
from xpcnn.twin import torch_twin


def op_counts(name: str, batch: int, count: Any, peer: bool) -> dict[str, Any]:
    """Operations, host→device copies and host reads of one training step of preset `name` at
    `batch` (after one warm-up step), per scope (`opcount.xpcnn_step_scopes`), counted by
    `count` (`opcount.counter_for`); with `peer`, the twin's too, counted by PyTorch's
    dispatcher with foreach SGD (what PyTorch runs on a GPU)."""
    image_shape = (3, 32, 32)
    manual_seed(0)
    model = build_model(name)
    labels = opcount.layer_labels(model)
    twin = torch_twin(model) if peer else None
    x, y, optimizer = _xpcnn_inputs(model, batch, image_shape)
    train_step(model, optimizer, x, y)  # the warm-up: caches and optimizer state made
    with count() as xpcnn_counter, opcount.xpcnn_step_scopes(xpcnn_counter, model, optimizer):
        train_step(model, optimizer, x, y)
    counters = {"xpcnn": xpcnn_counter}
    if twin is not None:
        tx, ty, toptimizer = _torch_inputs(twin, batch, image_shape, torch_device(), foreach=True)
        _torch_step(twin, toptimizer, tx, ty)
        with (
            opcount.count_torch() as twin_counter,
            opcount.torch_step_scopes(twin_counter, twin, toptimizer, labels),
        ):
            _torch_step(twin, toptimizer, tx, ty)
        counters["twin"] = twin_counter
    result: dict[str, Any] = {"model": name, "batch": batch, "layers": labels}
    for who, counter in counters.items():
        for kind in ("op", "h2d", "d2h"):
            result[f"{who}_{kind}s"] = counter.count(kind)
        result[f"{who}_ops_by_scope"] = counter.by_scope()
    if twin is not None:
        result["ops_ratio"] = result["xpcnn_ops"] / result["twin_ops"]
    return result


def _print_op_scopes(result: dict[str, Any]) -> None:
    """Per scope of the step: xpcnn's (and the twin's) forward and backward operations."""
    who = [w for w in ("xpcnn", "twin") if f"{w}_ops_by_scope" in result]
    print(f"       {'scope':22}" + "".join(f" {w + ' fwd':>10} {w + ' bwd':>10}" for w in who))
    for label in (*result["layers"], "loss", "optimizer", opcount.OTHER):
        cells: list[Any] = []
        for w in who:
            counts = result[f"{w}_ops_by_scope"]
            if label in result["layers"]:
                cells += [counts.get(f"{label}/forward", 0), counts.get(f"{label}/backward", 0)]
            else:
                cells += [counts.get(label, 0), ""]
        print(f"       {label:22}" + "".join(f" {c:>10}" for c in cells).rstrip(), flush=True)


def run_ops(args: argparse.Namespace, models: list[str], batches: list[int], peer: bool) -> int:
    """The operation counts of one training step per model and batch (the CLI's ops option)."""
    count = opcount.counter_for(backend_name())  # a BackendError before any output
    info: dict[str, Any] = system_info()
    print(
        f"# operations per training step (views, allocations and shape queries not counted): "
        f"xpcnn on {backend_name()} {info['device']}"
        + (f"; twin: torch {info['torch']} on {torch_device()}, foreach SGD" if peer else "")
    )
    print(
        f"{'model':7} {'batch':>5} {'xpcnn ops':>10} {'twin ops':>9} {'ratio':>6} "
        f"{'xpcnn h2d':>10} {'xpcnn d2h':>10} {'twin h2d':>9} {'twin d2h':>9}"
    )
    results = []
    for name in models:
        for batch in batches:
            result = op_counts(name, batch, count, peer)
            results.append(result)
            twin = {kind: result.get(f"twin_{kind}", "-") for kind in ("ops", "h2ds", "d2hs")}
            ratio = f"{result['ops_ratio']:.2f}" if "ops_ratio" in result else "-"
            print(
                f"{name:7} {batch:>5} {result['xpcnn_ops']:>10} {twin['ops']:>9} {ratio:>6} "
                f"{result['xpcnn_h2ds']:>10} {result['xpcnn_d2hs']:>10} {twin['h2ds']:>9} "
                f"{twin['d2hs']:>9}",
                flush=True,
            )
            _print_op_scopes(result)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "results": results}, f, indent=2)
    return 0
