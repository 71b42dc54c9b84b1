"""``ravine.fit``: the training loop, readable top to bottom.

One optimizer step is: take a minibatch -> a closure computes the loss and its gradient ->
``optimizer.step(closure)`` -> ``schedule.step()`` -> log. After each epoch: evaluate (at the true
parameters, see below) -> callbacks -> early-stopping check -> checkpoint.

Interim-point optimizers
------------------------
ravine's Nesterov methods (Algorithms 8.3 and 8.6) keep the *interim point* ``θ + αv`` in the
parameters between steps. Validation metrics, the best weights and the returned model must be at
the true ``θ``, so evaluation and best-weight capture run inside :func:`ravine.optim.true_params`
and the model is moved to ``θ`` for good when training ends. The training loss reported per epoch
is the mean of the minibatch losses the gradients were taken from (at the interim point for these
methods, in training mode with dropout).

Exact resume
------------
A checkpoint holds everything the rest of the run depends on: parameters and buffers, optimizer
state (velocity, interim shift, accumulators), schedule, batching position, the global random
generators (dropout), early-stopping state, history, the partial sums of an unfinished epoch and
the length of ``metrics.jsonl``. A resumed run therefore continues bit-identically, and the log is
cut back to the checkpoint so that no record appears twice.

Data-parallel runs
------------------
Started by torchrun (or ``ravine train --nproc N``), every process runs this same loop on its
share of each global minibatch, with the model in ``DistributedDataParallel``; the per-step loss
statistics and the evaluation sums are all-reduced, so every rank holds the same records, and
only rank 0 writes files. :mod:`ravine.train.distributed` explains why the result equals the
single-process one.
"""

from __future__ import annotations

import difflib
import math
import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import Tensor, nn
from torch.optim import Optimizer

from ravine import data, models, optim, schedules
from ravine._validate import check_int
from ravine.train import distributed
from ravine.train.checkpoint import (
    CheckpointError,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from ravine.train.early_stopping import EarlyStopping
from ravine.train.metrics import (
    LossFn,
    MetricsLog,
    correct_count,
    evaluate_sums,
    resolve_loss,
    summarize,
)
from ravine.train.monitoring import DiagnosticsSchedule
from ravine.train.progress import TrainingProgress
from ravine.train.report import write_report

__all__ = ["fit", "FitResult", "NonFiniteLossError"]

Callback = Callable[[int, dict[str, Any]], None]
NONFINITE_POLICIES = ("stop", "skip")
# Evaluation runs without gradients, so it can use far larger batches than training.
EVAL_BATCH_SIZE = 2048


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite and ``on_nonfinite="stop"``."""


class _NonFiniteLoss(Exception):
    """Raised inside the closure, before ``backward``, so the optimizer never updates."""

    def __init__(self, value: float) -> None:
        super().__init__(value)
        self.value = value


@dataclass
class FitResult:
    """What :func:`fit` returns.

    Attributes:
        history: one dict per finished epoch with ``epoch``, ``step``, ``train_loss``,
            ``train_acc`` (classification), ``val_loss``/``val_acc`` (with a validation set),
            ``lr`` (of the epoch's last step), ``grad_norm`` (mean pre-clip norm over the epoch),
            ``clipped`` (fraction of steps clipped), ``skipped`` (steps dropped for a non-finite
            loss) and ``time`` (seconds since the start of the run).
        best_epoch: the epoch with the best ``monitor`` value (``None`` if none was finite).
        best_metric: that value.
        monitor: the metric that decides "best" (and early stopping).
        model: the trained model at its true parameters; the best epoch's weights when
            early stopping asked for ``restore_best``.
        test: ``{"test_loss", "test_acc"}`` of the returned model when a test set was given.
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


@dataclass(frozen=True)
class _Ranks:
    """This process's place in a data-parallel job; a single process is rank 0 of 1.

    Only rank 0 writes files; evaluation is a sum over ranks' shards, combined by all-reduce.
    """

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_reduce(self, tensor: Tensor) -> Tensor:
        if self.world_size > 1:
            torch.distributed.all_reduce(tensor)
        return tensor

    def all_gather(self, value: Any) -> list[Any]:
        """Every rank's ``value`` (picklable), indexed by rank."""
        if self.world_size == 1:
            return [value]
        gathered: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(gathered, value)
        return gathered


@dataclass
class _EpochSums:
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

    def state_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def add_step(
        self,
        first: dict[str, Any],
        batch: int,
        lr: float,
        grad_norm: float | None,
        clipped: bool,
    ) -> float:
        """Account for one step; return its loss (NaN for a skipped step)."""
        self.lr = lr
        self.steps += 1
        if "loss" not in first:
            self.skipped += 1
            return math.nan
        loss = first["loss"].item()
        self.loss += loss * batch
        self.count += batch
        if "correct" in first:
            self.correct += int(first["correct"])
        if grad_norm is not None:
            self.grad_norm += grad_norm
            self.grad_norms += 1
        self.clipped += int(clipped)
        return loss

    def record(self, epoch: int, step: int, classification: bool) -> dict[str, Any]:
        """The epoch's record, without validation metrics and time."""
        record: dict[str, Any] = {
            "epoch": epoch,
            "step": step,
            "train_loss": self.loss / self.count if self.count else math.nan,
        }
        if classification:
            record["train_acc"] = self.correct / self.count if self.count else math.nan
        record["lr"] = self.lr
        record["grad_norm"] = self.grad_norm / self.grad_norms if self.grad_norms else None
        record["clipped"] = self.clipped / self.steps if self.steps else 0.0
        record["skipped"] = self.skipped
        return record


@dataclass
class _RunFiles:
    """Paths of a run directory (see :func:`fit`)."""

    root: Path
    config: Path = field(init=False)
    metrics: Path = field(init=False)
    last: Path = field(init=False)
    best: Path = field(init=False)

    def __post_init__(self) -> None:
        self.config = self.root / "config.yaml"
        self.metrics = self.root / "metrics.jsonl"
        self.last = self.root / "checkpoints" / "last.pt"
        self.best = self.root / "checkpoints" / "best.pt"

    def holds_run(self) -> bool:
        return self.metrics.exists() or self.last.exists()

    def clear(self) -> None:
        """Remove the files a previous run wrote here (only those; nothing else in the folder)."""
        for path in (self.config, self.metrics, self.last, self.best, self.root / "report.md"):
            path.unlink(missing_ok=True)
        shutil.rmtree(self.root / "plots", ignore_errors=True)


def fit(
    model: nn.Module,
    train: Any,
    val: Any = None,
    *,
    test: Any = None,
    optimizer: str | dict[str, Any] | Optimizer = "adam",
    lr: float | None = None,
    schedule: str | dict[str, Any] | None = "constant",
    epochs: int = 10,
    batch_size: int = 100,
    batching: str = "epoch",
    loss: str | LossFn = "cross_entropy",
    clip_norm: float | None = None,
    weight_decay: float = 0.0,
    early_stopping: dict[str, Any] | EarlyStopping | bool | None = None,
    seed: int = 0,
    run_dir: str | Path | None = None,
    checkpoint_every: int | None = 1,
    checkpoint_every_steps: int | None = None,
    log_every: int = 1,
    device: str | torch.device = "cpu",
    sync_batchnorm: bool = False,
    quiet: bool | None = None,
    on_nonfinite: str = "stop",
    callbacks: Sequence[Callback] = (),
    diagnostics: dict[str, Any] | bool | None = None,
    resume: bool = False,
    overwrite: bool = False,
    config: dict[str, Any] | None = None,
) -> FitResult:
    """Train ``model`` on ``train`` with minibatch gradient steps; see the module docstring.

    Each step minimises the minibatch estimate of the empirical risk,
    ``J(θ) = (1/m) Σ_i L(f(x_i; θ), y_i)``, with the chosen optimizer.

    Args:
        model: any ``nn.Module`` mapping a batch of inputs to outputs; moved to ``device``.
        train, val, test: an :class:`ravine.data.ArrayDataset` or a pair ``(x, y)`` of tensors.
            Integer targets mean classification (accuracy is reported). ``val`` is evaluated
            after every epoch, ``test`` once at the end on the returned model.
        optimizer: a registry name (:func:`ravine.optim.names`), a dict ``{"name": ..., **hp}``
            or a ready ``torch.optim.Optimizer`` (then ``lr`` and ``weight_decay`` must be left
            at their defaults: set them on the optimizer).
        lr: learning rate (default: the optimizer's own default).
        schedule: a name (:func:`ravine.schedules.names`) or a dict ``{"name": ..., **options}``;
            stepped once per optimizer step. ``total_steps = epochs × batches per epoch``, so a
            linear decay decays over the whole run.
        epochs: number of passes (``batching="epoch"``) or of ``⌈N/m⌉``-step blocks (``"random"``).
        batch_size: the minibatch size m; in a data-parallel run the global one (divisible by
            the number of processes), see :mod:`ravine.train.distributed`.
        batching: ``"epoch"`` (shuffle, then contiguous blocks) or ``"random"`` (fresh sample
            each step); see :mod:`ravine.data`.
        loss: ``"cross_entropy"``, ``"mse"`` or a callable ``loss(output, target)`` returning
            the batch mean.
        clip_norm: re-normalize the gradient to this global norm when it is larger.
        weight_decay: L2 coefficient ``λ``; biases and normalization parameters are excluded
            (:func:`ravine.models.param_groups`).
        early_stopping: ``None`` (run all epochs; the best epoch is still tracked), ``True``
            (defaults) or a dict of :class:`~ravine.train.early_stopping.EarlyStopping`
            options (``monitor``, ``mode``, ``patience``, ``min_delta``, ``restore_best``,
            ``start_from_epoch``) or an instance. ``monitor`` defaults to ``"val_loss"``
            (``"train_loss"`` without ``val``).
        seed: seeds Python's, NumPy's and torch's global generators (dropout) and the batching.
        run_dir: folder for ``config.yaml``, ``metrics.jsonl``, ``checkpoints/last.pt`` and
            ``best.pt``, ``plots/*.png`` and ``report.md``; ``None`` writes nothing.
        checkpoint_every: write ``last.pt`` every this many epochs (and always at the end);
            ``None`` only at the end.
        checkpoint_every_steps: also write it every this many optimizer steps, mid-epoch.
        log_every: write a step record (loss, lr, grad norm, clipped) every this many steps.
        device: where to train, e.g. ``"cpu"`` or ``"cuda"`` (under torchrun, ``"cuda"`` is
            the GPU numbered by ``LOCAL_RANK``).
        sync_batchnorm: in a data-parallel run, normalize batch-norm layers with the statistics
            of the global batch (:class:`torch.nn.SyncBatchNorm`, CUDA only) instead of each
            rank's share (the returned model then holds SyncBatchNorm layers); ignored in a
            single process.
        quiet: ``True`` hides the progress bar; ``None`` shows it only on a terminal.
        on_nonfinite: ``"stop"`` raises :class:`NonFiniteLossError` naming the step (the last
            checkpoint is left intact); ``"skip"`` drops that step (no update, buffers such as
            batch-norm statistics restored; the schedule still advances, and dropout's random
            numbers drawn by the failed forward pass stay drawn) and goes on.
        callbacks: ``cb(epoch, record)`` called after each epoch's evaluation; exceptions
            propagate (e.g. ``optuna.TrialPruned``).
        diagnostics: measure curvature and gradient noise during training, e.g.
            ``dict(every=5, what=["lambda_max", "noise"], examples=512)`` (``True``: those
            defaults); the numbers join the epoch records as ``diag_*`` and the report plots
            them (see :mod:`ravine.train.monitoring`). Measuring never changes the training.
        resume: continue the run saved in ``run_dir`` from ``checkpoints/last.pt``; the other
            options must equal the original run's.
        overwrite: replace a previous run's files in ``run_dir`` (otherwise that is an error).
        config: the dict written as ``config.yaml`` (the CLI passes its resolved config);
            default: these options.

    Returns:
        A :class:`FitResult`.

    Raises:
        ValueError: for invalid options.
        NonFiniteLossError: a non-finite training loss with ``on_nonfinite="stop"``.
        ravine.train.CheckpointError: ``resume`` with a missing, damaged or mismatched
            checkpoint.
    """
    check_int("epochs", epochs, 1)
    check_int("batch_size", batch_size, 1)
    check_int("seed", seed, 0)
    check_int("log_every", log_every, 1)
    for name, value in (("checkpoint_every", checkpoint_every),
                        ("checkpoint_every_steps", checkpoint_every_steps)):
        if value is not None:
            check_int(name, value, 1)
    if on_nonfinite not in NONFINITE_POLICIES:
        raise ValueError(f"on_nonfinite must be one of {NONFINITE_POLICIES}, got {on_nonfinite!r}")
    if not isinstance(sync_batchnorm, bool):
        raise ValueError(f"sync_batchnorm must be True or False, got {sync_batchnorm!r}")
    try:
        device = torch.device(device)
    except RuntimeError:
        raise ValueError(
            f"device must be a torch device such as 'cpu' or 'cuda', got {device!r}"
        ) from None
    ranks = _Ranks(*distributed.join(device))
    if ranks.world_size > 1 and device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    if ranks.world_size > 1 and sync_batchnorm:
        model = distributed.convert_sync_batchnorm(model, device)
    model.to(device)
    x, y = _tensors(train, "train", device)
    val_xy = None if val is None else _tensors(val, "val", device)
    test_xy = None if test is None else _tensors(test, "test", device)
    classification = not torch.is_floating_point(y)
    mean_loss, summed_loss = resolve_loss(loss)
    diag = DiagnosticsSchedule.from_option(diagnostics)
    diag_batch = None if diag is None else diag.subset(x, y, seed)

    batches = data.batches(batching, x.shape[0], batch_size, seed=seed, rank=ranks.rank,
                           world_size=ranks.world_size)
    total_steps = epochs * len(batches)
    opt, optimizer_spec = build_optimizer(optimizer, model, lr, weight_decay, clip_norm)
    schedule_spec = {"name": "constant"} if schedule is None else _spec(schedule, "schedule")
    schedule_options = {k: v for k, v in schedule_spec.items() if k != "name"}
    if schedule_spec["name"] == "linear-decay" and schedule_options.get("decay_steps") is None:
        # A run of a given length decays over all of it, not over the lecture's 100 epochs.
        schedule_options["decay_steps"] = total_steps
    sched = schedules.create(
        schedule_spec["name"], opt, total_steps=total_steps, steps_per_epoch=len(batches),
        **schedule_options,
    )
    tracker = _build_tracker(early_stopping, has_val=val is not None, classification=classification)
    # The optimizer reports the gradient norm itself unless fit must clip for a foreign one.
    clip_in_closure = clip_norm is not None and isinstance(optimizer, Optimizer)
    norm_from_optimizer = getattr(opt, "clip_norm", None) is not None or getattr(
        opt, "track_grad_norm", False
    )
    options = {
        "optimizer": optimizer_spec,
        "schedule": schedule_spec,
        "epochs": epochs,
        "batch_size": batch_size,
        "batching": batching,
        "loss": loss if isinstance(loss, str) else getattr(loss, "__qualname__", repr(loss)),
        "clip_norm": clip_norm,
        "weight_decay": weight_decay,
        "early_stopping": _tracker_settings(tracker),
        "seed": seed,
        "train_examples": int(x.shape[0]),
        "on_nonfinite": on_nonfinite,
        # Every rank's random streams are saved, so a resume needs as many processes.
        "world_size": ranks.world_size,
        "sync_batchnorm": sync_batchnorm,
    }

    files = None if run_dir is None or not ranks.is_main else _RunFiles(Path(run_dir))
    sums = _EpochSums()
    history: list[dict[str, Any]] = []
    best_state: dict[str, Tensor] | None = None
    step, elapsed_before, log_offset = 0, 0.0, None
    if resume:
        if run_dir is None:
            raise ValueError("resume=True needs run_dir (where the checkpoint lives)")
        # Every rank reads the checkpoint, even those that write nothing.
        last = _RunFiles(Path(run_dir)).last
        ckpt = load_checkpoint(last)
        _check_same_options(ckpt, options, last)
        _restore(ckpt, model, opt, sched, batches, tracker, last)
        history, step, elapsed_before = ckpt["history"], ckpt["step"], ckpt["elapsed"]
        sums = _EpochSums(**ckpt["epoch_sums"])
        best_state, log_offset = ckpt["best_state"], ckpt["metrics_offset"]
        set_rng_state(ckpt["rng"] if ranks.world_size == 1 else ckpt["rng_by_rank"][ranks.rank])
    else:
        _seed_everything(distributed.rank_seed(seed, ranks.rank))
        if files is not None:
            _prepare_run_dir(files, overwrite, config if config is not None else options)
    log = MetricsLog(None if files is None else files.metrics, truncate_to=log_offset)
    start = time.perf_counter()

    def elapsed() -> float:
        return elapsed_before + time.perf_counter() - start

    def checkpoint() -> None:
        if run_dir is None:
            return
        # Rank 0 writes; the others hand it their generators' states (dropout) to save.
        rng_by_rank = ranks.all_gather(rng_state()) if ranks.world_size > 1 else None
        if files is None:
            return
        offset = log.offset()
        log.sync()
        save_checkpoint(
            {
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "schedule": sched.state_dict(),
                "batches": batches.state_dict(),
                "rng": rng_state(),
                **({} if rng_by_rank is None else {"rng_by_rank": rng_by_rank}),
                "early_stopping": tracker.state_dict(),
                "best_state": best_state,
                "history": history,
                "epoch_sums": sums.state_dict(),
                "step": step,
                "elapsed": elapsed(),
                "metrics_offset": offset,
                "options": options,
            },
            files.last,
        )

    # Wrapped only now, so that DDP's initial broadcast from rank 0 sends restored weights.
    net = model if ranks.world_size == 1 else distributed.wrap(model, device)
    net.train()
    try:
        with TrainingProgress(total_steps, epochs,
                              quiet=quiet if ranks.is_main else True) as progress:
            while batches.epoch < epochs and not tracker.should_stop:
                epoch = batches.epoch
                for idx in batches:
                    idx = idx.to(device)
                    xb, yb = x[idx], y[idx]
                    lr_used = float(opt.param_groups[0]["lr"])
                    # A skipped step must leave no trace, but its forward pass already updated
                    # buffers such as batch-norm running statistics (with NaNs).
                    buffers = _copy_buffers(model) if on_nonfinite == "skip" else None
                    # With several ranks, idx is this rank's share of the step's global batch.
                    batch = yb.shape[0] if ranks.world_size == 1 else sum(
                        batches.shard_sizes(batches.position - 1))
                    closure, first = _make_closure(net, opt, xb, yb, mean_loss, classification,
                                                   clip_norm if clip_in_closure else None,
                                                   measure_norm=not norm_from_optimizer,
                                                   ranks=ranks, global_batch=batch)
                    try:
                        opt.step(closure)
                        skipped = False
                    except _NonFiniteLoss as bad:
                        if on_nonfinite == "stop":
                            # Every rank raises this, so every rank must word it the same.
                            last = None if run_dir is None else _RunFiles(Path(run_dir)).last
                            kept = last is not None and last.exists()
                            raise NonFiniteLossError(
                                f"non-finite training loss ({bad.value}) at step {step + 1} "
                                f"(epoch {epoch + 1}); stopped"
                                + (f"; the last good checkpoint is {last}" if kept else "")
                            ) from None
                        opt.zero_grad(set_to_none=True)
                        _restore_buffers(model, buffers)
                        first.clear()
                        skipped = True
                    sched.step()
                    step += 1

                    grad_norm = None if skipped else (
                        opt.last_grad_norm if norm_from_optimizer else first["norm"])
                    clipped = clip_norm is not None and grad_norm is not None and (
                        grad_norm > clip_norm)
                    loss_value = sums.add_step(first, batch, lr_used, grad_norm, clipped)
                    if step % log_every == 0:
                        log.write({"kind": "step", "epoch": epoch + 1, "step": step,
                                   "loss": loss_value, "lr": lr_used, "grad_norm": grad_norm,
                                   "clipped": clipped, "skipped": skipped})
                        progress.step(step, epoch, loss_value, lr_used, grad_norm)
                    if checkpoint_every_steps is not None and step % checkpoint_every_steps == 0:
                        checkpoint()

                if sums.steps and sums.skipped == sums.steps:
                    raise NonFiniteLossError(
                        f"every step of epoch {epoch + 1} had a non-finite loss; stopped"
                    )
                if ranks.world_size > 1:
                    # Evaluation and the best weights use rank 0's running statistics everywhere.
                    distributed.sync_buffers(model)
                record = sums.record(epoch + 1, step, classification)
                if val_xy is not None:
                    with optim.true_params(opt):
                        record.update(_evaluate(model, val_xy, summed_loss, "val",
                                                classification, ranks))
                if diag is not None and diag.due(epoch + 1):
                    # At the true θ, and without drawing from the training's random streams.
                    with optim.true_params(opt), torch.random.fork_rng(
                        devices=[device] if device.type == "cuda" else []
                    ):
                        record.update(diag.measure(model, mean_loss, diag_batch, lr=lr_used,
                                                   batch_size=batch_size, seed=seed))
                record["time"] = elapsed()
                history.append(record)
                log.write({"kind": "epoch", **record})
                progress.epoch(record)
                sums = _EpochSums()
                for callback in callbacks:
                    callback(epoch + 1, record)

                if tracker.update(epoch + 1, record):
                    with optim.true_params(opt):
                        best_state = _clone_state(model)
                    if files is not None:
                        save_checkpoint({"model": best_state, "epoch": epoch + 1,
                                         "monitor": tracker.monitor, "value": tracker.best},
                                        files.best)
                done = tracker.should_stop or batches.epoch >= epochs
                if done or (checkpoint_every is not None and (epoch + 1) % checkpoint_every == 0):
                    checkpoint()
        wall_time = elapsed()

        opt_to_true = getattr(opt, "to_true_params", None)
        if opt_to_true is not None:
            opt_to_true()
        if tracker.restore_best and best_state is not None:
            model.load_state_dict(best_state)
        test_metrics = None
        if test_xy is not None:
            test_metrics = _evaluate(model, test_xy, summed_loss, "test", classification, ranks)
        stopped_early = tracker.should_stop and len(history) < epochs
        restored = tracker.restore_best and best_state is not None
        log.write({"kind": "summary", "monitor": tracker.monitor, "best_epoch": tracker.best_epoch,
                   "best_metric": tracker.best, "stopped_early": stopped_early,
                   "returned_epoch": tracker.best_epoch if restored else len(history),
                   "epochs_run": len(history), "wall_time": wall_time, "clip_norm": clip_norm,
                   **(test_metrics or {})})
    finally:
        log.close()
    if files is not None:
        write_report(files.root)
    return FitResult(
        history=history,
        best_epoch=tracker.best_epoch,
        best_metric=tracker.best,
        monitor=tracker.monitor,
        model=model,
        test=test_metrics,
        stopped_early=stopped_early,
        wall_time=wall_time,
        run_dir=None if run_dir is None else Path(run_dir),
    )


def _tensors(dataset: Any, name: str, device: torch.device) -> tuple[Tensor, Tensor]:
    """The ``(x, y)`` tensors of an ArrayDataset-like object or a pair, on ``device``."""
    if hasattr(dataset, "x") and hasattr(dataset, "y"):
        x, y = dataset.x, dataset.y
    elif isinstance(dataset, (tuple, list)) and len(dataset) == 2:
        x, y = dataset
    else:
        raise ValueError(
            f"{name} must be a ravine.data.ArrayDataset or a pair (x, y) of tensors, "
            f"got {type(dataset).__name__}"
        )
    if not isinstance(x, Tensor) or not isinstance(y, Tensor):
        raise ValueError(f"{name} must hold tensors, got {type(x).__name__}, {type(y).__name__}")
    if x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise ValueError(
            f"{name} must hold the same number (>= 1) of inputs and targets, "
            f"got {x.shape[0]} and {y.shape[0]}"
        )
    return x.to(device), y.to(device)


def _spec(value: str | dict[str, Any], what: str) -> dict[str, Any]:
    """Normalize a name or a ``{"name": ..., **options}`` dict to the dict form."""
    if isinstance(value, str):
        return {"name": value}
    if isinstance(value, dict) and isinstance(value.get("name"), str):
        return dict(value)
    raise ValueError(f"{what} must be a name or a dict with a 'name' key, got {value!r}")


def build_optimizer(
    optimizer: str | dict[str, Any] | Optimizer,
    model: nn.Module,
    lr: float | None,
    weight_decay: float,
    clip_norm: float | None,
) -> tuple[Optimizer, dict[str, Any]]:
    """The optimizer plus a plain description of it (for checkpoints and ``config.yaml``)."""
    if isinstance(optimizer, Optimizer):
        if lr is not None or weight_decay != 0:
            raise ValueError(
                "lr and weight_decay apply only when fit creates the optimizer; "
                "set them on the optimizer instance instead"
            )
        if clip_norm is not None and getattr(optimizer, "clip_norm", None) is not None:
            raise ValueError(
                f"clip_norm is set both on fit (clip_norm={clip_norm}) and on the optimizer "
                f"(clip_norm={optimizer.clip_norm}); set it in one place"
            )
        return optimizer, {"name": type(optimizer).__name__, "defaults": {
            k: v for k, v in optimizer.defaults.items() if isinstance(v, (int, float, str, tuple))
        }}
    spec = _spec(optimizer, "optimizer")
    hp = {k: v for k, v in spec.items() if k != "name"}
    if lr is not None:
        if "lr" in hp and hp["lr"] != lr:
            raise ValueError(f"lr given twice: lr={lr} and optimizer['lr']={hp['lr']}")
        hp["lr"] = lr
    groups = models.param_groups(model, weight_decay)
    opt = optim.create(spec["name"], groups, clip_norm=clip_norm, track_grad_norm=True, **hp)
    return opt, {"name": spec["name"], **hp}


def _build_tracker(
    early_stopping: dict[str, Any] | EarlyStopping | bool | None,
    *,
    has_val: bool,
    classification: bool,
) -> EarlyStopping:
    default_monitor = "val_loss" if has_val else "train_loss"
    if isinstance(early_stopping, EarlyStopping):
        tracker = early_stopping
    elif early_stopping is None or early_stopping is False:
        tracker = EarlyStopping(default_monitor, patience=None, restore_best=False)
    elif early_stopping is True:
        tracker = EarlyStopping(default_monitor)
    elif isinstance(early_stopping, dict):
        tracker = EarlyStopping(**{"monitor": default_monitor, **early_stopping})
    else:
        raise ValueError(
            "early_stopping must be None, a bool, a dict or an EarlyStopping, "
            f"got {early_stopping!r}"
        )
    available = ["train_loss"] + (["train_acc"] if classification else [])
    if has_val:
        available += ["val_loss"] + (["val_acc"] if classification else [])
    if tracker.monitor not in available:
        close = difflib.get_close_matches(tracker.monitor, available, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(
            f"early_stopping monitor {tracker.monitor!r} is not recorded by this run{hint} "
            f"(available: {', '.join(available)})"
        )
    return tracker


def _tracker_settings(tracker: EarlyStopping) -> dict[str, Any]:
    return {
        "monitor": tracker.monitor,
        "mode": tracker.mode,
        "patience": tracker.patience,
        "min_delta": tracker.min_delta,
        "restore_best": tracker.restore_best,
        "start_from_epoch": tracker.start_from_epoch,
    }


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _prepare_run_dir(files: _RunFiles, overwrite: bool, config: dict[str, Any]) -> None:
    if files.holds_run():
        if not overwrite:
            raise ValueError(
                f"run_dir {files.root} already holds a run; resume it (resume=True, --resume), "
                "replace it (overwrite=True, --overwrite) or choose another run_dir"
            )
        files.clear()
    files.root.mkdir(parents=True, exist_ok=True)
    files.config.write_text(yaml.safe_dump(_plain(config), sort_keys=False), encoding="utf-8")


def _plain(value: Any) -> Any:
    """A YAML-safe copy: tuples become lists, unknown objects their repr."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def _flat(options: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"optimizer": {"lr": 0.1}}`` -> ``{"optimizer.lr": 0.1}`` (values made YAML-plain)."""
    flat: dict[str, Any] = {}
    for key, value in options.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = _plain(value)
    return flat


def _check_same_options(ckpt: dict[str, Any], options: dict[str, Any], path: Path) -> None:
    saved = ckpt.get("options")
    if not isinstance(saved, dict):
        raise CheckpointError(f"checkpoint {path} lacks the run's options; it is not from fit()")
    before, now = _flat(saved), _flat(options)
    differ = sorted(k for k in before.keys() | now.keys() if before.get(k) != now.get(k))
    if differ:
        key = differ[0]
        more = f" (and {len(differ) - 1} more differences)" if len(differ) > 1 else ""
        raise CheckpointError(
            f"cannot resume from {path}: the run was started with {key}={before.get(key)!r}, "
            f"now {key}={now.get(key)!r}{more}; use the original settings or a new run_dir"
        )


def _restore(
    ckpt: dict[str, Any],
    model: nn.Module,
    opt: Optimizer,
    sched: Any,
    batches: Any,
    tracker: EarlyStopping,
    path: Path,
) -> None:
    try:
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["schedule"])
        batches.load_state_dict(ckpt["batches"])
        tracker.load_state_dict(ckpt["early_stopping"])
    except KeyError as exc:
        raise CheckpointError(f"checkpoint {path} lacks {exc}; it is not from fit()") from None
    except (RuntimeError, ValueError, TypeError) as exc:
        reason = str(exc).strip().splitlines()[0]
        raise CheckpointError(f"checkpoint {path} does not fit this run: {reason}") from None


def _copy_buffers(model: nn.Module) -> list[Tensor]:
    return [b.detach().clone() for b in model.buffers()]


def _restore_buffers(model: nn.Module, saved: list[Tensor] | None) -> None:
    if saved is not None:
        with torch.no_grad():
            for buffer, copy in zip(model.buffers(), saved, strict=True):
                buffer.copy_(copy)


def _clone_state(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _make_closure(
    model: nn.Module,
    opt: Optimizer,
    xb: Tensor,
    yb: Tensor,
    mean_loss: LossFn,
    classification: bool,
    clip_norm: float | None,
    *,
    measure_norm: bool,
    ranks: _Ranks,
    global_batch: int,
) -> tuple[Callable[[], Tensor], dict[str, Any]]:
    """The closure handed to ``opt.step`` and the dict where it leaves its first evaluation.

    It recomputes the loss and gradient at the current parameters (the interim point for
    Nesterov); closure-based optimizers such as L-BFGS call it several times per step, and the
    first call (the loss before the update) is what gets logged. A non-finite loss raises before
    ``backward`` so the optimizer never updates. ``clip_norm`` clips here for optimizers that do
    not clip themselves; ``measure_norm`` records the pre-clip norm for those that do not track it.

    In a data-parallel run ``model`` is the DDP wrapper, ``xb, yb`` this rank's share of a
    global batch of ``global_batch`` examples, and the logged loss, the non-finite check and the
    returned loss concern the global batch (:func:`_shared_loss`), so that all ranks take the
    same decisions. The loss statistics are all-reduced while the gradients are computed (one
    synchronization point per step rather than two); a non-finite loss therefore raises after
    ``backward``, still before the optimizer updates.
    """
    first: dict[str, Any] = {}

    def record_norm() -> None:
        if clip_norm is not None:
            first["norm"] = optim.clip_grad_norm_(model.parameters(), clip_norm)
        elif measure_norm:
            first["norm"] = float(torch.nn.utils.get_total_norm(
                [p.grad for p in model.parameters() if p.grad is not None]
            ))

    def closure() -> Tensor:
        opt.zero_grad(set_to_none=True)
        out = model(xb)
        if ranks.world_size > 1:
            return shared_closure(out)
        batch_loss = mean_loss(out, yb)
        if not torch.isfinite(batch_loss):
            raise _NonFiniteLoss(batch_loss.item())
        if "loss" not in first:
            first["loss"] = batch_loss.detach()
            if classification:
                first["correct"] = correct_count(out.detach(), yb)
        batch_loss.backward()
        record_norm()
        return batch_loss

    def shared_closure(out: Tensor) -> Tensor:
        batch_loss, stats, pending = _shared_loss(out, yb, mean_loss, classification, ranks,
                                                  global_batch)
        batch_loss.backward()
        pending.wait()
        loss_sum, correct_sum = stats
        mean = loss_sum / global_batch
        if not torch.isfinite(mean):
            raise _NonFiniteLoss(mean.item())
        if "loss" not in first:
            first["loss"] = mean
            if classification:
                first["correct"] = correct_sum
        record_norm()
        return mean

    return closure, first


def _shared_loss(
    out: Tensor,
    yb: Tensor,
    mean_loss: LossFn,
    classification: bool,
    ranks: _Ranks,
    global_batch: int,
) -> tuple[Tensor, Tensor, Any]:
    """This rank's loss to differentiate, and ``[Σ loss, Σ correct]`` over the global batch.

    DDP averages the ranks' gradients. Weighting this rank's mean loss by ``b_r W / b`` (its
    share ``b_r`` of the global batch ``b``, ``W`` ranks) makes that average the gradient of the
    global mean, also for an uneven last batch; for equal shares the weight is exactly 1. The
    sums are being all-reduced when this returns: wait on the returned work before reading them.
    """
    local = yb.shape[0]
    # A last batch smaller than W leaves some ranks nothing, yet they must join DDP's backward.
    mean = mean_loss(out, yb) if local else out.sum() * 0.0
    correct = correct_count(out.detach(), yb) if classification else 0
    stats = torch.stack([
        mean.detach().double() * local,
        torch.as_tensor(correct, dtype=torch.float64, device=out.device),
    ])
    pending = torch.distributed.all_reduce(stats, async_op=True)
    return mean * (local * ranks.world_size / global_batch), stats, pending


def _evaluate(
    model: nn.Module,
    xy: tuple[Tensor, Tensor],
    summed_loss: LossFn,
    prefix: str,
    classification: bool,
    ranks: _Ranks,
) -> dict[str, float]:
    x, y = xy
    shard = slice(ranks.rank, None, ranks.world_size)
    sums = evaluate_sums(model, x[shard], y[shard], summed_loss, batch_size=EVAL_BATCH_SIZE,
                         classification=classification)
    return summarize(ranks.all_reduce(sums), prefix, classification=classification)
