"""``ravine.fit``: the training loop, readable top to bottom.

``fit`` validates its options (:class:`~ravine.train.options.FitOptions`), starts or resumes the
run (:func:`~ravine.train.loop.start_run`), then repeats :func:`~ravine.train.epoch.run_epoch`
(steps: minibatch -> closure -> ``optimizer.step`` -> schedule -> log, in
:mod:`ravine.train.step`) and :func:`~ravine.train.epoch.end_epoch` (evaluate -> diagnostics ->
callbacks -> early stopping -> checkpoint) until done, and finishes: the model is moved to its
true parameters (or the best epoch's weights), the test set is evaluated and the report written.

A checkpoint holds the whole :class:`~ravine.train.state.RunState`, so a resumed run continues
bit-identically, and ``metrics.jsonl`` is cut back to the checkpoint so that no record appears
twice. Started by torchrun (or ``ravine train --nproc N``), every process runs this same loop on
its share of each global minibatch (:mod:`ravine.train.distributed`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

from ravine._interrupts import redeliver_swallowed
from ravine.train.early_stopping import EarlyStopping
from ravine.train.epoch import end_epoch, run_epoch
from ravine.train.loop import Callback, Loop, start_run
from ravine.train.options import FitOptions
from ravine.train.state import RunState

__all__ = ["fit", "FitResult"]


@dataclass
class FitResult:
    """What :func:`fit` returns.

    Attributes:
        history: one dict per finished epoch with ``epoch``, ``step``, ``train_loss``,
            ``train_acc`` (classification), ``val_loss``/``val_acc``/``val_<metric>`` (with a
            validation set), ``lr`` (of the epoch's last step), ``grad_norm`` (mean pre-clip
            norm), ``clipped`` (fraction of steps clipped), ``skipped`` (steps dropped for a
            non-finite loss) and ``time`` (seconds since the start of the run).
        best_epoch: the epoch with the best ``monitor`` value (``None`` if none was finite).
        best_metric: that value.
        monitor: the metric that decides "best" (and early stopping).
        model: the trained model at its true parameters; the best epoch's weights when
            early stopping asked for ``restore_best``.
        test: ``{"test_loss", "test_acc", ...}`` of the returned model when a test set was given.
        stopped_early: whether early stopping ended the run before ``epochs``.
        wall_time: seconds of training, including the time before a resume.
        run_dir: the run directory, if any.
    """

    history: list[dict[str, Any]]
    best_epoch: int | None
    best_metric: float | None
    monitor: str
    model: nn.Module
    test: dict[str, float] | None
    stopped_early: bool
    wall_time: float
    run_dir: Path | None


def fit(
    model: nn.Module,
    train: Any,
    val: Any = None,
    *,
    test: Any = None,
    optimizer: str | dict[str, Any] | Optimizer = "adam",
    lr: float | None = None,
    schedule: str | dict[str, Any] | Any | None = "constant",
    schedule_interval: str | None = None,
    epochs: int = 10,
    max_steps: int | None = None,
    batch_size: int = 100,
    batching: str = "epoch",
    drop_last: bool = False,
    steps_per_epoch: int | None = None,
    accumulate: int = 1,
    num_workers: int = 0,
    pin_memory: bool = False,
    prefetch: int | None = None,
    loss: str | Callable[..., Any] | None = None,
    compute_loss: Callable[..., Any] | str | None = None,
    metrics: dict[str, Callable[..., Any]] | Sequence[Callable[..., Any]] | None = None,
    clip_norm: float | None = None,
    weight_decay: float = 0.0,
    precision: str = "fp32",
    val_every: int = 1,
    val_every_steps: int | None = None,
    early_stopping: dict[str, Any] | EarlyStopping | bool | None = None,
    diagnostics: dict[str, Any] | bool | None = None,
    on_nonfinite: str = "stop",
    seed: int = 0,
    device: str | torch.device = "cpu",
    sync_batchnorm: bool = False,
    checkpoint_every: int | None = 1,
    checkpoint_every_steps: int | None = None,
    async_checkpoints: bool = True,
    log_every: int = 1,
    loggers: Sequence[Any] = (),
    run_dir: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    quiet: bool | None = None,
    callbacks: Sequence[Callback] = (),
    config: dict[str, Any] | None = None,
) -> FitResult:
    """Train ``model`` on ``train`` with minibatch gradient steps; see the module docstring.

    Each step minimises the minibatch estimate of the empirical risk,
    ``J(θ) = (1/m) Σ_i L(f(x_i; θ), y_i)``, with the chosen optimizer.

    Args:
        model: any ``nn.Module``; moved to ``device``.
        train, val, test: a pair ``(x, y)`` of tensors, a :class:`ravine.data.ArrayDataset`,
            any map-style ``torch.utils.data.Dataset`` of ``(x, y)`` items (or of any items,
            with ``compute_loss``), an ``IterableDataset`` or a ``DataLoader``
            (:mod:`ravine.data.sources`). ``val`` is evaluated after every ``val_every``-th
            epoch, ``test`` once at the end on the returned model.
        run_dir: folder for ``config.yaml``, ``metrics.jsonl``, ``checkpoints/last.pt`` and
            ``best.pt``, ``plots/*.png`` and ``report.md``; ``None`` writes nothing.
        resume: continue the run saved in ``run_dir`` from ``checkpoints/last.pt``; the options
            must equal the original run's (except those that do not change the numbers:
            checkpointing, logging, device, workers), and so must ``config``'s other keys
            (the ``data`` and ``model`` of ``ravine train``; not ``run_dir``, ``code_dir``).
        overwrite: replace a previous run's files in ``run_dir`` (otherwise that is an error).
        quiet: ``True`` hides the progress bar; ``None`` shows it only on a terminal.
        callbacks: ``cb(epoch, record)`` called after each epoch's evaluation; exceptions
            propagate (e.g. ``optuna.TrialPruned``).
        config: the dict written as ``config.yaml`` (the CLI passes its resolved config).
        **options: every other keyword is a training option, documented (and validated) by
            :class:`ravine.train.options.FitOptions`.

    Returns:
        A :class:`FitResult`.

    Raises:
        ValueError: invalid options or data (:class:`ravine.ConfigError`, one line).
        NonFiniteLossError: a non-finite training loss with ``on_nonfinite="stop"``.
        ravine.train.CheckpointError: ``resume`` with a missing, damaged or mismatched
            checkpoint.
    """
    given = locals()
    options = FitOptions.from_kwargs(**{k: given[k] for k in FitOptions.model_fields})
    loop, state = start_run(model, train, val, test, options, run_dir=run_dir, resume=resume,
                            overwrite=overwrite, quiet=quiet, callbacks=callbacks, config=config)
    finished = False
    try:
        # a Ctrl-C that Python would drop in a garbage-collection callback still stops the run
        with loop.progress, redeliver_swallowed():
            while not loop.done(state):
                run_epoch(loop, state)
                end_epoch(loop, state)
        result = _finish(loop, state)
        finished = True
    finally:
        loop.close(report=finished)
    return result


def _finish(loop: Loop, state: RunState) -> FitResult:
    """Move to the true θ (or the best weights), evaluate the test set, log the summary."""
    wall_time = loop.elapsed()
    to_true = getattr(state.optimizer, "to_true_params", None)
    if to_true is not None:
        to_true()
    tracker = state.tracker
    restored = tracker.restore_best and state.best_state is not None
    if restored:
        loop.model.load_state_dict(state.best_state)
    test = None if loop.test is None else loop.evaluate(loop.test, "test")
    epochs_run = len(state.history)
    stopped_early = tracker.should_stop and epochs_run < loop.options.epochs
    loop.log({"kind": "summary", "monitor": tracker.monitor, "best_epoch": tracker.best_epoch,
              "best_metric": tracker.best, "stopped_early": stopped_early,
              "returned_epoch": tracker.best_epoch if restored else epochs_run,
              "epochs_run": epochs_run, "wall_time": wall_time,
              "clip_norm": loop.options.clip_norm, **(test or {})})
    return FitResult(history=state.history, best_epoch=tracker.best_epoch,
                     best_metric=tracker.best, monitor=tracker.monitor, model=loop.model,
                     test=test, stopped_early=stopped_early, wall_time=wall_time,
                     run_dir=loop.run_dir)
