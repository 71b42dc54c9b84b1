"""Training: :func:`fit`, its result, early stopping, checkpoints, metrics and reports.

See :mod:`ravine.train.trainer` for the loop and the run-directory layout.
"""

from ravine.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from ravine.train.early_stopping import EarlyStopping
from ravine.train.report import write_report
from ravine.train.trainer import FitResult, NonFiniteLossError, fit

__all__ = [
    "fit",
    "FitResult",
    "EarlyStopping",
    "NonFiniteLossError",
    "CheckpointError",
    "load_checkpoint",
    "save_checkpoint",
    "write_report",
]
