"""Training: :func:`fit`, its result, early stopping, checkpoints, metrics and reports.

See :mod:`ravine.train.fit` for the loop, :mod:`ravine.train.options` for every option and
:mod:`ravine.train.state` for what a checkpoint holds.
"""

from ravine.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from ravine.train.early_stopping import EarlyStopping
from ravine.train.fit import FitResult, fit
from ravine.train.options import FitOptions
from ravine.train.report import write_report
from ravine.train.step import NonFiniteLossError

__all__ = [
    "fit",
    "FitResult",
    "FitOptions",
    "EarlyStopping",
    "NonFiniteLossError",
    "CheckpointError",
    "load_checkpoint",
    "save_checkpoint",
    "write_report",
]
