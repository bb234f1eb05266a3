"""`xpcnn train --init FILE`: a run starts from a .safetensors file's weights (xpcnn's export or
a PyTorch state dict) or a run's checkpoint, exactly; a file that does not fit is one line."""

import numpy as np
import pytest
from cli_harness import command_env, write_folder, xpcnn

from xpcnn.backend import manual_seed, to_numpy
from xpcnn.export import to_safetensors
from xpcnn.models import build_model
from xpcnn.runs import load_run, train
from xpcnn.runs.config import ConfigError
from xpcnn.runs.training import prepare

pytest.importorskip("safetensors")
pytestmark = pytest.mark.usefixtures("data_home")

ARGS = {"num_classes": 3, "in_channels": 3, "image_size": 16}  # write_folder's images
META = {"model_args": ARGS, "classes": ["blue", "green", "red"], "mean": [0.5] * 3,
        "std": [0.25] * 3}  # fmt: skip


@pytest.fixture
def folder(tmp_path):
    return write_folder(tmp_path / "colours", per_class=8)


def host_state(model):
    return {key: to_numpy(value) for key, value in model.state_dict().items()}


def assert_same_state(model, expected):
    state = host_state(model)
    assert state.keys() == expected.keys()
    for key, value in expected.items():
        np.testing.assert_array_equal(state[key], value, err_msg=key)


def weights_file(path, preset="seed", seed=7, **args):
    manual_seed(seed)
    model = build_model(preset, **{**ARGS, **args})
    to_safetensors(model, path, preset=preset, **META)
    return host_state(model)


def started(folder, **options):
    lines = []
    start = prepare({"data": str(folder), "epochs": 1, **options}, None, lines.append)
    return start, "\n".join(lines)


def test_a_run_starts_from_the_exported_weights_exactly(folder, tmp_path):
    expected = weights_file(tmp_path / "w.safetensors")
    start, log = started(folder, init=str(tmp_path / "w.safetensors"))
    assert_same_state(start.model, expected)
    assert f"starting from {tmp_path / 'w.safetensors'}" in log
    assert start.record.config.init == str(tmp_path / "w.safetensors")  # absolute, in the record


def test_a_pytorch_state_dict_without_metadata_starts_a_run(folder, tmp_path):
    pytest.importorskip("torch")
    from safetensors.torch import save_file

    from xpcnn.twin import torch_twin

    manual_seed(3)
    twin = torch_twin(build_model("resnet20", **ARGS))
    save_file({k: v.contiguous() for k, v in twin.state_dict().items()}, tmp_path / "pt.st")
    start, _ = started(folder, model="resnet20", init=str(tmp_path / "pt.st"))
    expected = {k: v.detach().numpy() for k, v in twin.state_dict().items()}
    assert_same_state(start.model, expected)


def test_a_runs_checkpoint_starts_a_new_run(folder, tmp_path):
    train({"data": str(folder), "epochs": 1, "batch_size": 8}, tmp_path / "first")
    checkpoint, _ = load_run(tmp_path / "first" / "checkpoint.npz")
    start, _ = started(folder, init=str(tmp_path / "first" / "checkpoint.npz"))
    assert_same_state(start.model, checkpoint.model)


def test_weights_of_another_preset_are_refused_naming_it(folder, tmp_path):
    weights_file(tmp_path / "w.safetensors", preset="seed")
    with pytest.raises(ConfigError, match="holds a seed network, not resnet20"):
        started(folder, model="resnet20", init=str(tmp_path / "w.safetensors"))


def test_resuming_with_the_same_init_given_relative_is_accepted(folder, tmp_path, monkeypatch):
    weights_file(tmp_path / "w.safetensors")
    monkeypatch.chdir(tmp_path)
    options = {"data": str(folder), "epochs": 1, "batch_size": 8, "init": "w.safetensors"}
    train(options, tmp_path / "run")
    summary = train({**options, "epochs": 2}, tmp_path / "run", resume=True)
    assert [row["epoch"] for row in summary["history"]] == [1, 2]


def test_the_command_says_which_tensor_does_not_fit(folder, tmp_path):
    weights_file(tmp_path / "w.safetensors", num_classes=4)  # a head for 4 classes, not 3
    result = xpcnn("train", "--data", folder, "--epochs", "1", "--init",
                   tmp_path / "w.safetensors", "--out", tmp_path / "run",
                   env=command_env(tmp_path))  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(
        f"xpcnn: error: --init {tmp_path / 'w.safetensors'}: does not fit this seed: state dict "
        "entry '"
    )
    assert "expected (3," in result.stderr or "expected (3)" in result.stderr
    assert not (tmp_path / "run" / "checkpoint.npz").exists()


def test_the_command_refuses_a_file_that_is_not_safetensors(folder, tmp_path):
    (tmp_path / "w.safetensors").write_bytes(b"not a safetensors file")
    result = xpcnn("train", "--data", folder, "--init", tmp_path / "w.safetensors",
                   "--out", tmp_path / "run", env=command_env(tmp_path))  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.startswith(f"xpcnn: error: --init {tmp_path / 'w.safetensors'}: not a "
                                    "readable safetensors file")  # fmt: skip
