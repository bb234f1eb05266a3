"""The CIFAR-10 notebook's code cells, run in order as one plain script on a tiny image folder
(3 colour classes of 16x16 images), so the notebook never rots. The script inherits
XPCNN_BACKEND, so it runs on whichever backend the suite runs on."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from cli_harness import CLASSES, write_folder

from xpcnn.models import build_model

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "cifar10_notebook.ipynb"
FIGURES = ("samples", "curves", "confusion", "predictions")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def notebook_script(path: Path) -> str:
    """The notebook's code cells joined in order into one script."""
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    return "\n\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code") + "\n"


@pytest.fixture(scope="module")
def notebook_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    """The script run once for every test here: 12 training images, 2 epochs."""
    root = tmp_path_factory.mktemp("notebook")
    script = root / "cifar10_notebook.py"
    script.write_text(notebook_script(NOTEBOOK), encoding="utf-8")
    env = {
        **os.environ,
        "XPCNN_NOTEBOOK_DATA": str(write_folder(root / "colours", per_class=10)),
        "XPCNN_NOTEBOOK_LIMIT": "12",
        "XPCNN_NOTEBOOK_EPOCHS": "2",
        "XPCNN_NOTEBOOK_OUT": str(root / "figures"),
        "XPCNN_DATA": str(root / "xpcnn-data"),
        "MPLBACKEND": "Agg",
        "PYTHONWARNINGS": "ignore",
    }
    result = subprocess.run([sys.executable, str(script)], cwd=root, env=env,
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    return result, root / "figures"


def test_notebook_code_cells_run_as_a_script(notebook_run):
    result, _ = notebook_run
    assert result.returncode == 0, result.stderr[-3000:]


def test_notebook_uses_limit_training_images_and_a_validation_split_in_proportion(notebook_run):
    result, _ = notebook_run
    # 30 images: 24 train / 6 validation, then LIMIT=12 training images and 12·0.2/0.8 = 3
    assert "train 12, validation 3" in result.stdout, result.stdout[-3000:]


def test_notebook_prints_the_seed_network_summary_with_its_parameter_count(notebook_run):
    result, _ = notebook_run
    parameters = build_model("seed", num_classes=len(CLASSES), image_size=16).num_parameters()
    assert f"Total: {parameters:,} parameters" in result.stdout, result.stdout[-3000:]


def test_notebook_trains_for_epochs_from_its_environment(notebook_run):
    result, _ = notebook_run
    epochs = re.findall(r"^epoch (\d)/2 ", result.stdout, re.MULTILINE)
    assert epochs == ["1", "2"], result.stdout[-3000:]


def test_notebook_prints_the_validation_accuracy_as_a_fraction(notebook_run):
    result, _ = notebook_run
    found = re.search(r"^validation accuracy (\S+) on (\d+) images$", result.stdout, re.MULTILINE)
    assert found is not None, result.stdout[-3000:]
    assert 0.0 <= float(found[1]) <= 1.0
    assert int(found[2]) == 3


@pytest.mark.parametrize("name", FIGURES)
def test_notebook_saves_each_figure_as_a_png(notebook_run, name):
    _, figures = notebook_run
    path = figures / f"{name}.png"
    assert path.is_file(), sorted(p.name for p in figures.glob("*"))
    assert path.read_bytes()[: len(PNG_SIGNATURE)] == PNG_SIGNATURE
