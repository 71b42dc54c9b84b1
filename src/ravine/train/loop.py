"""The fixed wiring of one training run, and how a run is started or resumed.

:class:`Loop` holds what does not change while a run trains (its options, the device, the
communicator, the network as trained, the objective, the evaluation data, the run directory
and its log); :class:`~ravine.train.state.RunState` holds what does. :func:`start_run` builds
both from :func:`ravine.fit`'s arguments: the data source, the optimizer, the schedule and the
tracker, then either restores a checkpoint (``resume``) or seeds the generators and prepares
the run directory.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.optim import Optimizer

from ravine import models, optim, schedules
from ravine._checks import suggest
from ravine.data.sources import (
    LoaderOptions,
    TensorSource,
    as_tensors,
    eval_batches,
    to_device,
    training_source,
)
from ravine.train import distributed
from ravine.train.checkpoint import (
    AsyncCheckpointWriter,
    CheckpointError,
    load_checkpoint,
    rng_state,
)
from ravine.train.diagnostics_schedule import DiagnosticsSchedule
from ravine.train.distributed import Communicator
from ravine.train.early_stopping import EarlyStopping
from ravine.train.loggers import CsvLogger, JsonlLogger, Logger, ResumePoint, make_loggers
from ravine.train.metrics import Objective, loss_for, task_of
from ravine.train.options import FitOptions
from ravine.train.progress import TrainingProgress
from ravine.train.report import write_report
from ravine.train.rundir import RunFiles, RunLock, plain
from ravine.train.state import RunState

__all__ = ["Loop", "start_run", "build_optimizer", "Callback"]

_NO_AUTOCAST = contextlib.nullcontext()  # reusable: it holds nothing

Callback = Callable[[int, dict[str, Any]], None]


@dataclass
class Loop:
    """What stays fixed while a run trains (see the module docstring)."""

    options: FitOptions
    model: nn.Module
    net: nn.Module
    device: torch.device
    comm: Communicator
    objective: Objective
    val: Any
    test: Any
    run_dir: Path | None
    files: RunFiles | None
    loggers: list[Logger]
    writer: AsyncCheckpointWriter
    progress: TrainingProgress
    callbacks: Sequence[Callback]
    diag: DiagnosticsSchedule | None
    diag_batch: Any
    total_steps: int
    clip_in_closure: bool
    measure_norm: bool
    norm_from_optimizer: bool
    resume_key: dict[str, Any]
    batches_on_device: bool
    loader_options: LoaderOptions
    lock: RunLock | None = None
    started: float = field(default_factory=time.perf_counter)
    elapsed_before: float = 0.0

    @property
    def last_path(self) -> Path | None:
        return None if self.run_dir is None else RunFiles(self.run_dir).last

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.started

    def autocast(self) -> Any:
        """The mixed-precision context of forward passes (nothing at fp32)."""
        precision = self.options.precision
        if precision == "fp32":
            return _NO_AUTOCAST
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def log(self, record: dict[str, Any]) -> None:
        for logger in self.loggers:
            logger.log(record)

    def _of(self, kind: type) -> Any:
        return next((logger for logger in self.loggers if isinstance(logger, kind)), None)

    def batch(self, batch: Any) -> Any:
        """A batch from the source, on the training device."""
        if self.batches_on_device:
            return batch
        return to_device(batch, self.device, non_blocking=self.options.pin_memory)

    def done(self, state: RunState) -> bool:
        max_steps = self.options.max_steps
        return (state.tracker.should_stop or state.epoch >= self.options.epochs
                or (max_steps is not None and state.step >= max_steps))

    def evaluate(self, data: Any, prefix: str) -> dict[str, float]:
        """Metrics of the model (as it is) on ``data``, summed over ranks."""
        batches = eval_batches(
            data, name=prefix, batch_size=self.options.batch_size, rank=self.comm.rank,
            world_size=self.comm.world_size, device=self.device,
            loader_options=self.loader_options,
        )
        sums = self.objective.eval_sums(self.model, (self.batch(b) for b in batches))
        return self.objective.summarize(self.comm.all_reduce(sums.to(self.device)), prefix)

    def checkpoint(self, state: RunState) -> None:
        """Write ``checkpoints/last.pt`` (rank 0; the others hand it their generators)."""
        if self.run_dir is None:
            return
        rng_by_rank = self.comm.all_gather(rng_state()) if self.comm.parallel else None
        if self.files is None:
            return
        jsonl, csv = self._of(JsonlLogger), self._of(CsvLogger)
        offset = jsonl.offset()
        payload = state.state_dict(elapsed=self.elapsed(), metrics_offset=offset,
                                   options=self.resume_key, rng_by_rank=rng_by_rank)
        payload["csv_rows"] = None if csv is None else csv.rows
        # A CPU snapshot now, written by a background thread while training goes on; the
        # thread fsyncs the metrics log first, so the log holds every line the checkpoint
        # counts (the writer is closed before the loggers, so the file is still open then).
        # Packed: one flat tensor per dtype, which pickles and hashes several times faster
        # than the dozens of small tensors of a network and its optimizer (the background
        # thread holds the GIL while it pickles, so the training thread waits that out).
        self.writer.submit(payload, self.files.last, before=jsonl.syncer(), packed=True)

    def save_best(self, state: RunState, epoch: int) -> None:
        with optim.true_params(state.optimizer):
            state.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        if self.files is not None:
            self.writer.submit({"model": state.best_state, "epoch": epoch,
                                "monitor": state.tracker.monitor, "value": state.tracker.best},
                               self.files.best, owned=(state.best_state,))

    def close(self, *, report: bool = False) -> None:
        """Finish pending checkpoint writes, close the loggers, write ``report.md`` (when
        ``report``) and release the run directory's lock."""
        try:
            try:
                self.writer.close()
            finally:
                for logger in self.loggers:
                    logger.close()
            if report and self.files is not None:
                write_report(self.files.root)
        finally:
            if self.lock is not None:
                self.lock.release()


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
) -> Optimizer:
    """The run's optimizer: a ready instance (checked to cover the model) or one created by
    name over :func:`ravine.models.param_groups` (weight decay off for biases and norms)."""
    if isinstance(optimizer, Optimizer):
        if clip_norm is not None and getattr(optimizer, "clip_norm", None) is not None:
            raise ValueError(
                f"clip_norm is set both on fit (clip_norm={clip_norm}) and on the optimizer "
                f"(clip_norm={optimizer.clip_norm}); set it in one place"
            )
        _check_covers(optimizer, model)
        return optimizer
    spec = _spec(optimizer, "optimizer")
    hp = {k: v for k, v in spec.items() if k != "name"}
    if lr is not None:
        if "lr" in hp and hp["lr"] != lr:
            raise ValueError(f"lr given twice: lr={lr} and optimizer['lr']={hp['lr']}")
        hp["lr"] = lr
    groups = models.param_groups(model, weight_decay)
    return optim.create(spec["name"], groups, clip_norm=clip_norm, track_grad_norm=True, **hp)


def _check_covers(optimizer: Optimizer, model: nn.Module) -> None:
    trainable = [p for p in model.parameters() if p.requires_grad]
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    covered = sum(id(p) in held for p in trainable)
    if covered < len(trainable):
        raise ValueError(
            f"the optimizer holds {covered} of the model's {len(trainable)} trainable parameter "
            "tensors; build it from model.parameters(), or set requires_grad=False on the "
            "parameters that should stay fixed"
        )


def _check_eval_data(data: Any, name: str) -> None:
    tensors = as_tensors(data)
    if tensors is not None:
        x, y = tensors
        if x.shape[0] != y.shape[0] or x.shape[0] == 0:
            raise ValueError(
                f"{name} must hold the same number (>= 1) of inputs and targets, "
                f"got {x.shape[0]} and {y.shape[0]}"
            )
        return
    if not isinstance(data, (torch.utils.data.Dataset, torch.utils.data.DataLoader)):
        raise ValueError(
            f"{name} must be a pair (x, y) of tensors, a ravine.data.ArrayDataset, a torch "
            f"Dataset, IterableDataset or DataLoader, got {type(data).__name__}"
        )


def _build_schedule(options: FitOptions, opt: Optimizer, total_steps: int,
                    steps_per_epoch: int) -> Any:
    if options._scheduler is not None:
        return schedules.wrap_user_scheduler(options._scheduler, options.schedule_interval)
    if options.schedule_interval is not None:
        raise ValueError("schedule_interval applies to a torch LRScheduler given as schedule=; "
                         "ravine's named schedules step per optimizer step")
    spec = options.schedule.spec() if options.schedule is not None else {"name": "constant"}
    kw = {k: v for k, v in spec.items() if k != "name"}
    if spec["name"] == "linear-decay" and kw.get("decay_steps") is None:
        # A run of a given length decays over all of it, not over the lecture's 100 epochs.
        kw["decay_steps"] = total_steps
    return schedules.create(spec["name"], opt, total_steps=total_steps,
                            steps_per_epoch=steps_per_epoch, **kw)


def _check_monitor(tracker: EarlyStopping, available: list[str]) -> None:
    if tracker.monitor not in available:
        raise ValueError(
            f"early_stopping monitor {tracker.monitor!r} is not recorded by this run"
            f"{suggest(tracker.monitor, available)} (available: {', '.join(available)})"
        )


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


# Keys of a run's config that name places, not what is computed: a moved run still resumes.
_PLACES = ("run_dir", "code_dir")


def _run_description(config: dict[str, Any] | None) -> dict[str, Any]:
    """What ``config`` (the resolved run config the CLI writes as ``config.yaml``) adds to the
    training options: the data and the model, which a resumed run must share too."""
    if config is None:
        return {}
    return {k: v for k, v in config.items()
            if k not in FitOptions.model_fields and k not in _PLACES}


def _flat(options: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"optimizer": {"lr": 0.1}}`` -> ``{"optimizer.lr": 0.1}`` (values made YAML-plain)."""
    flat: dict[str, Any] = {}
    for key, value in options.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = plain(value)
    return flat


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def start_run(
    model: nn.Module,
    train: Any,
    val: Any,
    test: Any,
    options: FitOptions,
    *,
    run_dir: str | Path | None,
    resume: bool,
    overwrite: bool,
    quiet: bool | None,
    callbacks: Sequence[Callback],
    config: dict[str, Any] | None,
) -> tuple[Loop, RunState]:
    """Build the run's :class:`Loop` and :class:`RunState`, fresh or from ``last.pt``."""
    comm = distributed.join(options.device)
    device = torch.device(options.device)
    if comm.parallel and device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    if comm.parallel and options.sync_batchnorm:
        model = distributed.convert_sync_batchnorm(model, device)
    model.to(device)
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError("the model has no trainable parameters (every parameter has "
                         "requires_grad=False); unfreeze some before training")
    loader_options = LoaderOptions(num_workers=options.num_workers,
                                   pin_memory=options.pin_memory,
                                   prefetch_factor=options.prefetch)
    source = training_source(
        train, batch_size=options.batch_size, batching=options.batching, seed=options.seed,
        rank=comm.rank, world_size=comm.world_size, device=device,
        accumulate=options.accumulate, drop_last=options.drop_last,
        steps_per_epoch=options.steps_per_epoch, loader_options=loader_options,
    )
    for data, name in ((val, "val"), (test, "test")):
        if data is not None:
            _check_eval_data(data, name)
    classification = task_of(train, options.loss, options.compute_loss)
    # With compute_loss the batches need not be (x, y) pairs and no loss(output, target) runs.
    loss = "cross_entropy" if options.compute_loss is not None else loss_for(options.loss, train)
    if loss in ("mse", "bce") and classification == "multiclass":
        raise ValueError(f"loss {loss!r} needs floating-point targets, but train's targets are "
                         "integer class labels; use loss: cross_entropy, or give float targets")
    objective = Objective(loss, classification=classification,
                          compute_loss=options.compute_loss, metrics=options.metrics)
    diag = DiagnosticsSchedule.from_option(options.diagnostics)
    diag_batch = None
    if diag is not None:
        if options.compute_loss is not None:
            raise ValueError("diagnostics need (x, y) batches and a loss(output, target); "
                             "they do not run with compute_loss")
        diag_batch = to_device(source.examples(diag.examples, options.seed), device)

    total_steps = options.epochs * len(source)
    if options.max_steps is not None:
        total_steps = min(total_steps, options.max_steps)
    opt = build_optimizer(options._optimizer or options.optimizer.spec(), model, options.lr,
                          options.weight_decay, options.clip_norm)
    sched = _build_schedule(options, opt, total_steps, len(source))
    tracker = options.tracker(has_val=val is not None)
    available = ["train_loss"] + (["train_acc"] if classification else [])
    if val is not None:
        available += ["val_loss"] + (["val_acc"] if classification else [])
        available += [f"val_{name}" for name in objective.names]
    if options.compute_loss is None:
        _check_monitor(tracker, available)
    scaler = torch.amp.GradScaler(device.type) if options.precision == "fp16" else None
    state = RunState(model, opt, sched, source, tracker, scaler)

    examples = getattr(getattr(source, "sampler", None), "n", None)
    resume_key = {**options.resume_key(), **_run_description(config),
                  "train_examples": examples,
                  # Every rank's random streams are saved, so a resume needs as many processes.
                  "world_size": comm.world_size}
    files = RunFiles(Path(run_dir)) if run_dir is not None and comm.is_main else None
    # Taken before anything in run_dir is read, written or deleted; Loop.close releases it.
    lock = RunLock(files.root).acquire() if files is not None else None
    try:
        if resume:
            if run_dir is None:
                raise ValueError("resume=True needs run_dir (where the checkpoint lives)")
            # Every rank reads the checkpoint, even those that write nothing.
            last = RunFiles(Path(run_dir)).last
            ckpt = load_checkpoint(last)
            _check_same_options(ckpt, resume_key, last)
            state.load_state_dict(ckpt, last, comm)
        else:
            _seed_everything(comm.seed(options.seed))
            if files is not None:
                files.prepare(overwrite, config if config is not None else options.describe())
        resume_point = None
        if resume and files is not None:
            resume_point = ResumePoint(jsonl_bytes=state.metrics_offset,
                                       csv_rows=ckpt.get("csv_rows") or 0, step=state.step)
        loggers = make_loggers(list(options.loggers), None if files is None else files.root,
                               resume=resume_point) if comm.is_main else []
        # The optimizer reports the gradient norm itself unless fit must clip for a foreign one.
        foreign = options._optimizer is not None
        norm_from_optimizer = getattr(opt, "clip_norm", None) is not None or getattr(
            opt, "track_grad_norm", False)
        loop = Loop(
            options=options, model=model,
            # Wrapped only now, so DDP's initial broadcast from rank 0 sends restored weights.
            net=comm.wrap(model, device), device=device, comm=comm, objective=objective,
            val=val, test=test, run_dir=None if run_dir is None else Path(run_dir), files=files,
            loggers=loggers, lock=lock,
            writer=AsyncCheckpointWriter(synchronous=not options.async_checkpoints),
            progress=TrainingProgress(total_steps, options.epochs,
                                      quiet=quiet if comm.is_main else True),
            callbacks=callbacks, diag=diag, diag_batch=diag_batch, total_steps=total_steps,
            clip_in_closure=options.clip_norm is not None and foreign,
            measure_norm=not norm_from_optimizer,
            norm_from_optimizer=norm_from_optimizer, resume_key=resume_key,
            batches_on_device=isinstance(source, TensorSource), loader_options=loader_options,
            elapsed_before=state.elapsed_before,
        )
        loop.net.train()
        return loop, state
    except BaseException:
        if lock is not None:
            lock.release()
        raise
