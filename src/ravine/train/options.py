"""The one schema of training options: :class:`FitOptions` (pydantic v2, unknown keys rejected).

:func:`ravine.fit` validates its keyword arguments through :class:`FitOptions`;
:class:`ravine.config.RunConfig` (the YAML file of ``ravine train``) *is* a FitOptions plus the
``data``, ``model`` and ``run_dir`` keys; ``ravine compare`` and ``ravine tune`` build their runs
from it; and ``--resume`` compares two FitOptions dumps (:meth:`FitOptions.resume_key`, plus
the run config's ``data`` and ``model`` sections when ``ravine train`` gives them). Every
option is therefore declared, documented and validated here and nowhere else.

A bad value raises :class:`ravine.ConfigError` (a ``ValueError``) with one line naming the key
path and, for an unknown key or name, the closest valid one.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    ValidationError,
    field_serializer,
    field_validator,
    model_validator,
)
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

from ravine import optim, schedules
from ravine._checks import ConfigError, check_options, format_validation_error, suggest
from ravine.train.diagnostics_schedule import DiagnosticsSchedule
from ravine.train.early_stopping import EarlyStopping

__all__ = [
    "FitOptions",
    "OptimizerConfig",
    "ScheduleConfig",
    "EarlyStoppingConfig",
    "Section",
    "RUN_CONTROL",
    "import_object",
    "expand_shorthand",
]

# fit() keywords that steer one call rather than define the run (not part of the schema).
RUN_CONTROL = ("run_dir", "resume", "overwrite", "quiet", "callbacks", "config")
# Options that may differ between a run and its resumption (they do not change the numbers).
RESUMABLE_CHANGES = ("checkpoint_every", "checkpoint_every_steps", "log_every", "device",
                     "diagnostics", "num_workers", "pin_memory", "prefetch", "loggers",
                     "async_checkpoints")


class Section(BaseModel):
    """A block of options; unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    def given(self, exclude: tuple[str, ...] = ()) -> dict[str, Any]:
        """The keys the user set to a value (the others keep the library defaults)."""
        return {k: getattr(self, k) for k in self.model_fields_set
                if k not in exclude and getattr(self, k) is not None}


class OptimizerConfig(Section):
    """The optimizer (:func:`ravine.optim.create`) and its hyperparameters."""

    name: str = "adam"
    lr: float | None = Field(None, gt=0)
    momentum: float | None = Field(None, ge=0, lt=1)
    rho: float | None = Field(None, ge=0, lt=1)
    eps: float | None = Field(None, gt=0)
    betas: tuple[float, float] | None = None
    compile: bool | str | None = None
    fused: bool | None = None
    flat: bool | None = None

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        if name not in optim.names():
            raise ValueError(f"unknown optimizer {name!r}{suggest(name, optim.names())} "
                             f"(valid: {', '.join(optim.names())})")
        return name

    @field_validator("betas")
    @classmethod
    def _betas(cls, betas: tuple[float, float] | None) -> tuple[float, float] | None:
        if betas is not None and not all(0 <= b < 1 for b in betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {list(betas)}")
        return betas

    @model_validator(mode="after")
    def _options_fit_optimizer(self) -> OptimizerConfig:
        # weight_decay and clip_norm are run-level keys; the loop passes them on.
        valid = [k for k in optim.hyperparameters(self.name)
                 if k not in ("weight_decay", "clip_norm", "track_grad_norm")]
        check_options(self.given(exclude=("name",)), valid, repr(self.name))
        return self

    def spec(self) -> dict[str, Any]:
        return {"name": self.name, **self.given(exclude=("name",))}


class ScheduleConfig(Section):
    """The learning-rate schedule (:func:`ravine.schedules.create`), stepped every step."""

    name: str = "constant"
    warmup_steps: int = Field(0, ge=0)
    decay_steps: int | None = Field(None, ge=1)
    final_lr: float | None = Field(None, ge=0)
    step_size: int | None = Field(None, ge=1)
    gamma: float | None = Field(None, gt=0, le=1)
    T_max: int | None = Field(None, ge=1)  # noqa: N815 (torch's name)
    eta_min: float | None = Field(None, ge=0)
    factor: float | None = Field(None, gt=0, lt=1)
    patience: int | None = Field(None, ge=0)
    threshold: float | None = Field(None, ge=0)
    mode: Literal["min", "max"] | None = None
    min_lr: float | None = Field(None, ge=0)
    cooldown: int | None = Field(None, ge=0)

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        if name not in schedules.names():
            raise ValueError(f"unknown schedule {name!r}{suggest(name, schedules.names())} "
                             f"(valid: {', '.join(schedules.names())})")
        return name

    @model_validator(mode="after")
    def _options_fit_schedule(self) -> ScheduleConfig:
        check_options(self.given(exclude=("name", "warmup_steps")),
                      schedules.option_names(self.name), f"schedule {self.name!r}")
        return self

    def spec(self) -> dict[str, Any]:
        return {"name": self.name, **self.given(exclude=("name",))}


class EarlyStoppingConfig(Section):
    """Early stopping (:class:`ravine.train.EarlyStopping`)."""

    monitor: str | None = None
    mode: Literal["auto", "min", "max"] = "auto"
    patience: int | None = Field(5, ge=0)
    min_delta: float = Field(0.0, ge=0)
    restore_best: bool = True
    start_from_epoch: int = Field(0, ge=0)

    def tracker(self, default_monitor: str) -> EarlyStopping:
        return EarlyStopping(**{**self.model_dump(), "monitor": self.monitor or default_monitor})


def import_object(path: str, key: str) -> Any:
    """The object named ``"package.module:attribute"`` (the module imported as usual).

    Raises:
        ConfigError: naming ``key`` and the module or attribute that could not be found.
    """
    module_name, sep, attribute = path.partition(":")
    if not sep or not module_name or not attribute:
        raise ConfigError(f"{key}: expected 'module:attribute', got {path!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"{key}: cannot import module {module_name!r} ({exc})") from None
    target: Any = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise ConfigError(f"{key}: module {module_name!r} has no attribute {attribute!r}")
        target = getattr(target, part)
    return target


def _plain_name(value: Any) -> Any:
    """A JSON-plain stand-in for a callable or object: ``"module:qualname"`` (what
    :func:`import_object` reads back, for functions and classes defined at module level)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", exclude_none=True)
    if isinstance(value, (list, tuple)):
        return [_plain_name(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain_name(v) for k, v in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _plain_name(dataclasses.asdict(value))
    named = value if hasattr(value, "__qualname__") else type(value)
    return f"{named.__module__}:{named.__qualname__}"


def expand_shorthand(raw: Any) -> Any:
    """The short forms of the options, made long: ``optimizer: adam`` means ``{name: adam}``,
    ``early_stopping: true`` the defaults, ``"module:function"`` the imported function."""
    if isinstance(raw, dict):
        raw = dict(raw)
        for section in ("optimizer", "schedule"):
            if isinstance(raw.get(section), str):
                raw[section] = {"name": raw[section]}
        if raw.get("early_stopping") is True:
            raw["early_stopping"] = {}
        elif raw.get("early_stopping") is False:
            raw["early_stopping"] = None
        if raw.get("diagnostics") is True:
            raw["diagnostics"] = {}
        elif raw.get("diagnostics") is False:
            raw["diagnostics"] = None
        if isinstance(raw.get("compute_loss"), str):
            raw["compute_loss"] = import_object(raw["compute_loss"], "compute_loss")
        if isinstance(raw.get("loss"), str) and ":" in raw["loss"]:
            raw["loss"] = import_object(raw["loss"], "loss")
        metrics = raw.get("metrics")
        if isinstance(metrics, (list, tuple)):
            raw["metrics"] = {getattr(f, "__name__", f"metric{i}"): f
                              for i, f in enumerate(metrics)}
        if isinstance(raw.get("metrics"), dict):
            raw["metrics"] = {k: import_object(v, f"metrics.{k}") if isinstance(v, str)
                              else v for k, v in raw["metrics"].items()}
        if isinstance(raw.get("loggers"), str):
            raw["loggers"] = [raw["loggers"]]
    return raw


LOSSES = ("cross_entropy", "mse", "bce")


class FitOptions(Section):
    """Every training option of :func:`ravine.fit`, ``ravine train``, compare and tune.

    Data (see :mod:`ravine.data.sources` for every accepted form of ``train`` / ``val``):
        batch_size: the minibatch size m (in a data-parallel run the global one).
        batching: ``"epoch"`` (shuffle, then contiguous blocks) or ``"random"`` (a fresh sample
            each step).
        drop_last: drop each epoch's last, partial batch (a tiny tail batch is a noisy step,
            and a batch-norm hazard).
        steps_per_epoch: steps that make an epoch for a stream (an ``IterableDataset``;
            required there) or for ``batching="random"``.
        accumulate: take each minibatch of m as ``accumulate`` micro-batches whose gradients
            are summed (weighted by size) before the step: the same step as on the whole m,
            for an m larger than memory.
        num_workers, pin_memory, prefetch: for the DataLoader ravine builds over a Dataset
            (torch's ``num_workers``, ``pin_memory``, ``prefetch_factor``).
    Objective:
        loss: ``"cross_entropy"``, ``"mse"``, ``"bce"`` (binary, on logits) or a callable
            ``loss(output, target)`` returning the batch mean; ``None`` (the default) picks
            ``"cross_entropy"`` for integer targets and ``"mse"`` for floating-point ones.
            Integer targets (and ``bce``) mean classification: accuracy is reported.
        compute_loss: ``fn(model, batch) -> mean loss`` (or ``(loss, {name: value})`` with
            per-batch metric values to average) for batches that are not ``(x, y)`` pairs:
            dicts, several inputs. Training and evaluation both use it. In YAML:
            ``"package.module:function"``.
        metrics: extra evaluation metrics, ``{name: fn(output, target) -> value}`` (or a list
            of functions, named by ``__name__``), averaged over the validation / test set.
    Optimization:
        optimizer: a registry name (:func:`ravine.optim.names`), a dict ``{"name": ..., **hp}``
            or a ready ``torch.optim.Optimizer`` over the model's trainable parameters (then
            set ``lr`` and ``weight_decay`` on it).
        lr: learning rate (default: the optimizer's own).
        schedule: a name (:func:`ravine.schedules.names`), a dict ``{"name": ..., **options}``
            or a ready ``torch.optim.lr_scheduler.LRScheduler`` (stepped per step, or per epoch
            with ``schedule_interval="epoch"``; a ``ReduceLROnPlateau`` is stepped per epoch
            with the ``early_stopping`` monitor's value). ``total_steps = epochs × steps per
            epoch`` (or ``max_steps``), so a linear decay decays over the whole run.
        schedule_interval: ``"step"`` or ``"epoch"``: how often a user's scheduler steps
            (default: per epoch for a ``ReduceLROnPlateau``, else per step). The named
            ``"reduce-on-plateau"`` schedule steps per epoch with the monitored value.
        epochs: passes over the data (or blocks of ``steps_per_epoch`` steps).
        max_steps: stop after this many optimizer steps (mid-epoch if need be).
        clip_norm: re-normalize the gradient to this global norm when it is larger.
        weight_decay: L2 coefficient λ; biases and normalization parameters are excluded.
        precision: ``"fp32"``; ``"bf16"`` (autocast) or ``"fp16"`` (autocast with a
            ``torch.amp.GradScaler``).
    Evaluation and stopping:
        val_every: evaluate ``val`` after every ``val_every``-th epoch (and the last).
        val_every_steps: also evaluate every this many steps (``"val"`` records in the log).
        early_stopping: ``None`` (run all epochs; the best epoch is still tracked), ``True``
            (defaults) or a mapping (``monitor``, ``mode``, ``patience``, ``min_delta``,
            ``restore_best``, ``start_from_epoch``; :class:`ravine.train.EarlyStopping`).
            ``monitor`` defaults to ``"val_loss"`` (``"train_loss"`` without ``val``).
        diagnostics: curvature and gradient-noise measurements during training
            (:mod:`ravine.train.diagnostics_schedule`), e.g.
            ``{"every": 5, "what": ["lambda_max"]}``.
        on_nonfinite: ``"stop"`` (raise :class:`NonFiniteLossError`) or ``"skip"`` (drop the
            step and go on).
    Run:
        seed: seeds Python's, NumPy's and torch's global generators (dropout) and the
            batching.
        device: where to train, e.g. ``"cpu"``, ``"cuda"``.
        sync_batchnorm: data-parallel runs on CUDA: batch norm over the global batch.
        checkpoint_every: write ``last.pt`` every this many epochs (and at the end); ``None``
            only at the end. checkpoint_every_steps: also every this many steps.
        async_checkpoints: write checkpoints from a CPU snapshot in a background thread.
        log_every: write a step record every this many steps.
        loggers: more writers besides ``metrics.jsonl``: ``"csv"``, ``"tensorboard"`` or
            objects with ``log(record)``, ``flush()`` and ``close()``.
    """

    optimizer: OptimizerConfig = OptimizerConfig()
    lr: float | None = Field(None, gt=0)
    schedule: ScheduleConfig | None = ScheduleConfig()
    schedule_interval: Literal["step", "epoch"] | None = None
    epochs: int = Field(10, ge=1)
    max_steps: int | None = Field(None, ge=1)
    batch_size: int = Field(100, ge=1)
    batching: Literal["epoch", "random"] = "epoch"
    drop_last: StrictBool = False
    steps_per_epoch: int | None = Field(None, ge=1)
    accumulate: int = Field(1, ge=1)
    num_workers: int = Field(0, ge=0)
    pin_memory: StrictBool = False
    prefetch: int | None = Field(None, ge=1)
    loss: Literal["cross_entropy", "mse", "bce"] | Callable[..., Any] | None = None
    compute_loss: Callable[..., Any] | None = None
    metrics: dict[str, Callable[..., Any]] | None = None
    clip_norm: float | None = Field(None, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    val_every: int = Field(1, ge=1)
    val_every_steps: int | None = Field(None, ge=1)
    early_stopping: EarlyStoppingConfig | None = None
    diagnostics: dict[str, Any] | DiagnosticsSchedule | None = None
    on_nonfinite: Literal["stop", "skip"] = "stop"
    seed: int = Field(0, ge=0)
    device: str = "cpu"
    sync_batchnorm: StrictBool = False
    checkpoint_every: int | None = Field(1, ge=1)
    checkpoint_every_steps: int | None = Field(None, ge=1)
    async_checkpoints: StrictBool = True
    log_every: int = Field(1, ge=1)
    loggers: list[Any] = Field(default_factory=list)

    # Objects given instead of names; kept out of the dumps.
    _optimizer: Optimizer | None = None
    _scheduler: LRScheduler | ReduceLROnPlateau | None = None
    _tracker: EarlyStopping | None = None

    @model_validator(mode="before")
    @classmethod
    def _expand_shorthand(cls, raw: Any) -> Any:
        return expand_shorthand(raw)

    @field_serializer("loss", "compute_loss", "metrics", "loggers", "diagnostics")
    def _plain(self, value: Any) -> Any:
        return _plain_name(value)

    @field_validator("diagnostics")
    @classmethod
    def _known_diagnostics(cls, value: Any) -> Any:
        DiagnosticsSchedule.from_option(value)
        return value

    @field_validator("device")
    @classmethod
    def _known_device(cls, device: str) -> str:
        import torch

        try:
            kind = torch.device(device).type
        except RuntimeError:
            raise ValueError(
                f"not a torch device: {device!r} (e.g. 'cpu', 'cuda', 'cuda:1')"
            ) from None
        if kind not in ("cpu", "cuda", "mps", "xpu"):
            raise ValueError(f"cannot train on device {device!r}: use cpu, cuda[:N], mps or xpu")
        if kind == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {device!r}: this torch ({torch.__version__}) sees no CUDA "
                             "GPU; use device: cpu")
        if kind == "mps" and not torch.backends.mps.is_available():
            raise ValueError(f"device {device!r}: MPS is not available here; use device: cpu")
        return device

    @model_validator(mode="after")
    def _consistent(self) -> FitOptions:
        if self.batch_size % self.accumulate:
            raise ValueError(f"batch_size={self.batch_size} must be divisible by "
                             f"accumulate={self.accumulate} (the micro-batches are equal)")
        return self

    @classmethod
    def from_kwargs(cls, source: str = "fit", **kw: Any) -> FitOptions:
        """Validate fit's keyword arguments; objects (an optimizer, a scheduler, an
        EarlyStopping) are kept beside the schema.

        Raises:
            ConfigError: one line naming the first offending option.
        """
        optimizer, scheduler, tracker = kw.get("optimizer"), kw.get("schedule"), kw.get(
            "early_stopping")
        if isinstance(optimizer, Optimizer):
            if kw.get("lr") is not None or kw.get("weight_decay"):
                raise ConfigError(
                    f"{source}: lr and weight_decay apply only when fit creates the optimizer; "
                    "set them on the optimizer instance instead"
                )
            kw["optimizer"] = OptimizerConfig()
        if isinstance(scheduler, (LRScheduler, ReduceLROnPlateau)):
            kw["schedule"] = None
        if isinstance(tracker, EarlyStopping):
            kw["early_stopping"] = None
        options = cls.validate(kw, source)
        options._optimizer = optimizer if isinstance(optimizer, Optimizer) else None
        options._scheduler = scheduler if isinstance(
            scheduler, (LRScheduler, ReduceLROnPlateau)) else None
        options._tracker = tracker if isinstance(tracker, EarlyStopping) else None
        return options

    @classmethod
    def validate(cls, raw: Any, source: str = "config") -> Any:
        """``cls.model_validate(raw)`` with one-line :class:`ConfigError` messages."""
        if not isinstance(raw, dict):
            raise ConfigError(
                f"{source}: expected a mapping of keys to values, got {type(raw).__name__}"
            )
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc, cls, source)) from None

    def fit_kwargs(self) -> dict[str, Any]:
        """These options as keyword arguments of :func:`ravine.fit`."""
        kw = {name: getattr(self, name) for name in FitOptions.model_fields}
        if self._optimizer is not None:
            kw["optimizer"] = self._optimizer
        if self._scheduler is not None:
            kw["schedule"] = self._scheduler
        if self._tracker is not None:
            kw["early_stopping"] = self._tracker
        return kw

    def describe(self) -> dict[str, Any]:
        """A JSON-plain dump (objects by name), for ``config.yaml`` and checkpoints."""
        dump: dict[str, Any] = {}
        for name in FitOptions.model_fields:
            value = getattr(self, name)
            if isinstance(value, BaseModel):
                value = value.model_dump(mode="json", exclude_none=True)
            dump[name] = _plain_name(value)
        # `lr=` is shorthand for the optimizer's lr: recorded where it acts.
        lr = dump.pop("lr")
        if lr is not None:
            dump["optimizer"]["lr"] = lr
        if self._optimizer is not None:
            opt = self._optimizer
            dump["optimizer"] = {"name": type(opt).__name__, "defaults": {
                k: v for k, v in opt.defaults.items()
                if isinstance(v, (int, float, str)) or (isinstance(v, tuple) and all(
                    isinstance(x, (int, float)) for x in v))}}
            dump["optimizer"] = _plain_name(dump["optimizer"])
        if self._scheduler is not None:
            dump["schedule"] = {"name": type(self._scheduler).__name__}
        if self._tracker is not None:
            t = self._tracker
            dump["early_stopping"] = {"monitor": t.monitor, "mode": t.mode,
                                      "patience": t.patience, "min_delta": t.min_delta,
                                      "restore_best": t.restore_best,
                                      "start_from_epoch": t.start_from_epoch}
        return dump

    def resume_key(self) -> dict[str, Any]:
        """What must be equal for a run to resume another: :meth:`describe` without the
        options that do not change the numbers (:data:`RESUMABLE_CHANGES`)."""
        return {k: v for k, v in self.describe().items() if k not in RESUMABLE_CHANGES}

    def tracker(self, *, has_val: bool) -> EarlyStopping:
        """The early-stopping tracker (a fresh one; only tracking the best epoch when off)."""
        default_monitor = "val_loss" if has_val else "train_loss"
        if self._tracker is not None:
            return self._tracker
        if self.early_stopping is None:
            return EarlyStopping(default_monitor, patience=None, restore_best=False)
        return self.early_stopping.tracker(default_monitor)
