import numpy as np
import pytest
from PIL import Image

pytest.importorskip("matplotlib")

from xpcnn import plots  # noqa: E402

HISTORY = [
    {"epoch": 1, "train_loss": 2.0, "train_acc": 0.3, "val_loss": 1.8, "val_acc": 0.35},
    {"epoch": 2, "train_loss": 1.5, "train_acc": 0.5, "val_loss": 1.4, "val_acc": 0.52},
]


@pytest.mark.parametrize(
    "history", [HISTORY, HISTORY[:1], [{"epoch": 1, "train_loss": 1.0, "train_acc": 0.5}]]
)
def test_curves_are_a_png_for_any_history(tmp_path, history):
    path = plots.plot_curves(history, tmp_path / "curves.png")
    image = Image.open(path)
    assert image.format == "PNG" and image.width > image.height


def test_samples_grid_has_a_row_per_six_images(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (12, 3, 16, 16), dtype=np.uint8)
    labels = np.arange(12) % 3
    one_row = plots.plot_samples(
        images[:6], labels[:6], labels[:6], ["a", "b", "c"], tmp_path / "one.png"
    )
    two_rows = plots.plot_samples(
        images, labels, (labels + 1) % 3, ["a", "b", "c"], tmp_path / "two.png"
    )
    assert Image.open(two_rows).height > 1.5 * Image.open(one_row).height


def test_confusion_png_replaces_the_old_file_and_leaves_no_temporary(tmp_path):
    matrix = np.array([[5, 1], [2, 4]])
    path = tmp_path / "confusion.png"
    path.write_text("old")
    plots.plot_confusion(matrix, ["cat", "dog"], path, title="test")
    assert Image.open(path).format == "PNG"
    assert [p.name for p in tmp_path.iterdir()] == ["confusion.png"]
