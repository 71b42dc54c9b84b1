"""The live progress display of :func:`ravine.fit` (rich), silent when not on a terminal."""

from __future__ import annotations

import math
import sys
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

__all__ = ["TrainingProgress", "format_epoch"]


def _fmt(value: float | None, spec: str = ".4g") -> str:
    if value is None:
        return "-"
    return format(value, spec) if math.isfinite(value) else str(value)


def format_epoch(record: dict[str, Any], epochs: int) -> str:
    """One line summarising an epoch record, e.g. ``epoch 3/30  train_loss 0.41 ...``."""
    parts = [f"epoch {record['epoch']}/{epochs}"]
    for key in ("train_loss", "train_acc", "val_loss", "val_acc"):
        if key in record:
            parts.append(f"{key} {_fmt(record[key])}")
    parts.append(f"lr {_fmt(record.get('lr'), '.3g')}")
    parts.append(f"{record['time']:.1f}s")
    return "  ".join(parts)


class TrainingProgress:
    """A bar over all optimizer steps showing epoch, step, loss, learning rate and gradient norm.

    Args:
        total_steps: the run's planned number of steps.
        epochs: the planned number of epochs.
        quiet: ``True`` shows nothing; ``None`` shows the bar only when standard error is a
            terminal (so logs and CI output stay clean).
    """

    def __init__(self, total_steps: int, epochs: int, *, quiet: bool | None = None) -> None:
        self.enabled = sys.stderr.isatty() if quiet is None else not quiet
        self.epochs = epochs
        self._progress: Progress | None = None
        if not self.enabled:
            return
        self._progress = Progress(
            TextColumn("[bold]epoch {task.fields[epoch]}/{task.fields[epochs]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}  lr {task.fields[lr]}  |g| {task.fields[gnorm]}"),
            TimeElapsedColumn(),
            console=Console(stderr=True),
        )
        self._task = self._progress.add_task(
            "train", total=total_steps, epoch=1, epochs=epochs, loss="-", lr="-", gnorm="-"
        )

    def __enter__(self) -> TrainingProgress:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def step(self, step: int, epoch: int, loss: float, lr: float, grad_norm: float | None) -> None:
        """Show the state after optimizer step ``step`` (1-based) of 0-based ``epoch``."""
        if self._progress is not None:
            self._progress.update(
                self._task,
                completed=step,
                epoch=epoch + 1,
                loss=_fmt(loss),
                lr=_fmt(lr, ".3g"),
                gnorm=_fmt(grad_norm, ".3g"),
            )

    def epoch(self, record: dict[str, Any]) -> None:
        """Print the one-line summary of a finished epoch above the bar."""
        if self._progress is not None:
            self._progress.console.print(format_epoch(record, self.epochs), highlight=False)
