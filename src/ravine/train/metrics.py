"""Losses, evaluation as all-reducible sums, and the ``metrics.jsonl`` log of a run.

Evaluation returns *sums* (total loss, correct predictions, examples) rather than means, so that
the shares of several data-parallel processes combine by a plain all-reduce before dividing.
"""

from __future__ import annotations

import difflib
import json
import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ravine.train.checkpoint import CheckpointError

__all__ = ["LossFn", "resolve_loss", "evaluate_sums", "summarize", "MetricsLog", "read_metrics"]

LossFn = Callable[[Tensor, Tensor], Tensor]

LOSSES = ("cross_entropy", "mse")


def _mse(output: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
    # A regression net usually ends in (N, 1) while targets are (N,): compare them elementwise.
    if output.shape != target.shape and output.numel() == target.numel():
        output = output.reshape(target.shape)
    return F.mse_loss(output, target.to(output.dtype), reduction=reduction)


def _mse_sum(output: Tensor, target: Tensor) -> Tensor:
    # Sum over examples of each example's mean squared error, so sum / count is the mean loss.
    per_example = max(target[:1].numel(), 1)
    return _mse(output, target, reduction="sum") / per_example


def resolve_loss(loss: str | LossFn) -> tuple[LossFn, LossFn]:
    """``(mean_loss, summed_loss)`` for a loss name or a callable returning the batch mean.

    ``"cross_entropy"`` is ``-log softmax(f(x))_y``; ``"mse"`` is ``‖f(x) - y‖²`` averaged over
    elements. A user callable ``loss(output, target)`` must return the mean over the batch; its
    sum is taken as ``mean × batch size``.
    """
    if callable(loss):
        user = loss
        return user, lambda out, y: user(out, y) * y.shape[0]
    if loss == "cross_entropy":
        return F.cross_entropy, lambda out, y: F.cross_entropy(out, y, reduction="sum")
    if loss == "mse":
        return _mse, _mse_sum
    close = difflib.get_close_matches(str(loss), LOSSES, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"unknown loss {loss!r}{hint} (valid: {', '.join(LOSSES)} or a callable)")


def correct_count(output: Tensor, target: Tensor) -> Tensor:
    """Number of examples whose arg-max class equals the integer target."""
    return (output.argmax(dim=-1) == target).sum()


@torch.no_grad()
def evaluate_sums(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    summed_loss: LossFn,
    *,
    batch_size: int,
    classification: bool,
) -> Tensor:
    """``[Σ loss, Σ correct, count]`` (float64) of ``model`` in eval mode over ``(x, y)``.

    The model's train/eval mode is restored afterwards.
    """
    was_training = model.training
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=x.device)
    try:
        for start in range(0, x.shape[0], batch_size):
            xb, yb = x[start : start + batch_size], y[start : start + batch_size]
            out = model(xb)
            sums[0] += summed_loss(out, yb).double()
            if classification:
                sums[1] += correct_count(out, yb)
            sums[2] += yb.shape[0]
    finally:
        model.train(was_training)
    return sums


def summarize(sums: Tensor, prefix: str, *, classification: bool) -> dict[str, float]:
    """Turn ``[Σ loss, Σ correct, count]`` into ``{prefix_loss, prefix_acc}`` means."""
    loss_sum, correct, count = sums.tolist()
    record = {f"{prefix}_loss": loss_sum / count if count else math.nan}
    if classification:
        record[f"{prefix}_acc"] = correct / count if count else math.nan
    return record


def _jsonable(value: Any) -> Any:
    # Strict JSON has no NaN/inf; write them as null so any JSON reader accepts the file.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class MetricsLog:
    """Append-only ``metrics.jsonl``: one JSON object per line.

    Lines are ``{"kind": "epoch", ...}`` per epoch and ``{"kind": "step", ...}`` per logged step.
    :meth:`offset` flushes and returns the byte length written so far; a checkpoint stores it and
    a resumed run re-opens the log truncated to it, so records written after the checkpoint (and
    replayed by the resumed run) appear exactly once.

    Args:
        path: the file, or ``None`` for a log that writes nothing.
        truncate_to: open an existing file and cut it to this many bytes (resume); ``None``
            starts a new, empty file.
    """

    def __init__(self, path: str | os.PathLike[str] | None, *, truncate_to: int | None = None):
        self.path = None if path is None else Path(path)
        self._file = None
        if self.path is None:
            return
        if truncate_to is None:
            self._file = open(self.path, "w", encoding="utf-8")
            return
        size = self.path.stat().st_size if self.path.exists() else -1
        if size < truncate_to:
            raise CheckpointError(
                f"{self.path} holds {max(size, 0)} bytes but the checkpoint recorded "
                f"{truncate_to}; the log does not belong to this checkpoint"
            )
        self._file = open(self.path, "r+", encoding="utf-8")
        self._file.truncate(truncate_to)
        self._file.seek(truncate_to)

    def write(self, record: dict[str, Any]) -> None:
        """Append one record (non-finite floats become ``null``)."""
        if self._file is not None:
            line = json.dumps({k: _jsonable(v) for k, v in record.items()}, allow_nan=False)
            self._file.write(line + "\n")

    def offset(self) -> int:
        """Flush to the operating system and return the current length in bytes (0 if none)."""
        if self._file is None:
            return 0
        self._file.flush()
        return self._file.tell()

    def sync(self) -> None:
        """Flush and ``fsync`` so the lines survive a machine crash, not just a process kill."""
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())

    def close(self) -> None:
        """Flush and close the file."""
        if self._file is not None:
            self._file.close()
            self._file = None


def _records(path: Path) -> Iterator[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def read_metrics(path: str | os.PathLike[str]) -> tuple[list[dict], list[dict], dict]:
    """``(epoch_records, step_records, summary)`` of a ``metrics.jsonl`` file.

    The records lose their ``kind`` key; ``summary`` is the final ``{"kind": "summary"}``
    record of a finished run (empty if the run has not finished).
    """
    epochs: list[dict] = []
    steps: list[dict] = []
    summary: dict = {}
    for record in _records(Path(path)):
        kind = record.pop("kind", None)
        if kind == "epoch":
            epochs.append(record)
        elif kind == "step":
            steps.append(record)
        elif kind == "summary":
            summary = record
    return epochs, steps, summary
