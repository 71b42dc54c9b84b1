"""Losses, evaluation as all-reducible sums, and the ``metrics.jsonl`` log of a run.

Evaluation returns *sums* (total loss, correct predictions, examples) rather than means, so that
the shares of several data-parallel processes combine by a plain all-reduce before dividing.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ravine._checks import suggest
from ravine.data.sources import as_tensors, batch_examples, first_item

__all__ = ["LossFn", "Objective", "resolve_loss", "task_of", "loss_for", "correct_count",
           "read_metrics"]

LossFn = Callable[[Tensor, Tensor], Tensor]

LOSSES = ("cross_entropy", "mse", "bce")


def _mse(output: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
    # A regression net usually ends in (N, 1) while targets are (N,): compare them elementwise.
    if output.shape != target.shape and output.numel() == target.numel():
        output = output.reshape(target.shape)
    return F.mse_loss(output, target.to(output.dtype), reduction=reduction)


def _mse_sum(output: Tensor, target: Tensor) -> Tensor:
    # Sum over examples of each example's mean squared error, so sum / count is the mean loss.
    per_example = max(target[:1].numel(), 1)
    return _mse(output, target, reduction="sum") / per_example


def _bce(output: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
    if output.shape != target.shape and output.numel() == target.numel():
        output = output.reshape(target.shape)
    return F.binary_cross_entropy_with_logits(output, target.to(output.dtype),
                                              reduction=reduction)


def _bce_sum(output: Tensor, target: Tensor) -> Tensor:
    per_example = max(target[:1].numel(), 1)
    return _bce(output, target, reduction="sum") / per_example


def resolve_loss(loss: str | LossFn) -> tuple[LossFn, LossFn]:
    """``(mean_loss, summed_loss)`` for a loss name or a callable returning the batch mean.

    ``"cross_entropy"`` is ``-log softmax(f(x))_y``; ``"mse"`` is ``‖f(x) - y‖²`` averaged over
    elements; ``"bce"`` is the binary cross-entropy of the logit ``f(x)`` against a 0/1 target.
    A user callable ``loss(output, target)`` must return the mean over the batch; its sum is
    taken as ``mean × batch size``.
    """
    if callable(loss):
        user = loss
        return user, lambda out, y: user(out, y) * y.shape[0]
    if loss == "cross_entropy":
        return F.cross_entropy, lambda out, y: F.cross_entropy(out, y, reduction="sum")
    if loss == "mse":
        return _mse, _mse_sum
    if loss == "bce":
        return _bce, _bce_sum
    raise ValueError(
        f"unknown loss {loss!r}{suggest(loss, LOSSES)} (valid: {', '.join(LOSSES)} or a callable)"
    )


def _first_target(train: Any) -> Any:
    """The targets of ``train`` (all of them for tensors, else the first item's), or ``None``
    when they cannot be seen without consuming a stream."""
    tensors = as_tensors(train)
    if tensors is not None:
        return tensors[1]
    item = first_item(train)
    if item is None:
        return None
    if not isinstance(item, (tuple, list)) or len(item) != 2:
        raise ValueError(
            f"train's items are {type(item).__name__}s, not (x, y) pairs; pass "
            "compute_loss=fn(model, batch) returning the batch's mean loss"
        )
    return item[1]


def _is_float(target: Any) -> bool:
    if isinstance(target, Tensor):
        return torch.is_floating_point(target) or target.is_complex()
    if isinstance(target, np.ndarray):
        return np.issubdtype(target.dtype, np.inexact)
    return isinstance(target, (float, np.floating))


def task_of(train: Any, loss: str | LossFn | None,
            compute_loss: Callable[..., Any] | None) -> str | None:
    """``"multiclass"`` (integer targets), ``"binary"`` (``bce``) or ``None`` (floating-point
    targets, or batches that are not ``(x, y)`` pairs with ``compute_loss``)."""
    if compute_loss is not None:
        return None
    if loss == "bce":
        return "binary"
    target = _first_target(train)
    if isinstance(target, Tensor):
        return None if _is_float(target) else "multiclass"
    return "multiclass" if isinstance(target, (int, np.integer)) and not isinstance(
        target, bool) else None


def loss_for(loss: str | LossFn | None, train: Any) -> str | LossFn:
    """The loss a run uses: ``loss`` when given, else ``"mse"`` for floating-point targets and
    ``"cross_entropy"`` otherwise (cross-entropy over one output column is identically 0, so a
    regression run on the old default silently trained nothing)."""
    if loss is not None:
        return loss
    return "mse" if _is_float(_first_target(train)) else "cross_entropy"


def _scalar(loss: Any, what: str) -> Tensor:
    """``loss`` if it is a one-element tensor; else a one-line error (a vector loss would make
    ``backward`` fail with torch's own, less telling message)."""
    if not isinstance(loss, Tensor) or loss.numel() != 1:
        shape = tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__
        raise ValueError(f"{what} must return the batch's mean loss as a scalar tensor, got "
                         f"{shape}; reduce it (e.g. .mean())")
    return loss


def correct_count(output: Tensor, target: Tensor) -> Tensor:
    """Number of examples whose arg-max class equals the integer target."""
    return (output.argmax(dim=-1) == target).sum()


def binary_correct_count(output: Tensor, target: Tensor) -> Tensor:
    """Number of examples whose logit's sign matches the 0/1 target."""
    return ((output.reshape(target.shape) > 0) == (target > 0.5)).sum()


class Objective:
    """How a batch becomes a loss, an accuracy and metrics, in training and in evaluation.

    Statistics travel as one float64 vector ``[Σ loss, Σ correct, count, Σ metric_1, ...]`` of
    *sums* over examples, so that the shares of several data-parallel processes and of several
    micro-batches combine by plain addition before dividing.

    Args:
        loss: a loss name or ``loss(output, target) -> batch mean`` (see :func:`resolve_loss`).
        classification: ``"multiclass"`` (arg-max accuracy), ``"binary"`` (sign of the logit)
            or ``None``.
        compute_loss: ``fn(model, batch) -> loss`` or ``(loss, {name: value})`` for batches
            that are not ``(x, y)``; the values are per-batch means, averaged by batch size.
        metrics: ``{name: fn(output, target) -> value}`` evaluated on ``(x, y)`` batches.
    """

    def __init__(
        self,
        loss: str | LossFn = "cross_entropy",
        *,
        classification: str | None = None,
        compute_loss: Callable[..., Any] | None = None,
        metrics: dict[str, Callable[[Tensor, Tensor], Any]] | None = None,
    ) -> None:
        self.mean_loss, self.summed_loss = resolve_loss(loss)
        self.classification = classification
        self.compute_loss = compute_loss
        self.metrics = dict(metrics or {})
        self.names: list[str] = list(self.metrics)
        self._correct = binary_correct_count if classification == "binary" else correct_count

    def width(self) -> int:
        return 3 + len(self.names)

    def _extra_names(self, found: dict[str, Any]) -> None:
        for key in found:
            if key not in self.names:
                self.names.append(key)

    def train_forward(self, model: nn.Module, batch: Any) -> tuple[Tensor, int, Any, dict]:
        """``(mean loss, examples, correct count or None, {metric: batch mean})``."""
        if self.compute_loss is not None:
            out = self.compute_loss(model, batch)
            extra: dict[str, Any] = {}
            if isinstance(out, tuple):
                out, extra = out
            self._extra_names(extra)
            return _scalar(out, "compute_loss"), batch_examples(batch), None, extra
        x, y = batch
        out = model(x)
        n = y.shape[0]
        if n == 0:
            # A rank whose share of the last batch is empty must still join DDP's backward.
            return out.sum() * 0.0, 0, None, {}
        correct = self._correct(out.detach(), y) if self.classification else None
        return _scalar(self.mean_loss(out, y), "loss"), n, correct, {}

    @torch.no_grad()
    def eval_sums(self, model: nn.Module, batches: Iterable[Any]) -> Tensor:
        """``[Σ loss, Σ correct, count, Σ metrics...]`` (float64) of ``model`` in eval mode.

        The model's train/eval mode is restored afterwards.
        """
        was_training = model.training
        model.eval()
        rows: list[list[float]] = []
        sums = None
        try:
            for batch in batches:
                if self.compute_loss is not None:
                    loss, n, _, extra = self.train_forward(model, batch)
                    row = [float(loss) * n, 0.0, float(n)]
                    row += [float(extra.get(k, 0.0)) * n for k in self.names]
                    rows.append(row)
                    continue
                x, y = batch
                out = model(x)
                if sums is None:
                    sums = torch.zeros(self.width(), dtype=torch.float64, device=out.device)
                sums[0] += self.summed_loss(out, y).double()
                if self.classification:
                    sums[1] += self._correct(out, y)
                sums[2] += y.shape[0]
                for i, name in enumerate(self.names):
                    sums[3 + i] += float(self.metrics[name](out, y)) * y.shape[0]
        finally:
            model.train(was_training)
        if self.compute_loss is not None:
            width = self.width()
            total = torch.zeros(width, dtype=torch.float64)
            for row in rows:
                total[: len(row)] += torch.tensor(row, dtype=torch.float64)
            return total
        if sums is None:
            sums = torch.zeros(self.width(), dtype=torch.float64)
        return sums

    def summarize(self, sums: Tensor, prefix: str) -> dict[str, float]:
        """Turn the sums vector into ``{prefix_loss, prefix_acc, prefix_<metric>}`` means."""
        values = sums.tolist()
        count = values[2]
        record = {f"{prefix}_loss": values[0] / count if count else math.nan}
        if self.classification:
            record[f"{prefix}_acc"] = values[1] / count if count else math.nan
        for i, name in enumerate(self.names):
            if 3 + i < len(values):
                record[f"{prefix}_{name}"] = values[3 + i] / count if count else math.nan
        return record


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
