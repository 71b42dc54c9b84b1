"""Everything a training run's future depends on, as one object with one ``state_dict``.

:class:`RunState` holds the model, the optimizer (velocity, interim shift, accumulators), the
schedule, the data source's position, the early-stopping tracker, the gradient scaler of fp16
runs, the running sums of the unfinished epoch, the history, the step count, the best weights
and the random generators. :meth:`RunState.state_dict` is the checkpoint: its keys are written
here and nowhere else, and :meth:`RunState.load_state_dict` restores all of it, so a resumed run
continues bit-identically.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from ravine.data.sources import Source
from ravine.train.checkpoint import CheckpointError, rng_state, set_rng_state
from ravine.train.distributed import Communicator
from ravine.train.early_stopping import EarlyStopping

__all__ = ["EpochSums", "RunState"]


def _plain_number(value: Any) -> Any:
    """A NumPy or torch scalar in a history record as the Python number it holds."""
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"history values must be numbers, strings or None, got {type(value).__name__}")


@dataclass
class EpochSums:
    """Running sums of the epoch in progress (checkpointed, so a resumed epoch reports the same)."""

    loss: float = 0.0
    correct: int = 0
    count: int = 0
    grad_norm: float = 0.0
    grad_norms: int = 0
    clipped: int = 0
    steps: int = 0
    skipped: int = 0
    lr: float = math.nan
    extra: dict[str, float] = field(default_factory=dict)

    def state_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "extra": dict(self.extra)}

    def add_step(self, first: dict[str, Any], lr: float, grad_norm: float | None,
                 clipped: bool) -> float:
        """Account for one step; return its loss (NaN for a skipped step).

        ``first`` is what the step's first loss evaluation left: ``loss`` (the float mean
        over the step's minibatch), ``count`` (its examples), ``correct`` and ``extra`` metric sums.
        """
        self.lr = lr
        self.steps += 1
        if "loss" not in first:
            self.skipped += 1
            return math.nan
        loss = first["loss"]
        batch = first["count"]
        self.loss += loss * batch
        self.count += batch
        if "correct" in first:
            self.correct += int(first["correct"])
        for name, value in first.get("extra", {}).items():
            self.extra[name] = self.extra.get(name, 0.0) + float(value)
        if grad_norm is not None:
            self.grad_norm += grad_norm
            self.grad_norms += 1
        self.clipped += int(clipped)
        return loss

    def record(self, epoch: int, step: int, classification: bool) -> dict[str, Any]:
        """The epoch's record, without validation metrics and time."""
        mean = (lambda total: total / self.count) if self.count else (lambda total: math.nan)
        record: dict[str, Any] = {"epoch": epoch, "step": step, "train_loss": mean(self.loss)}
        if classification:
            record["train_acc"] = mean(self.correct)
        for name, total in self.extra.items():
            record[f"train_{name}"] = mean(total)
        record["lr"] = self.lr
        record["grad_norm"] = self.grad_norm / self.grad_norms if self.grad_norms else None
        record["clipped"] = self.clipped / self.steps if self.steps else 0.0
        record["skipped"] = self.skipped
        return record


@dataclass
class RunState:
    """The whole mutable state of a run (see the module docstring)."""

    model: nn.Module
    optimizer: Optimizer
    schedule: Any
    source: Source
    tracker: EarlyStopping
    scaler: torch.amp.GradScaler | None = None
    sums: EpochSums = field(default_factory=EpochSums)
    history: list[dict[str, Any]] = field(default_factory=list)
    step: int = 0
    best_state: dict[str, Tensor] | None = None
    elapsed_before: float = 0.0
    metrics_offset: int | None = None

    @property
    def epoch(self) -> int:
        """Epochs begun before the current one (0-based number of the current epoch)."""
        return self.source.epoch

    def state_dict(self, *, elapsed: float, metrics_offset: int, options: dict[str, Any],
                   rng_by_rank: list[Any] | None) -> dict[str, Any]:
        """The checkpoint: every key a resumed run reads."""
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "batches": self.source.state_dict(),
            "rng": rng_state(),
            "early_stopping": self.tracker.state_dict(),
            "best_state": self.best_state,
            # One string, not a list of dicts: pickling (and hashing) every number of every
            # epoch made each checkpoint cost time in proportion to the epochs run (34 ms at
            # 1000 epochs, 8 ms as text). JSON text keeps NaN and infinities and every float's
            # exact value (repr).
            "history": json.dumps(self.history, default=_plain_number),
            "epoch_sums": self.sums.state_dict(),
            "step": self.step,
            "elapsed": elapsed,
            "metrics_offset": metrics_offset,
            "options": options,
        }
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        if rng_by_rank is not None:
            state["rng_by_rank"] = rng_by_rank
        return state

    def load_state_dict(self, ckpt: dict[str, Any], path: Path, comm: Communicator) -> None:
        """Restore a checkpoint written by :meth:`state_dict` for this run.

        Raises:
            CheckpointError: a key is missing or does not fit this model / optimizer / data.
        """
        try:
            self.model.load_state_dict(ckpt["model"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.schedule.load_state_dict(ckpt["schedule"])
            self.source.load_state_dict(ckpt["batches"])
            self.tracker.load_state_dict(ckpt["early_stopping"])
            if self.scaler is not None:
                self.scaler.load_state_dict(ckpt["scaler"])
            history = ckpt["history"]  # a list in checkpoints of format version 1 and 2
            self.history = json.loads(history) if isinstance(history, str) else history
            self.step = ckpt["step"]
            self.elapsed_before = ckpt["elapsed"]
            self.sums = EpochSums(**ckpt["epoch_sums"])
            self.best_state, self.metrics_offset = ckpt["best_state"], ckpt["metrics_offset"]
            set_rng_state(ckpt["rng"] if not comm.parallel else ckpt["rng_by_rank"][comm.rank])
        except KeyError as exc:
            raise CheckpointError(f"checkpoint {path} lacks {exc}; it is not from fit()") from None
        except (RuntimeError, ValueError, TypeError) as exc:
            reason = str(exc).strip().splitlines()[0]
            raise CheckpointError(f"checkpoint {path} does not fit this run: {reason}") from None
