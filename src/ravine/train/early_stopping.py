"""Early stopping: halt when the validation metric stops improving (lecture, "Regularization").

With ``mode="min"`` an epoch improves on the best value ``b`` when its metric ``m`` satisfies
``m < b - min_delta`` (``m > b + min_delta`` for ``mode="max"``). The run stops after ``patience``
consecutive epochs without improvement. Epochs up to ``start_from_epoch`` are ignored entirely, so
an early, noisy phase cannot set the bar. A non-finite metric never improves.
"""

from __future__ import annotations

import math
from typing import Any, Literal

__all__ = ["EarlyStopping", "resolve_mode"]

Mode = Literal["auto", "min", "max"]


def resolve_mode(monitor: str, mode: Mode) -> Literal["min", "max"]:
    """``"auto"`` means ``"max"`` for accuracies (a name containing ``acc``), else ``"min"``."""
    if mode not in ("auto", "min", "max"):
        raise ValueError(f"mode must be one of 'auto', 'min', 'max', got {mode!r}")
    if mode != "auto":
        return mode
    return "max" if "acc" in monitor else "min"


class EarlyStopping:
    """Track the best epoch of a monitored metric and decide when to stop.

    Args:
        monitor: the key of the per-epoch record to watch, e.g. ``"val_loss"`` or ``"val_acc"``.
        mode: ``"min"``, ``"max"`` or ``"auto"`` (see :func:`resolve_mode`).
        patience: the run stops after this many consecutive epochs without improvement (>= 0;
            0 stops at the first one); ``None`` only tracks the best epoch and never stops.
        min_delta: the least change that counts as an improvement (>= 0).
        restore_best: whether the trainer should hand back the best epoch's weights.
        start_from_epoch: epochs numbered ``<= start_from_epoch`` are ignored (>= 0).
    """

    def __init__(
        self,
        monitor: str = "val_loss",
        mode: Mode = "auto",
        patience: int | None = 5,
        min_delta: float = 0.0,
        restore_best: bool = True,
        start_from_epoch: int = 0,
    ) -> None:
        if patience is not None and (isinstance(patience, bool) or not isinstance(patience, int)
                                     or patience < 0):
            raise ValueError(f"patience must be an integer >= 0 or None, got {patience!r}")
        if not isinstance(min_delta, (int, float)) or not min_delta >= 0:
            raise ValueError(f"min_delta must be a number >= 0, got {min_delta!r}")
        if isinstance(start_from_epoch, bool) or not isinstance(start_from_epoch, int) \
                or start_from_epoch < 0:
            raise ValueError(f"start_from_epoch must be an integer >= 0, got {start_from_epoch!r}")
        self.monitor = monitor
        self.mode = resolve_mode(monitor, mode)
        self.patience = patience
        self.min_delta = float(min_delta)
        self.restore_best = bool(restore_best)
        self.start_from_epoch = start_from_epoch
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.wait = 0
        self.should_stop = False

    def improves(self, value: float) -> bool:
        """Whether ``value`` beats the best so far by more than ``min_delta``."""
        if not math.isfinite(value):
            return False
        if self.best is None:
            return True
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def update(self, epoch: int, record: dict[str, Any]) -> bool:
        """Account for one finished epoch; return whether it is the new best.

        Raises:
            KeyError: if the record lacks the monitored metric (the message lists those it has).
        """
        if self.monitor not in record:
            available = ", ".join(k for k, v in record.items() if isinstance(v, float))
            raise KeyError(f"monitor {self.monitor!r} is not in the epoch record ({available})")
        if epoch <= self.start_from_epoch:
            return False
        value = record[self.monitor]
        if self.improves(value):
            self.best, self.best_epoch, self.wait = float(value), epoch, 0
            return True
        self.wait += 1
        if self.patience is not None and self.wait >= self.patience:
            self.should_stop = True
        return False

    def state_dict(self) -> dict[str, Any]:
        """Plain-type state for checkpoints."""
        return {
            "best": self.best,
            "best_epoch": self.best_epoch,
            "wait": self.wait,
            "should_stop": self.should_stop,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the state saved by :meth:`state_dict`."""
        self.best = state["best"]
        self.best_epoch = state["best_epoch"]
        self.wait = state["wait"]
        self.should_stop = state["should_stop"]
