"""Run configuration: the YAML file read by ``ravine train`` (pydantic v2, unknown keys rejected).

Every key below is optional except ``data`` and ``model``; the values shown are the defaults
(``null`` means "not set": the library's own default applies). Top-level keys are the options of
:func:`ravine.fit` with the same names and meanings.

.. code-block:: yaml

    data:                      # or just `data: mnist1d`
      name: mnist1d            # mnist1d | digits | quadratic | path/to/file.csv | path/to/file.npz
      val_fraction: 0.1        # validation share of the training examples, in [0, 1)
      seed: null               # seed of the split (null: the run's seed)
      standardize: null        # source options of ravine.data.load: standardize, as_images,
                               # test_fraction, label, task, kappa, dim, n, noise
    model:                     # input and output sizes come from the data
      kind: cnn1d              # mlp | cnn1d | cnn2d
      norm: batch              # none | batch | layer | weight
      dropout: null            # also: hidden (mlp, required), channels, kernel_size,
                               # activation, image_size
    optimizer:                 # or just `optimizer: adam`
      name: adam               # sgd | momentum | nesterov | adagrad | rmsprop | rmsprop-nesterov |
                               # adam | adamw
      lr: null                 # also, where the optimizer has them: momentum, rho, eps, betas,
                               # compile
    schedule:                  # or just `schedule: constant`
      name: constant           # constant | linear-decay | inverse-time | step | cosine
      warmup_steps: 0          # options: decay_steps, final_lr (linear-decay; decay_steps
                               # defaults to the whole run), decay_steps (inverse-time),
                               # step_size, gamma (step), T_max, eta_min (cosine)
    epochs: 10
    batch_size: 100
    batching: epoch            # epoch | random
    loss: cross_entropy        # cross_entropy | mse
    clip_norm: null
    weight_decay: 0.0          # biases and normalization parameters are never decayed
    early_stopping: null       # or a mapping:
    #  monitor: val_loss       # train_loss | train_acc | val_loss | val_acc
    #  mode: auto              # auto | min | max
    #  patience: 5
    #  min_delta: 0.0
    #  restore_best: true
    #  start_from_epoch: 0
    seed: 0
    run_dir: null              # null: runs/<name of the config file>
    checkpoint_every: 1        # epochs
    checkpoint_every_steps: null
    log_every: 1               # steps
    device: cpu
    sync_batchnorm: false      # data-parallel runs on CUDA: batch norm over the global
                               # batch (SyncBatchNorm); else each process's own share
    on_nonfinite: stop         # stop | skip

Relative paths (data files, ``run_dir``) are relative to the current directory.

Overrides use dotted keys with YAML values, ``--set optimizer.lr=0.1 --set early_stopping=null``.
Any problem — unreadable YAML, an unknown key, a bad value — raises :class:`ConfigError` with a
single line that names the key path and, for unknown keys or names, the closest valid one.
"""

from __future__ import annotations

import difflib
import inspect
import os
import types
import typing
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from torch import nn

__all__ = [
    "ConfigError",
    "DataConfig",
    "ModelConfig",
    "OptimizerConfig",
    "ScheduleConfig",
    "EarlyStoppingConfig",
    "RunConfig",
    "load_config",
    "parse_overrides",
]


class ConfigError(ValueError):
    """An invalid run configuration; the message is one line naming the offending key."""


def _suggest(word: str, choices: Iterable[str], prefix: str = "") -> str:
    close = difflib.get_close_matches(str(word), list(choices), n=1)
    return f"; did you mean {prefix + close[0]!r}?" if close else ""


class _OptionError(ValueError):
    """A key that the section's model has but its chosen kind / name does not take."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


def _check_options(given: Iterable[str], valid: Sequence[str], owner: str) -> None:
    for key in given:
        if key not in valid:
            raise _OptionError(
                key,
                f"not an option of {owner}{_suggest(key, valid)} "
                f"(its options: {', '.join(valid) or 'none'})",
            )


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")

    def options(self, exclude: Iterable[str] = ()) -> dict[str, Any]:
        """The keys the user set to a value (the others keep the library defaults)."""
        skip = set(exclude)
        return {k: getattr(self, k) for k in self.model_fields_set
                if k not in skip and getattr(self, k) is not None}


# Sections that may be written as a bare string: `optimizer: adam` means `{name: adam}`.
SHORTHAND = {"data": "name", "model": "kind", "optimizer": "name", "schedule": "name"}


class DataConfig(_Section):
    """Where the examples come from (:func:`ravine.data.load`)."""

    name: str
    val_fraction: float = Field(0.1, ge=0, lt=1)
    seed: int | None = Field(None, ge=0)
    standardize: bool | None = None
    as_images: bool | None = None
    test_fraction: float | None = Field(None, gt=0, lt=1)
    label: str | None = None
    task: Literal["classification", "regression"] | None = None
    kappa: float | None = Field(None, ge=1)
    dim: int | None = Field(None, ge=1)
    n: int | None = Field(None, ge=1)
    noise: float | None = Field(None, ge=0)

    def load(self, run_seed: int) -> Any:
        """The :class:`ravine.data.Splits` (split with ``seed``, else the run's seed)."""
        from ravine import data

        seed = run_seed if self.seed is None else self.seed
        try:
            return data.load(self.name, seed=seed, val_fraction=self.val_fraction,
                             **self.options(exclude=("name", "val_fraction", "seed")))
        except ValueError as exc:
            raise ConfigError(f"data: {exc}") from None


def _builder(kind: str) -> Any:
    from ravine import models

    return {"mlp": models.mlp, "cnn1d": models.cnn1d, "cnn2d": models.cnn2d}[kind]


# Sizes the model takes from the data rather than from the config.
_FROM_DATA = ("in_features", "out_features", "in_length", "in_channels")


class ModelConfig(_Section):
    """The network (:func:`ravine.models.build`); sizes are inferred from the data."""

    kind: Literal["mlp", "cnn1d", "cnn2d"]
    hidden: list[int] | int | None = None
    channels: list[int] | None = None
    norm: Literal["none", "batch", "layer", "weight"] | None = None
    dropout: float | None = Field(None, ge=0, lt=1)
    activation: Literal["relu", "tanh", "gelu"] | None = None
    kernel_size: int | None = Field(None, ge=1)
    image_size: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _options_fit_kind(self) -> ModelConfig:
        valid = [p for p in inspect.signature(_builder(self.kind)).parameters if
                 p not in _FROM_DATA]
        _check_options(self.options(exclude=("kind",)), valid, f"model kind {self.kind!r}")
        if self.kind == "mlp" and self.hidden is None:
            raise ValueError("model kind 'mlp' needs 'hidden' (the hidden layer widths)")
        return self

    def build(self, splits: Any) -> nn.Module:
        """Build the model for ``splits`` (a :class:`ravine.data.Splits`).

        Raises:
            ConfigError: the model does not suit the data (e.g. a 1-D CNN on images).
        """
        from ravine import models

        shape = splits.num_features if isinstance(splits.num_features, tuple) else (
            splits.num_features,)
        y = splits.train.y
        out = splits.num_classes if splits.num_classes else (y.shape[1] if y.dim() > 1 else 1)
        spec: dict[str, Any] = {"kind": self.kind, **self.options(exclude=("kind",))}
        if self.kind == "mlp":
            spec.update(in_features=splits.num_features, out_features=out)
        elif self.kind == "cnn1d":
            if len(shape) != 1:
                raise ConfigError(
                    f"model: kind 'cnn1d' needs 1-D signals, the data has shape {shape}"
                )
            spec.update(in_length=shape[0], out_features=out)
        else:
            if len(shape) != 3:
                raise ConfigError(
                    f"model: kind 'cnn2d' needs images (C, S, S), the data has shape {shape}; "
                    "for digits set data.as_images: true"
                )
            spec.update(in_channels=shape[0], image_size=shape[1], out_features=out)
        return models.build(spec)


class OptimizerConfig(_Section):
    """The optimizer (:func:`ravine.optim.create`) and its hyperparameters."""

    name: str = "adam"
    lr: float | None = Field(None, gt=0)
    momentum: float | None = Field(None, ge=0, lt=1)
    rho: float | None = Field(None, ge=0, lt=1)
    eps: float | None = Field(None, gt=0)
    betas: tuple[float, float] | None = None
    compile: bool | str | None = None

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        from ravine import optim

        if name not in optim.names():
            raise ValueError(f"unknown optimizer {name!r}{_suggest(name, optim.names())} "
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
        from ravine import optim

        # weight_decay and clip_norm are run-level keys; the trainer passes them on.
        valid = [k for k in optim.hyperparameters(self.name)
                 if k not in ("weight_decay", "clip_norm", "track_grad_norm")]
        _check_options(self.options(exclude=("name",)), valid, repr(self.name))
        return self


# Options each schedule takes besides warmup_steps (ravine.schedules.create documents them).
SCHEDULE_OPTIONS: dict[str, tuple[str, ...]] = {
    "constant": (),
    "linear-decay": ("decay_steps", "final_lr"),
    "inverse-time": ("decay_steps",),
    "step": ("step_size", "gamma"),
    "cosine": ("T_max", "eta_min"),
}


class ScheduleConfig(_Section):
    """The learning-rate schedule (:func:`ravine.schedules.create`), stepped every step."""

    name: str = "constant"
    warmup_steps: int = Field(0, ge=0)
    decay_steps: int | None = Field(None, ge=1)
    final_lr: float | None = Field(None, ge=0)
    step_size: int | None = Field(None, ge=1)
    gamma: float | None = Field(None, gt=0, le=1)
    T_max: int | None = Field(None, ge=1)  # noqa: N815 (torch's name)
    eta_min: float | None = Field(None, ge=0)

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        from ravine import schedules

        if name not in schedules.names():
            raise ValueError(f"unknown schedule {name!r}{_suggest(name, schedules.names())} "
                             f"(valid: {', '.join(schedules.names())})")
        return name

    @model_validator(mode="after")
    def _options_fit_schedule(self) -> ScheduleConfig:
        valid = SCHEDULE_OPTIONS.get(self.name)
        if valid is not None:
            _check_options(self.options(exclude=("name", "warmup_steps")), valid,
                           f"schedule {self.name!r}")
        return self


class EarlyStoppingConfig(_Section):
    """Early stopping (:class:`ravine.train.EarlyStopping`)."""

    monitor: Literal["train_loss", "train_acc", "val_loss", "val_acc"] | None = None
    mode: Literal["auto", "min", "max"] = "auto"
    patience: int = Field(5, ge=0)
    min_delta: float = Field(0.0, ge=0)
    restore_best: bool = True
    start_from_epoch: int = Field(0, ge=0)


class RunConfig(_Section):
    """One training run: data, model and every :func:`ravine.fit` option."""

    data: DataConfig
    model: ModelConfig
    optimizer: OptimizerConfig = OptimizerConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(100, ge=1)
    batching: Literal["epoch", "random"] = "epoch"
    loss: Literal["cross_entropy", "mse"] = "cross_entropy"
    clip_norm: float | None = Field(None, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    early_stopping: EarlyStoppingConfig | None = None
    seed: int = Field(0, ge=0)
    run_dir: str | None = None
    checkpoint_every: int | None = Field(1, ge=1)
    checkpoint_every_steps: int | None = Field(None, ge=1)
    log_every: int = Field(1, ge=1)
    device: str = "cpu"
    sync_batchnorm: bool = False
    on_nonfinite: Literal["stop", "skip"] = "stop"
    diagnostics: dict[str, Any] | None = None

    @field_validator("diagnostics")
    @classmethod
    def _known_diagnostics(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        from ravine.train.monitoring import DiagnosticsSchedule

        DiagnosticsSchedule.from_option(value)
        return value

    @field_validator("device")
    @classmethod
    def _known_device(cls, device: str) -> str:
        import torch

        try:
            torch.device(device)
        except RuntimeError:
            raise ValueError(
                f"not a torch device: {device!r} (e.g. 'cpu', 'cuda', 'cuda:1')"
            ) from None
        return device

    @model_validator(mode="before")
    @classmethod
    def _expand_shorthand(cls, raw: Any) -> Any:
        if isinstance(raw, dict):
            raw = dict(raw)
            for section, key in SHORTHAND.items():
                if isinstance(raw.get(section), str):
                    raw[section] = {key: raw[section]}
        return raw

    def fit_options(self) -> dict[str, Any]:
        """Keyword arguments of :func:`ravine.fit` (everything but data and model)."""
        early = None
        if self.early_stopping is not None:
            early = self.early_stopping.model_dump(exclude_none=True)
        return {
            "optimizer": {"name": self.optimizer.name, **self.optimizer.options(exclude=("name",))},
            "schedule": {"name": self.schedule.name, **self.schedule.options(exclude=("name",))},
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "batching": self.batching,
            "loss": self.loss,
            "clip_norm": self.clip_norm,
            "weight_decay": self.weight_decay,
            "early_stopping": early,
            "seed": self.seed,
            "run_dir": self.run_dir,
            "checkpoint_every": self.checkpoint_every,
            "checkpoint_every_steps": self.checkpoint_every_steps,
            "log_every": self.log_every,
            "device": self.device,
            "sync_batchnorm": self.sync_batchnorm,
            "on_nonfinite": self.on_nonfinite,
            "diagnostics": self.diagnostics,
        }


def parse_overrides(overrides: Iterable[str]) -> list[tuple[list[str], Any]]:
    """``["optimizer.lr=0.1"]`` -> ``[(["optimizer", "lr"], 0.1)]``; values are YAML scalars."""
    parsed = []
    for item in overrides:
        key, sep, text = item.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            raise ConfigError(f"--set expects KEY=VALUE with a dotted KEY, got {item!r}")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            raise ConfigError(f"--set {key}: cannot parse {text!r} as a YAML value") from None
        parsed.append((parts, value))
    return parsed


def _apply_override(raw: dict[str, Any], parts: list[str], value: Any) -> None:
    node = raw
    for depth, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif isinstance(child, str) and depth == 0 and part in SHORTHAND:
            child = node[part] = {SHORTHAND[part]: child}
        elif not isinstance(child, dict):
            path = ".".join(parts[: depth + 1])
            raise ConfigError(f"--set {'.'.join(parts)}: {path} is {child!r}, not a mapping")
        node = child
    node[parts[-1]] = value


def _section_class(loc: Sequence[Any]) -> type[BaseModel] | None:
    """The config model class found at ``loc`` (a path of field names), if any."""
    cls: type[BaseModel] = RunConfig
    for part in loc:
        field = cls.model_fields.get(str(part))
        if field is None:
            return None
        found = [t for t in _flatten(field.annotation) if isinstance(t, type)
                 and issubclass(t, BaseModel)]
        if not found:
            return None
        cls = found[0]
    return cls


def _flatten(annotation: Any) -> list[Any]:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [t for arg in typing.get_args(annotation) for t in _flatten(arg)]
    return [annotation]


def _literal_choices(loc: Sequence[Any]) -> list[str]:
    cls = _section_class(loc[:-1])
    field = None if cls is None else cls.model_fields.get(str(loc[-1]))
    if field is None:
        return []
    return [str(v) for t in _flatten(field.annotation) if typing.get_origin(t) is Literal
            for v in typing.get_args(t)]


def _describe(error: dict[str, Any]) -> str:
    loc = [str(p) for p in error["loc"]]
    path = ".".join(loc) or "(top level)"
    kind = error["type"]
    if kind == "extra_forbidden":
        cls = _section_class(loc[:-1])
        valid = list(cls.model_fields) if cls is not None else []
        prefix = ".".join(loc[:-1]) + "." if len(loc) > 1 else ""
        return f"unknown key {path!r}{_suggest(loc[-1], valid, prefix)}"
    if kind == "missing":
        return f"{path}: required key is missing"
    message = error["msg"].removeprefix("Value error, ")
    if kind == "literal_error":
        return f"{path}: {message}, got {error['input']!r}" + _suggest(
            error["input"], _literal_choices(loc))
    if kind == "value_error":
        cause = error.get("ctx", {}).get("error")
        if isinstance(cause, _OptionError):
            path = f"{path}.{cause.key}"
        return f"{path}: {message}"
    return f"{path}: {message}, got {error['input']!r}"


def validate_config(raw: Any, source: str = "config") -> RunConfig:
    """Validate a raw mapping (e.g. parsed YAML) into a :class:`RunConfig`.

    Raises:
        ConfigError: one line listing every problem, each with its key path.
    """
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{source}: expected a mapping of keys to values, got {type(raw).__name__}"
        )
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(_describe(e) for e in exc.errors())
        raise ConfigError(f"{source}: {problems}") from None


def load_config(path: str | os.PathLike[str], overrides: Iterable[str] = ()) -> RunConfig:
    """Read a YAML run config, apply ``--set`` style overrides and validate it.

    ``run_dir`` defaults to ``runs/<file name without extension>``.

    Raises:
        ConfigError: missing or unreadable file, invalid YAML, unknown keys or bad values; the
            message is one line naming the key path (and the closest valid key or name).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}: invalid YAML{where}: {problem}") from None
    if raw is None:
        raw = {}
    if isinstance(raw, dict):
        for parts, value in parse_overrides(overrides):
            _apply_override(raw, parts, value)
        if raw.get("run_dir") is None:
            raw["run_dir"] = str(Path("runs") / path.stem)
    return validate_config(raw, str(path))
