"""The ResNet presets as runs: trained from their recipes, resumed bit-exactly (running statistics
and all), scored again from their checkpoints with TTA as the run scored them."""

import numpy as np
import pytest
from cli_harness import arrays, write_folder

from xpcnn.runs import TrainingInterrupted, evaluate_checkpoint, train
from xpcnn.train import Callback

pytestmark = pytest.mark.usefixtures("data_home")


class StopAfterOneEpoch(Callback):
    def on_epoch_end(self, record):
        self.interrupt_requested = True


def test_a_resnet20_run_stopped_and_resumed_ends_where_an_uninterrupted_one_does(tmp_path):
    data = write_folder(tmp_path / "colours", per_class=12)
    options = {"data": str(data), "model": "resnet20", "epochs": 2, "batch_size": 8}
    train(options, tmp_path / "whole")
    with pytest.raises(TrainingInterrupted):
        train(options, tmp_path / "resumed", callbacks=[StopAfterOneEpoch()])
    train(options, tmp_path / "resumed", resume=True)
    whole, resumed = (arrays(tmp_path / name / "checkpoint.npz") for name in ("whole", "resumed"))
    assert "model/layer3.2.bn2.running_var" in whole and sorted(whole) == sorted(resumed)
    assert [key for key in whole if not np.array_equal(whole[key], resumed[key])] == []


@pytest.mark.slow  # an 11 M-parameter network: CI runs it under NumPy only
def test_resnet18_trains_and_its_checkpoint_scores_with_tta_as_the_run_did(tmp_path):
    data = write_folder(tmp_path / "colours", per_class=8)
    options = {"data": str(data), "model": "resnet18", "epochs": 1, "batch_size": 8, "tta": True}
    summary = train(options, tmp_path / "run")
    scored = evaluate_checkpoint(tmp_path / "run" / "checkpoint.npz", split="val")
    assert scored["tta"] is True  # the run's recipe, as stored
    assert scored["n"] == summary["validation"]["n"] > 0
    assert scored["accuracy"] == summary["validation"]["accuracy"]
    assert scored["loss"] == pytest.approx(summary["validation"]["loss"], rel=1e-6)
