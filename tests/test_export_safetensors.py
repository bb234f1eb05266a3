"""safetensors weights: PyTorch loads them into the twin and predicts as xpcnn does; xpcnn reads
them back with their metadata; `xpcnn export --safetensors` end to end."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cli_harness import CLASSES, write_folder, xpcnn

from xpcnn.backend import asarray, manual_seed, to_numpy
from xpcnn.checkpoint import CheckpointError
from xpcnn.export import load_weights, to_safetensors
from xpcnn.models import build_model
from xpcnn.train import predict

safetensors = pytest.importorskip("safetensors")

ARGS = {"num_classes": 4, "in_channels": 1, "image_size": 12}
META = {"preset": "seed", "model_args": ARGS, "classes": ["a", "b", "c", "d"], "mean": [0.13],
        "std": [0.31]}  # fmt: skip


def trained_looking_model(seed=0, preset="seed"):
    manual_seed(seed)
    return build_model(preset, **ARGS)


def images(n=5):
    return np.random.default_rng(1).standard_normal((n, 1, 12, 12)).astype(np.float32)


def test_file_reads_back_with_its_state_and_metadata(tmp_path):
    model = trained_looking_model()
    to_safetensors(model, tmp_path / "w.safetensors", **META)
    weights = load_weights(tmp_path / "w.safetensors")
    assert {k: v.tolist() for k, v in weights.state.items()} == {
        k: to_numpy(v).tolist() for k, v in model.state_dict().items()
    }
    assert (weights.preset, weights.model_args, weights.classes) == ("seed", ARGS, META["classes"])
    assert (weights.mean, weights.std) == ([0.13], [0.31])
    np.testing.assert_array_equal(
        predict(weights.build_model(), [asarray(images())]), predict(model, [asarray(images())])
    )


@pytest.mark.parametrize("preset", ["seed", "resnet20"])  # resnet20: batch norm's 0-d counters
def test_pytorch_loads_it_into_the_twin_and_predicts_the_same(tmp_path, preset):
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file

    from xpcnn.twin import torch_twin

    model = trained_looking_model(seed=0, preset=preset)
    to_safetensors(model, tmp_path / "w.safetensors", **{**META, "preset": preset})
    twin = torch_twin(trained_looking_model(seed=1, preset=preset)).eval()  # other weights
    twin.load_state_dict(load_file(tmp_path / "w.safetensors"))
    with torch.no_grad():
        ours = torch.softmax(twin(torch.from_numpy(images())), dim=1).numpy()
    np.testing.assert_allclose(ours, predict(model, [asarray(images())]), atol=1e-5)


def test_metadata_is_strings_a_pytorch_reader_sees(tmp_path):
    to_safetensors(trained_looking_model(), tmp_path / "w.safetensors", **META)
    with safetensors.safe_open(str(tmp_path / "w.safetensors"), framework="numpy") as f:
        metadata = f.metadata()
    assert metadata["format"] == "pt" and metadata["preset"] == "seed"
    assert json.loads(metadata["classes"]) == META["classes"]
    assert json.loads(metadata["model_args"]) == ARGS


def test_a_file_without_xpcnn_metadata_names_the_field(tmp_path):
    from safetensors.numpy import save_file

    save_file({"w": np.zeros(3, np.float32)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(CheckpointError, match=r"other.safetensors': preset: missing from"):
        load_weights(tmp_path / "other.safetensors")


def test_a_file_that_is_not_safetensors_is_one_line(tmp_path):
    (tmp_path / "junk.safetensors").write_bytes(b"\x01" * 40)
    with pytest.raises(CheckpointError, match=r"junk.safetensors': not a readable safetensors"):
        load_weights(tmp_path / "junk.safetensors")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A one-epoch run of the seed preset on 16x16 images of three colours: (checkpoint, env)."""
    home = tmp_path_factory.mktemp("safetensors-cli")
    env = {**os.environ, "XPCNN_DATA": str(home), "PYTHONWARNINGS": "ignore"}
    folder = write_folder(home / "colours", per_class=8)
    result = xpcnn("train", "--data", folder, "--epochs", 1, "--batch-size", 8,
                   "--out", home / "run", env=env)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    return home / "run" / "checkpoint.npz", env


def test_export_command_writes_the_runs_weights(run, tmp_path):
    checkpoint, env = run
    out = Path(tmp_path / "w.safetensors")
    result = xpcnn("export", "--checkpoint", checkpoint, "--safetensors", out, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith(f"{out}: seed, 8 tensors (")
    weights = load_weights(out)
    assert weights.classes == CLASSES and weights.preset == "seed" and len(weights.mean) == 3
    assert weights.model_args["image_size"] == 16


def test_export_without_safetensors_installed_says_what_to_install(run, tmp_path):
    probe = (
        "import sys; sys.modules['safetensors'] = None; from xpcnn.cli import main; "
        f"sys.exit(main(['export', '--checkpoint', {str(run[0])!r}, '--safetensors', "
        f"{str(tmp_path / 'w.safetensors')!r}]))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr == (
        "xpcnn: error: safetensors files need the safetensors package: "
        "pip install 'xpcnn[safetensors]'\n"
    )
    assert not (tmp_path / "w.safetensors").exists()
