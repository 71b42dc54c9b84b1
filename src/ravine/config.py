"""Run configuration: the YAML file read by ``ravine train`` (pydantic v2, unknown keys rejected).

:class:`RunConfig` is :class:`ravine.train.options.FitOptions` — every option of
:func:`ravine.fit`, at the top level, documented and validated there — plus ``data``, ``model``,
``run_dir`` and ``code_dir``. Every key is optional except ``data`` and ``model``; the values
shown are the defaults (``null``: the library's own default applies).

.. code-block:: yaml

    data:                      # or just `data: mnist1d`
      name: mnist1d            # mnist1d | digits | quadratic | image-folder | file.csv | file.npz
      val_fraction: 0.1        # validation share of the training examples, in [0, 1)
      seed: null               # seed of the split (null: the run's seed)
      standardize: null        # source options of ravine.data.load: standardize, as_images,
                               # test_fraction, label, task, kappa, dim, n, noise; for
                               # image-folder: root, size ([H, W]), grayscale
    # data: {factory: "mypkg.data:build", options: {...}}  -- your own code: returns
    #   (train, val, test), (train, val), {"train": ..., ...} or a Splits; each split a pair of
    #   tensors, a Dataset, an IterableDataset or a DataLoader (seed= is passed if it takes one)
    model:                     # input and output sizes come from the data
      kind: cnn1d              # mlp | cnn1d | cnn2d
      norm: batch              # none | batch | layer | weight
      dropout: null            # also: hidden (mlp, required), channels, kernel_size,
                               # activation, image_size
    # model: {factory: "mypkg.models:build", options: {...}}  -- returns an nn.Module
    optimizer:                 # or just `optimizer: adam`
      name: adam               # sgd | momentum | nesterov | adagrad | rmsprop | rmsprop-nesterov |
                               # adam | adamw
      lr: null                 # also, where the optimizer has them: momentum, rho, eps, betas,
                               # compile, fused, flat
    schedule:                  # or just `schedule: constant`
      name: constant           # constant | linear-decay | inverse-time | step | cosine |
                               # reduce-on-plateau
      warmup_steps: 0          # options: decay_steps, final_lr (linear-decay; decay_steps
                               # defaults to the whole run), decay_steps (inverse-time),
                               # step_size, gamma (step), T_max, eta_min (cosine), factor,
                               # patience, threshold, mode, min_lr, cooldown (reduce-on-plateau,
                               # stepped each epoch with the early-stopping monitor's value)
    epochs: 10
    max_steps: null            # stop after this many optimizer steps
    batch_size: 100
    batching: epoch            # epoch | random
    drop_last: false
    steps_per_epoch: null      # required for a stream (IterableDataset)
    accumulate: 1              # micro-batches per minibatch (same step as the whole minibatch)
    num_workers: 0             # DataLoader workers for a Dataset; also pin_memory, prefetch
    loss: null                 # cross_entropy | mse | bce | "mypkg.losses:fn" (output, target);
                               # null: cross_entropy for integer targets, mse for float ones
    compute_loss: null         # "mypkg.losses:fn": fn(model, batch) -> loss or (loss, metrics)
    metrics: null              # {name: "mypkg.metrics:fn"}: fn(output, target), averaged
    clip_norm: null
    weight_decay: 0.0          # biases and normalization parameters are never decayed
    precision: fp32            # fp32 | bf16 | fp16
    val_every: 1               # epochs; val_every_steps: also every N steps
    early_stopping: null       # or true, or a mapping:
    #  monitor: val_loss       # train_loss | train_acc | val_loss | val_acc | val_<metric>
    #  mode: auto              # auto | min | max
    #  patience: 5
    #  min_delta: 0.0
    #  restore_best: true
    #  start_from_epoch: 0
    diagnostics: null          # e.g. {every: 10}: curvature and noise during training
    seed: 0
    run_dir: null              # null: runs/<name of the config file>
    code_dir: null             # null: the config file's folder (where factories are imported)
    checkpoint_every: 1        # epochs
    checkpoint_every_steps: null
    async_checkpoints: true    # write checkpoints from a CPU snapshot in a background thread
    log_every: 1               # steps
    loggers: []                # csv | tensorboard (metrics.jsonl is always written)
    device: cpu
    sync_batchnorm: false      # data-parallel runs on CUDA: batch norm over the global
                               # batch (SyncBatchNorm); else each process's own share
    on_nonfinite: stop         # stop | skip

Relative paths (data files, ``run_dir``) are relative to the current directory.

Overrides use dotted keys with YAML values, ``--set optimizer.lr=0.1 --set early_stopping=null``.
When an override changes ``optimizer.name``, the file's optimizer options that the new optimizer
does not take (``momentum`` when switching to ``adam``) are dropped with a one-line notice; the
same option set by an override is still an error.
Any problem — unreadable YAML, an unknown key, a bad value, a factory that cannot be imported —
raises :class:`ConfigError` with a single line that names the key path and, for unknown keys or
names, the closest valid one.
"""

from __future__ import annotations

import inspect
import os
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from ravine import data, models, optim
from ravine._checks import ConfigError, check_options, shown
from ravine._io import YAMLError, safe_yaml
from ravine.train.options import (
    EarlyStoppingConfig,
    FitOptions,
    OptimizerConfig,
    ScheduleConfig,
    Section,
    import_object,
)

__all__ = [
    "ConfigError",
    "DataConfig",
    "ModelConfig",
    "OptimizerConfig",
    "ScheduleConfig",
    "EarlyStoppingConfig",
    "RunConfig",
    "Run",
    "load_config",
    "validate_config",
    "parse_overrides",
]

# Sections that may be written as a bare string: `optimizer: adam` means `{name: adam}`.
SHORTHAND = {"data": "name", "model": "kind", "optimizer": "name", "schedule": "name"}


class DataConfig(Section):
    """Where the examples come from: :func:`ravine.data.load`, or the user's own factory."""

    name: str | None = None
    factory: str | None = None
    options: dict[str, Any] | None = None
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
    root: str | None = None
    size: list[int] | None = None
    grayscale: bool | None = None

    @model_validator(mode="after")
    def _name_or_factory(self) -> DataConfig:
        if (self.name is None) == (self.factory is None):
            raise ValueError(
                "give exactly one of 'name' (a built-in source or a file) and "
                "'factory' ('module:function' returning the splits)"
            )
        if self.factory is not None:
            extra = self.given(exclude=("factory", "options", "seed", "val_fraction"))
            if extra:
                raise ValueError(
                    f"with 'factory', pass the factory's arguments under "
                    f"'options', not {sorted(extra)}"
                )
        return self

    def load(self, run_seed: int) -> Any:
        """The splits: a :class:`ravine.data.Splits`, or what the factory returns."""
        seed = run_seed if self.seed is None else self.seed
        if self.factory is not None:
            return _user_splits(
                import_object(self.factory, "data.factory"), self.options or {}, seed
            )
        try:
            return data.load(
                self.name,
                seed=seed,
                val_fraction=self.val_fraction,
                **self.given(exclude=("name", "val_fraction", "seed", "factory", "options")),
            )
        except ValueError as exc:
            raise ConfigError(f"data: {exc}") from None


@dataclass
class UserSplits:
    """What a user's data factory returned, in the shape of :class:`ravine.data.Splits`."""

    train: Any
    val: Any = None
    test: Any = None


def _user_splits(factory: Any, options: dict[str, Any], seed: int) -> UserSplits:
    kwargs = dict(options)
    if "seed" in inspect.signature(factory).parameters and "seed" not in kwargs:
        kwargs["seed"] = seed
    try:
        result = factory(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"data.factory: {exc}") from None
    if isinstance(result, dict):
        unknown = set(result) - {"train", "val", "test"}
        if unknown or "train" not in result:
            raise ConfigError(
                "data.factory must return the splits as a dict with 'train' "
                f"(and optionally 'val', 'test'), got keys {sorted(result)}"
            )
        return UserSplits(result["train"], result.get("val"), result.get("test"))
    if isinstance(result, (tuple, list)) and 1 <= len(result) <= 3:
        return UserSplits(*result)
    if hasattr(result, "train"):
        return result
    raise ConfigError(
        "data.factory must return (train, val, test), (train, val), a dict "
        f"with those keys or a ravine.data.Splits, got {type(result).__name__}"
    )


def _builder(kind: str) -> Any:
    return {"mlp": models.mlp, "cnn1d": models.cnn1d, "cnn2d": models.cnn2d}[kind]


class ModelConfig(Section):
    """The network: a :func:`ravine.models.build` spec sized from the data, or a factory."""

    kind: Literal["mlp", "cnn1d", "cnn2d"] | None = None
    factory: str | None = None
    options: dict[str, Any] | None = None
    hidden: list[int] | int | None = None
    channels: list[int] | None = None
    norm: Literal["none", "batch", "layer", "weight"] | None = None
    dropout: float | None = Field(None, ge=0, lt=1)
    activation: Literal["relu", "tanh", "gelu"] | None = None
    kernel_size: int | None = Field(None, ge=1)
    image_size: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _options_fit_kind(self) -> ModelConfig:
        if (self.kind is None) == (self.factory is None):
            raise ValueError(
                "give exactly one of 'kind' (mlp, cnn1d, cnn2d) and 'factory' "
                "('module:function' returning an nn.Module)"
            )
        if self.factory is not None:
            extra = self.given(exclude=("factory", "options"))
            if extra:
                raise ValueError(
                    f"with 'factory', pass the factory's arguments under "
                    f"'options', not {sorted(extra)}"
                )
            return self
        valid = [
            p
            for p in inspect.signature(_builder(self.kind)).parameters
            if p not in models.FROM_DATA
        ]
        check_options(
            self.given(exclude=("kind", "factory", "options")), valid, f"model kind {self.kind!r}"
        )
        if self.kind == "mlp" and self.hidden is None:
            raise ValueError("model kind 'mlp' needs 'hidden' (the hidden layer widths)")
        return self

    def build(self, splits: Any) -> nn.Module:
        """Build the model for ``splits``.

        Raises:
            ConfigError: the model does not suit the data (e.g. a 1-D CNN on images).
        """
        if self.factory is not None:
            model = import_object(self.factory, "model.factory")(**(self.options or {}))
            if not isinstance(model, nn.Module):
                raise ConfigError(
                    f"model.factory must return a torch.nn.Module, got {type(model).__name__}"
                )
            return model
        if not hasattr(splits, "num_features"):
            raise ConfigError(
                f"model: kind {self.kind!r} takes its sizes from a "
                "ravine.data.Splits; with data.factory, return a Splits or use "
                "model.factory"
            )
        spec = {"kind": self.kind, **self.given(exclude=("kind", "factory", "options"))}
        try:
            return models.for_data(spec, splits.num_features, _num_outputs(splits))
        except ValueError as exc:
            hint = "; for digits set data.as_images: true" if self.kind == "cnn2d" else ""
            raise ConfigError(f"model: {exc}{hint}") from None


def _num_outputs(splits: Any) -> int:
    if hasattr(splits, "num_outputs"):
        return splits.num_outputs
    y = splits.train.y
    return splits.num_classes if splits.num_classes else (y.shape[1] if y.dim() > 1 else 1)


@dataclass
class Run:
    """A run built from a config: its data splits and its freshly initialized model."""

    splits: Any
    model: nn.Module


class RunConfig(FitOptions):
    """One training run: ``data``, ``model``, ``run_dir`` and every option of
    :class:`~ravine.train.options.FitOptions` (flat, at the top level of the YAML file)."""

    data: DataConfig
    model: ModelConfig
    run_dir: str | None = None
    #: where ``module:function`` names are imported from (besides the current directory);
    #: ``load_config`` sets it to the config file's folder, and the run's ``config.yaml`` keeps
    #: it, so ``ravine diagnose RUN_DIR`` finds the same code.
    code_dir: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _expand_sections(cls, raw: Any) -> Any:
        if isinstance(raw, dict):
            raw = dict(raw)
            for section in ("data", "model"):
                if isinstance(raw.get(section), str):
                    raw[section] = {SHORTHAND[section]: raw[section]}
        return raw

    @property
    def fit(self) -> FitOptions:
        """The training options alone."""
        return FitOptions.model_validate(
            {name: getattr(self, name) for name in FitOptions.model_fields}
        )

    def build(self) -> Run:
        """Load the data (split with the run's seed) and build the model, whose initial
        weights come from the run's seed like everything else. ``ravine train``, ``diagnose``,
        ``tune`` and the demo all build their runs here.

        User factories (``module:function``) are imported from the current directory or the
        config file's folder.
        """
        with _importable(self.code_dir):
            splits = self.data.load(self.seed)
            torch.manual_seed(self.seed)
            model = self.model.build(splits)
        return Run(splits, model)


class _importable:
    """Put a folder at the front of ``sys.path`` for the duration of a block."""

    def __init__(self, folder: str | None) -> None:
        self.folders = [f for f in (os.getcwd(), folder) if f]

    def __enter__(self) -> None:
        self.added = [f for f in self.folders if f not in sys.path]
        sys.path[:0] = self.added

    def __exit__(self, *exc: object) -> None:
        for folder in self.added:
            if folder in sys.path:
                sys.path.remove(folder)


def parse_overrides(overrides: Iterable[str]) -> list[tuple[list[str], Any]]:
    """``["optimizer.lr=0.1"]`` -> ``[(["optimizer", "lr"], 0.1)]``; values are YAML scalars."""
    parsed = []
    for item in overrides:
        key, sep, text = item.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts) or any(re.search(r"\s", part) for part in parts):
            raise ConfigError(
                f"--set expects KEY=VALUE with a dotted KEY (no spaces or line breaks), got "
                f"{shown(item)}"
            )
        try:
            value = safe_yaml(text, "--set") if text.strip() else None
        except YAMLError:
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


def _drop_foreign_optimizer_options(
    raw: dict[str, Any],
    file_options: set[str],
    overrides: list[tuple[list[str], Any]],
    source: str,
    notice: Callable[[str], None],
) -> None:
    """After ``--set optimizer.name=NEW``, drop the file's options that NEW does not take.

    Only options that came from the file go (a file written for momentum keeps its ``momentum:``
    line when the run switches to adam); options given on the command line are left for the
    validator, so a mistake typed there is still an error.
    """
    renamed = any(parts == ["optimizer", "name"] for parts, _ in overrides)
    section = raw.get("optimizer")
    if not renamed or not isinstance(section, dict):
        return
    name = section.get("name")
    if not isinstance(name, str) or name not in optim.names():
        return  # the validator names the closest optimizer
    from_command_line = {
        parts[1] for parts, _ in overrides if len(parts) == 2 and parts[0] == "optimizer"
    }
    takes = optim.hyperparameters(name)
    # Only keys of the schema: a misspelt key in the file stays an error.
    dropped = [
        key
        for key in section
        if key in file_options
        and key not in from_command_line
        and key != "name"
        and key in OptimizerConfig.model_fields
        and key not in takes
    ]
    if not dropped:
        return
    for key in dropped:
        del section[key]
    listed = ", ".join(f"optimizer.{key}" for key in dropped)
    notice(
        f"--set optimizer.name={name}: dropped {listed} from {source} (not an option of {name!r})"
    )


def _print_notice(message: str) -> None:
    print(f"ravine: {message}", file=sys.stderr)


def validate_config(raw: Any, source: str = "config") -> RunConfig:
    """Validate a raw mapping (e.g. parsed YAML) into a :class:`RunConfig`.

    Raises:
        ConfigError: one line listing every problem, each with its key path.
    """
    folder = raw.get("code_dir") if isinstance(raw, dict) else None
    with _importable(folder if isinstance(folder, str) else None):
        return RunConfig.validate(raw, source)


def load_config(
    path: str | os.PathLike[str],
    overrides: Iterable[str] = (),
    *,
    notice: Callable[[str], None] | None = None,
) -> RunConfig:
    """Read a YAML run config, apply ``--set`` style overrides and validate it.

    ``run_dir`` defaults to ``runs/<file name without extension>``. An override of
    ``optimizer.name`` drops the file's optimizer options that the new optimizer does not take
    and says so in one line through ``notice`` (default: printed on stderr); the same options
    given as overrides are still errors.

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
        raw = safe_yaml(text, str(path))
    except YAMLError as exc:
        raise ConfigError(str(exc)) from None
    if raw is None:
        raw = {}
    if isinstance(raw, dict):
        parsed = parse_overrides(overrides)
        section = raw.get("optimizer")
        file_options = set(section) if isinstance(section, dict) else set()
        for parts, value in parsed:
            if parts == ["optimizer"]:
                file_options = set()  # the command line replaced the whole section
            _apply_override(raw, parts, value)
        _drop_foreign_optimizer_options(
            raw, file_options, parsed, str(path), notice or _print_notice
        )
        if raw.get("run_dir") is None:
            raw["run_dir"] = str(Path("runs") / path.stem)
    folder = str(path.resolve().parent)
    if isinstance(raw, dict) and raw.get("code_dir") is None:
        raw["code_dir"] = folder
    return validate_config(raw, str(path))
