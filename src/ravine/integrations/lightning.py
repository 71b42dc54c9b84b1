"""ravine's training monitor inside a Lightning run: :class:`DiagnosticsCallback`.

::

    from ravine.integrations.lightning import DiagnosticsCallback

    callback = DiagnosticsCallback((x_probe, y_probe), loss_fn=F.cross_entropy, every=500)
    trainer = lightning.Trainer(callbacks=[callback], ...)
    trainer.fit(module, loader)       # report: <trainer.log_dir>/monitor.md

What the callback needs from the ``LightningModule``:

* ``module(x)`` (its ``forward``) returns what the loss takes: ``loss_fn(module(x), y)`` is the
  batch-mean loss on a probe batch ``(x, y)``;
* the loss: the ``loss_fn=`` argument, or else a ``loss_fn`` attribute of the module;
* one optimizer (``trainer.optimizers[0]`` is diagnosed).

After every optimizer step (``on_train_batch_end`` when ``trainer.global_step`` advanced, so
gradient accumulation counts optimizer steps) it calls
:meth:`ravine.diagnostics.Monitor.step` with the step's loss (the ``"loss"`` of
``training_step``'s output). Each measurement's numbers go to every logger of the trainer with
the prefix ``diag/`` (``diag/lambda_max``, ``diag/b_simple``, ...); at the end of training the
report (``monitor.md`` with the latest ranked findings and ``monitor.png``) is written into
``report_dir``, by default ``trainer.log_dir``. The measurements run on global rank 0 only and
never change training (parameters are bit-identical with and without the callback).

This module imports Lightning; nothing else in ravine does.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from torch import Tensor

from ravine.diagnostics.findings import Diagnosis
from ravine.diagnostics.monitor import (
    DEFAULT_BUDGET,
    DEFAULT_EVERY,
    DEFAULT_WINDOW,
    Monitor,
    check_schedule,
)

__all__ = ["DiagnosticsCallback"]


class DiagnosticsCallback(pl.Callback):
    """Measure and rank what makes training hard, every ``every`` optimizer steps.

    Args:
        probe_data: the measurements' data (see :class:`~ravine.diagnostics.Monitor`); a batch
            ``(x, y)`` of tensors is moved to the module's device.
        loss_fn: ``loss_fn(module(x), y)`` -> batch-mean loss; None uses ``module.loss_fn``.
        every, budget, seed, mode, batch_size, window: as for
            :class:`~ravine.diagnostics.Monitor`.
        log: a JSONL file receiving one line per measurement, or None.
        report_dir: where ``monitor.md`` goes at the end of training; None uses
            ``trainer.log_dir``.
        prefix: the prefix of the numbers sent to the Lightning loggers.

    Attributes:
        monitor: the :class:`~ravine.diagnostics.Monitor` of the current run (None before
            training starts and on ranks other than 0).
    """

    def __init__(
        self,
        probe_data: Any,
        loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
        *,
        every: int | str = DEFAULT_EVERY,
        budget: int | dict[str, float] | None = DEFAULT_BUDGET,
        log: str | Path | None = None,
        report_dir: str | Path | None = None,
        seed: int = 0,
        mode: str = "eval",
        batch_size: int | None = None,
        window: int = DEFAULT_WINDOW,
        prefix: str = "diag/",
    ) -> None:
        check_schedule(every=every, window=window, seed=seed, mode=mode, batch_size=batch_size)
        if loss_fn is not None and not callable(loss_fn):
            raise TypeError(f"loss_fn must be callable or None, got {type(loss_fn).__name__}")
        self.probe_data, self.loss_fn = probe_data, loss_fn
        self.every, self.budget, self.log_path = every, budget, log
        self.report_dir = report_dir
        self.seed, self.mode, self.batch_size, self.window = seed, mode, batch_size, window
        self.prefix = prefix
        self.monitor: Monitor | None = None
        self._global_step = 0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        loss_fn = self.loss_fn if self.loss_fn is not None else getattr(pl_module, "loss_fn", None)
        if not callable(loss_fn):
            raise ValueError(
                "DiagnosticsCallback needs loss_fn=..., or a loss_fn attribute on "
                f"{type(pl_module).__name__}: loss_fn(module(x), y) -> the batch-mean loss"
            )
        if not trainer.optimizers:
            raise ValueError(
                "DiagnosticsCallback needs an optimizer; configure_optimizers gave none"
            )
        self._global_step = trainer.global_step
        self.monitor = None
        if not trainer.is_global_zero:
            return
        probe = self.probe_data
        if isinstance(probe, (tuple, list)) and len(probe) == 2:
            if all(isinstance(t, Tensor) for t in probe):
                probe = tuple(t.to(pl_module.device) for t in probe)
        self.monitor = Monitor(
            pl_module,
            loss_fn,
            probe,
            trainer.optimizers[0],
            every=self.every,
            budget=self.budget,
            log=self.log_path,
            seed=self.seed,
            mode=self.mode,
            batch_size=self.batch_size,
            window=self.window,
        )

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if trainer.global_step == self._global_step:
            return  # no optimizer step on this batch (gradient accumulation, a skipped step)
        self._global_step = trainer.global_step
        if self.monitor is None:
            return
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        diagnosis = self.monitor.step(loss if isinstance(loss, Tensor) else None)
        if diagnosis is not None:
            self._log_numbers(trainer, diagnosis)

    def _log_numbers(self, trainer: pl.Trainer, diagnosis: Diagnosis) -> None:
        metrics = {
            self.prefix + key: float(value)
            for key, value in diagnosis.numbers.items()
            if isinstance(value, (int, float))
            and not isinstance(value, bool)
            and math.isfinite(value)
        }
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # trainer.log_dir broadcasts from rank 0: every rank must ask.
        out_dir = self.report_dir if self.report_dir is not None else trainer.log_dir
        if self.monitor is not None and out_dir is not None:
            self.monitor.report(out_dir, title="Training monitor (Lightning)")
