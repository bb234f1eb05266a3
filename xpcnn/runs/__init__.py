"""A training run as library calls — what the `xpcnn` commands do, printing nothing (messages go
to a `log` function, progress to callbacks):

    config.py    TrainConfig: the settings, resolved from a preset's recipe and the caller's
    record.py    RunRecord: the schema of a checkpoint's record, validated; restoring from it
    folder.py    RunFolder: create, lock, clear or resume a run folder
    training.py  train(): fresh or resumed, then one path through fit to the final score
    scoring.py   score(), evaluate_checkpoint(), predict_images()

A run folder holds:

    checkpoint.npz   the last completed epoch (weights, optimizer, record) — resume and evaluate
    best.npz         the epoch with the best validation accuracy (when there is a validation split)
    history.csv      one row per epoch; history.json the same records
    curves.png       loss and accuracy per epoch;  samples.png  validation images with predictions
    confusion.png    the confusion matrix of the final evaluation (test split, else validation)
"""

from xpcnn.runs.config import ConfigError, ResumeMismatch, TrainConfig
from xpcnn.runs.folder import RunFolder, RunFolderError, RunFolderNotEmpty
from xpcnn.runs.record import RecordError, RunRecord, load_run, restore_model
from xpcnn.runs.scoring import ScoringError, evaluate_checkpoint, predict_images, score
from xpcnn.runs.training import RunDiverged, TrainingInterrupted, train

__all__ = [
    "ConfigError",
    "RecordError",
    "ResumeMismatch",
    "RunDiverged",
    "RunFolder",
    "RunFolderError",
    "RunFolderNotEmpty",
    "RunRecord",
    "ScoringError",
    "TrainConfig",
    "TrainingInterrupted",
    "evaluate_checkpoint",
    "load_run",
    "predict_images",
    "restore_model",
    "score",
    "train",
]
