"""A time budget (`xpcnn train --time 30m`): durations read, epochs planned from what was timed,
the plan kept on resume, and a tiny run that ends near its budget."""

import time

import pytest
from cli_harness import command_env, write_folder, xpcnn

from xpcnn import plots
from xpcnn.runs import TrainingInterrupted, load_run, train
from xpcnn.runs.budget import Plan, fitted, format_duration, parse_duration
from xpcnn.runs.config import ConfigError, TrainConfig
from xpcnn.train import Callback

pytestmark = pytest.mark.usefixtures("data_home")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("30m", 1800), ("1h30m", 5400), ("1.5h", 5400), ("2m30s", 150), ("45", 45)],
)
def test_durations_read_as_seconds(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0s", "-5", "abc", "1x", "m", "inf", "30 m"])
def test_what_is_not_a_positive_duration_is_refused(text):
    with pytest.raises(ValueError, match="expected a duration such as 90s, 30m or 1h30m"):
        parse_duration(text)


def test_durations_print_as_people_write_them():
    assert [format_duration(s) for s in (48, 1752, 3720)] == ["48s", "29m12s", "1h02m"]


def plan(**fields):
    base = {"budget": 100.0, "step": 1.0, "steps": 10, "validation": 2.0, "writes": 1.0,
            "final": 5.0, "spent": 10.0}  # fmt: skip
    return Plan(**{**base, **fields})


def test_the_plan_fits_whole_epochs_after_what_was_spent_and_the_final_score(monkeypatch):
    monkeypatch.setattr(plots, "available", lambda: False)
    assert plan().epoch == 13.0 and plan().epochs == 6  # (100 - 10 - 5) // 13
    assert plan(budget=23.0).epochs == 0 and plan(budget=95.0).epochs == 6
    monkeypatch.setattr(plots, "available", lambda: True)  # up to 5% more for the figures
    assert plan().epoch == pytest.approx(13.65) and plan(budget=95.0).epochs == 5


def test_a_budget_too_small_for_one_epoch_says_what_one_takes(monkeypatch):
    monkeypatch.setattr(plots, "available", lambda: False)
    config = TrainConfig.resolve({"time": 20.0})
    with pytest.raises(ConfigError, match="one epoch does not fit: it takes about 28s") as caught:
        fitted(config, plan(budget=20.0))
    assert caught.value.field == "time"
    assert fitted(config, plan()).epochs == plan().epochs


def test_a_budget_and_a_number_of_epochs_exclude_each_other(tmp_path):
    with pytest.raises(ConfigError, match="cannot be given with a time budget"):
        TrainConfig.resolve({"time": 60.0, "epochs": 3})
    result = xpcnn("train", "--time", "1m", "--epochs", "3", env=command_env(tmp_path))
    assert result.returncode == 2
    assert result.stderr == (
        "xpcnn: error: --epochs 3: cannot be given with a time budget, which plans the epochs\n"
    )


def test_a_bad_duration_is_one_line_naming_the_flag(tmp_path):
    result = xpcnn("train", "--time", "soon", env=command_env(tmp_path))
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "argument --time: expected a duration such as 90s, 30m or 1h30m, got 'soon'" in (
        result.stderr
    )


@pytest.mark.slow  # a 20-second run: CI runs it under NumPy only
def test_a_tiny_run_plans_its_epochs_and_ends_near_its_budget(tmp_path):
    data = write_folder(tmp_path / "noise", per_class=20, noise=True)  # keeps learning
    lines = []
    budget = 20.0
    started = time.perf_counter()
    summary = train({"data": str(data), "time": budget}, tmp_path / "run", log=lines.append)
    took = time.perf_counter() - started
    planned = [line for line in lines if line.startswith("time budget 20s: ")]
    assert len(planned) == 1, lines
    epochs = int(planned[0].split(": ")[-1].split(" epoch")[0].rsplit(" ", 1)[-1])
    assert epochs >= 2 and len(summary["history"]) == epochs
    _, record = load_run(tmp_path / "run" / "checkpoint.npz")
    assert (record.config.epochs, record.config.time) == (epochs, budget)
    # the plan is measured on this machine while it runs: a loaded CI machine may stray
    assert 0.5 * budget <= took <= 1.3 * budget, (took, planned[0])


class StopAfterOneEpoch(Callback):
    def on_epoch_end(self, record):
        self.interrupt_requested = True


@pytest.mark.slow
def test_resuming_keeps_the_plan(tmp_path):
    data = write_folder(tmp_path / "noise", per_class=20, noise=True)
    lines = []
    with pytest.raises(TrainingInterrupted):
        train({"data": str(data), "time": 15.0}, tmp_path / "run", log=lines.append,
              callbacks=[StopAfterOneEpoch()])  # fmt: skip
    _, stored = load_run(tmp_path / "run" / "checkpoint.npz")
    resumed_lines = []
    summary = train({}, tmp_path / "run", resume=True, log=resumed_lines.append)
    assert len(summary["history"]) == stored.config.epochs
    assert not [line for line in resumed_lines if line.startswith("time budget")]
