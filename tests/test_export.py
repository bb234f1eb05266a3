"""ONNX export: ONNX Runtime gives xpcnn's probabilities from uint8 images, for both presets and a
network of every layer type; the file's metadata; `xpcnn export` end to end."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cli_harness import CLASSES, write_folder, xpcnn

from xpcnn.backend import manual_seed, to_numpy
from xpcnn.data import Batches
from xpcnn.export import DEFAULT_OPSET, MIN_OPSET, ExportError, onnx_model, to_onnx
from xpcnn.layers import (
    GELU,
    AvgPool2D,
    BatchNorm1D,
    BatchNorm2D,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    GlobalAvgPool2D,
    Layer,
    MaxPool2D,
    ReLU,
    Scale,
    Sequential,
)
from xpcnn.models import build_model
from xpcnn.train import predict

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)


def every_layer() -> Sequential:
    """Each layer type once or more, on (3, 18, 15) images: odd sizes, so "same" padding puts
    its odd pixel after and max pooling drops a column."""
    return Sequential(
        Conv2D(3, 8, 3, padding="valid"),  # 16 x 13
        BatchNorm2D(8),
        ReLU(),
        Conv2D(8, 8, 3, stride=2, padding="same", bias=False),  # 8 x 7
        MaxPool2D(2),  # 4 x 3
        GELU(),
        Sequential(Conv2D(8, 12, 2, padding="same"), ReLU()),  # even kernel: 4 x 3
        AvgPool2D(2, stride=1),  # 3 x 2
        Conv2D(12, 16, 3, stride=2, padding=1),  # 2 x 1
        Dropout(0.3),
        GlobalAvgPool2D(),
        Flatten(),
        Dense(16, 10),
        BatchNorm1D(10),
        GELU(),
        Dropout(0.5),
        Dense(10, 4, bias=False),
        Scale(0.5),
    )


MODELS = {  # name -> (network, one image's shape, classes)
    "seed": (lambda: build_model("seed", num_classes=3, image_size=16), (3, 16, 16), CLASSES),
    "fast": (lambda: build_model("fast", num_classes=3, image_size=16), (3, 16, 16), CLASSES),
    "every layer": (every_layer, (3, 18, 15), ["a", "b", "c", "d"]),
}


def trained_looking(model: Sequential, shape: tuple) -> Sequential:
    """The model with batch-norm parameters and running statistics away from their initial 1s
    and 0s, as after training, and its last layer scaled to log-probabilities of unit spread: far
    from 0 and 1, the probabilities tell a wrong graph from the right one."""
    rng = np.random.default_rng(7)
    state = {}
    for key, value in model.state_dict().items():
        value = to_numpy(value)
        if key.endswith("running_var"):
            value = rng.uniform(0.5, 2.0, value.shape)
        elif key.endswith(("running_mean", "bias")) or (key.endswith("weight") and value.ndim == 1):
            value = value + rng.normal(0.0, 0.3, value.shape)
        state[key] = value
    model.load_state_dict(state)
    spread = np.log(xpcnn_probabilities(model, images(32, shape, seed=99))).std()
    last = f"{len(model.layers) - 1}."
    model.load_state_dict({k: v / spread if k.startswith(last) else v for k, v in state.items()})
    return model


@pytest.fixture(scope="module", params=list(MODELS))
def exported(request, tmp_path_factory):
    """(name, model, input shape, path of its .onnx file at the default opset)."""
    build, shape, classes = MODELS[request.param]
    manual_seed(0)
    model = trained_looking(build(), shape)
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    to_onnx(model, path, mean=MEAN, std=STD, classes=classes, input_shape=shape,
            preset=request.param)  # fmt: skip
    return request.param, model, shape, path


def session(model):
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, providers=["CPUExecutionProvider"])


def images(n: int, shape: tuple, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8)


def xpcnn_probabilities(model: Sequential, pixels: np.ndarray) -> np.ndarray:
    labels = np.zeros(len(pixels), np.int64)
    return predict(model, Batches(pixels, labels, 8, shuffle=False, mean=MEAN, std=STD))


@pytest.mark.parametrize("batch", [1, 7])
def test_onnx_runtime_gives_xpcnn_probabilities(exported, batch):
    name, model, shape, path = exported
    pixels = images(batch, shape)
    (probabilities,) = session(path).run(None, {"images": pixels})
    assert probabilities.shape == (batch, len(MODELS[name][2]))
    assert np.abs(probabilities - xpcnn_probabilities(model, pixels)).max() < 1e-4


def test_graph_takes_uint8_images_with_any_batch_size_and_gives_probabilities(exported):
    _, _, shape, path = exported
    (given,), (out,) = session(path).get_inputs(), session(path).get_outputs()
    assert (given.name, given.type, given.shape) == ("images", "tensor(uint8)", ["N", *shape])
    assert (out.name, out.type, out.shape[0]) == ("probabilities", "tensor(float)", "N")


def test_the_written_file_passes_the_checker_at_the_default_opset(exported):
    *_, path = exported
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    assert [o.version for o in model.opset_import] == [DEFAULT_OPSET]
    assert model.ir_version == onnx.helper.find_min_ir_version_for(model.opset_import)


def test_metadata_holds_classes_normalisation_preset_and_version(exported):
    name, _, _, path = exported
    meta = session(path).get_modelmeta().custom_metadata_map
    assert json.loads(meta["classes"]) == MODELS[name][2]
    assert json.loads(meta["mean"]) == pytest.approx(MEAN)
    assert json.loads(meta["std"]) == pytest.approx(STD)
    assert (meta["preset"], meta["xpcnn_version"]) == (name, "0.1.0")


def test_weights_keep_their_state_dict_names(exported):
    _, model, _, path = exported
    names = {i.name for i in onnx.load(path).graph.initializer}
    weights = {k for k in model.state_dict() if not k.endswith("num_batches_tracked")}
    assert weights <= names


@pytest.mark.parametrize("opset", [MIN_OPSET, DEFAULT_OPSET, 20, 21])
def test_every_layer_matches_at_each_opset(opset):
    manual_seed(0)
    model = trained_looking(every_layer(), (3, 18, 15))
    proto = onnx_model(model, mean=MEAN, std=STD, classes="abcd", input_shape=(3, 18, 15),
                       opset=opset)  # fmt: skip
    pixels = images(7, (3, 18, 15), seed=opset)
    (probabilities,) = session(proto.SerializeToString()).run(None, {"images": pixels})
    assert np.abs(probabilities - xpcnn_probabilities(model, pixels)).max() < 1e-4


@pytest.mark.parametrize("opset, operators", [(19, 0), (20, 2)])
def test_gelu_is_one_operator_from_opset_20(opset, operators):
    proto = onnx_model(every_layer(), mean=MEAN, std=STD, classes="abcd",
                       input_shape=(3, 18, 15), opset=opset)  # fmt: skip
    ops = [node.op_type for node in proto.graph.node]
    assert ops.count("Gelu") == operators
    assert ops.count("Tanh") == 2 - operators
    gelus = [node for node in proto.graph.node if node.op_type == "Gelu"]
    assert [onnx.helper.get_attribute_value(n.attribute[0]) for n in gelus] == [b"tanh"] * operators


class Swish(Layer):
    def forward(self, x):
        return x


def test_a_layer_without_an_onnx_form_is_an_error_naming_it(tmp_path):
    model = Sequential(Conv2D(3, 4, 3), Swish(), GlobalAvgPool2D(), Dense(4, 2))
    with pytest.raises(ExportError, match=r"^Swish\(\): no ONNX form") as caught:
        to_onnx(model, tmp_path / "m.onnx", mean=MEAN, std=STD, classes="ab",
                input_shape=(3, 8, 8))  # fmt: skip
    assert isinstance(caught.value.what, Swish)
    assert list(tmp_path.iterdir()) == []


def test_an_opset_the_onnx_package_lacks_is_an_error():
    newest = onnx.defs.onnx_opset_version()
    with pytest.raises(ExportError, match=f"expected {MIN_OPSET} to {newest}") as caught:
        onnx_model(every_layer(), mean=MEAN, std=STD, classes="abcd", input_shape=(3, 18, 15),
                   opset=newest + 1)  # fmt: skip
    assert caught.value.what == "opset"


def test_importing_the_exporter_does_not_import_onnx():
    probe = "import sys, xpcnn.export, xpcnn.cli; print('onnx' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    home = tmp_path_factory.mktemp("export-cli")
    return {**os.environ, "XPCNN_DATA": str(home), "PYTHONWARNINGS": "ignore"}


@pytest.fixture(scope="module")
def checkpoint(env) -> Path:
    """A one-epoch run of the seed preset on 16x16 images of three colours."""
    home = Path(env["XPCNN_DATA"])
    folder = write_folder(home / "colours", per_class=8)
    out = home / "run"
    result = xpcnn("train", "--data", folder, "--epochs", 1, "--batch-size", 8, "--out", out,
                   env=env)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    return out / "checkpoint.npz"


def test_export_command_writes_a_model_onnx_runtime_serves(checkpoint, env):
    out = Path(env["XPCNN_DATA"]) / "deploy" / "model.onnx"
    result = xpcnn("export", "--checkpoint", checkpoint, "--onnx", out, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout == (f"{out}: opset {DEFAULT_OPSET}: images uint8 (N, 3, 16, 16) -> "
                             "probabilities float32 (N, 3)\n")  # fmt: skip
    served = session(out)
    (probabilities,) = served.run(None, {"images": images(2, (3, 16, 16))})
    assert probabilities.sum(axis=1) == pytest.approx([1.0, 1.0], abs=1e-5)
    meta = served.get_modelmeta().custom_metadata_map
    assert (json.loads(meta["classes"]), meta["preset"]) == (CLASSES, "seed")


def test_export_command_takes_an_opset(checkpoint, env):
    out = Path(env["XPCNN_DATA"]) / "model20.onnx"
    result = xpcnn("export", "--checkpoint", checkpoint, "--onnx", out, "--opset", 20, env=env)
    assert result.returncode == 0, result.stderr
    assert [o.version for o in onnx.load(out).opset_import] == [20]


BAD_EXPORTS = {
    "missing checkpoint": (["--checkpoint", "{home}/none.npz"], "--checkpoint: "),
    "not a checkpoint": (["--checkpoint", "{home}/colours/red/000.png"], "--checkpoint: "),
    "opset too old": (["--checkpoint", "{checkpoint}", "--opset", "9"], "--opset: expected"),
    "opset too new": (["--checkpoint", "{checkpoint}", "--opset", "999"], "--opset: expected"),
}


@pytest.mark.parametrize("case", list(BAD_EXPORTS))
def test_bad_export_exits_2_with_one_line(case, checkpoint, env):
    args, expected = BAD_EXPORTS[case]
    home = Path(env["XPCNN_DATA"])
    places = {"home": home, "checkpoint": checkpoint}
    out = home / f"{case}.onnx"
    result = xpcnn("export", *[a.format(**places) for a in args], "--onnx", out, env=env)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith("xpcnn: error: ") and expected in result.stderr
    assert not out.exists()


def test_export_without_onnx_installed_says_what_to_install(checkpoint, tmp_path):
    probe = (
        "import sys; sys.modules['onnx'] = None; from xpcnn.cli import main; "
        f"sys.exit(main(['export', '--checkpoint', {str(checkpoint)!r}, '--onnx', "
        f"{str(tmp_path / 'm.onnx')!r}]))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr == (
        "xpcnn: error: ONNX export needs the onnx package: pip install 'xpcnn[onnx]'\n"
    )
