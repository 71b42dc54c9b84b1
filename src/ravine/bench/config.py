"""Validated configurations of ``ravine compare`` suites and ``ravine tune`` studies.

A suite is ``problems × optimizers × seeds``::

    name: ravine-claims
    seeds: 5                       # or an explicit list [0, 1, 2]
    problems:
      - {kind: quadratic, kappa: 100, epochs: 200, target: 1.0e-6}
      - rosenbrock                 # a bare name takes every default
    optimizers:
      - sgd
      - {name: momentum, momentum: 0.9}
      - {name: adam, lr: 0.01}     # a fixed learning rate: not tuned
    tuning: {method: tpe, trials: 20, low: 1.0e-4, high: 1.0}

An optimizer entry holds the registry name, an optional display ``label``, ``lr`` and any other
hyperparameter of that optimizer (``optim.hyperparameters(name)``). A value may be a *search
space* ``{search: log, low: 1e-4, high: 1}`` (``log`` | ``uniform`` | ``int`` | ``categorical``
with ``choices``), which the tuner samples; an ``lr`` left out is searched log-uniformly over the
suite's ``tuning.low .. tuning.high``.

Every mapping rejects unknown keys; :func:`load_suite` and :func:`load_study` turn pydantic's
errors into one line that names the key and suggests the closest valid one.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from ravine import optim
from ravine._checks import ConfigError as RunConfigError
from ravine._checks import format_validation_error, suggest
from ravine._io import YAMLError, safe_yaml
from ravine.bench.problems import ProblemSpec

__all__ = [
    "ConfigError",
    "SearchSpace",
    "OptimizerSpec",
    "TuningSpec",
    "SuiteSpec",
    "StudySpec",
    "load_suite",
    "load_study",
    "read_yaml",
]


class ConfigError(RunConfigError):
    """A suite or study configuration is invalid; the message is one line for the CLI."""


class SearchSpace(BaseModel):
    """A hyperparameter the tuner samples instead of a fixed value.

    ``log``: log-uniform on ``[low, high]`` (``0 < low < high``); ``uniform``: uniform on
    ``[low, high]``, optionally on a grid of ``step``; ``int``: integers in ``[low, high]``;
    ``categorical``: one of ``choices``.
    """

    model_config = ConfigDict(extra="forbid")

    search: Literal["log", "uniform", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    step: float | None = Field(default=None, gt=0)
    choices: list[Any] | None = None

    @model_validator(mode="after")
    def _check_range(self) -> SearchSpace:
        if self.search == "categorical":
            if not self.choices:
                raise ValueError("a categorical search needs a non-empty 'choices' list")
            if self.low is not None or self.high is not None:
                raise ValueError("a categorical search takes 'choices', not low/high")
            return self
        if self.choices is not None:
            raise ValueError(f"'choices' only goes with search: categorical, not {self.search}")
        if self.low is None or self.high is None:
            raise ValueError(f"a {self.search} search needs both 'low' and 'high'")
        if not (math.isfinite(self.low) and math.isfinite(self.high)) or self.low >= self.high:
            raise ValueError(
                f"search needs finite low < high, got low={self.low}, high={self.high}"
            )
        if self.search == "log" and self.low <= 0:
            raise ValueError(f"a log search needs low > 0, got {self.low}")
        if self.search == "log" and self.step is not None:
            raise ValueError("a log search takes no 'step'")
        return self

    def suggest(self, trial: Any, name: str) -> Any:
        """The value an Optuna ``trial`` samples for the hyperparameter ``name``."""
        if self.search == "categorical":
            return trial.suggest_categorical(name, self.choices)
        if self.search == "int":
            return trial.suggest_int(name, int(self.low), int(self.high), step=int(self.step or 1))
        return trial.suggest_float(
            name, self.low, self.high, log=self.search == "log", step=self.step
        )


def _value_kind(value: Any) -> str:
    return "space" if isinstance(value, (dict, SearchSpace)) else "number"


class OptimizerSpec(BaseModel):
    """One optimizer of a suite: registry ``name``, display ``label``, ``lr`` and other options."""

    model_config = ConfigDict(extra="allow")

    name: str
    label: str | None = None
    lr: Annotated[
        Annotated[SearchSpace, Tag("space")] | Annotated[float, Tag("number")],
        Discriminator(_value_kind),
    ] | None = None

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        optim.registry.lookup(name)
        return name.strip().lower().replace("_", "-")

    @field_validator("lr")
    @classmethod
    def _positive_lr(cls, lr: Any) -> Any:
        if isinstance(lr, float) and not (math.isfinite(lr) and lr > 0):
            raise ValueError(f"lr must be a finite number > 0, got {lr}")
        return lr

    @model_validator(mode="after")
    def _check_hyperparameters(self) -> OptimizerSpec:
        valid = [key for key in optim.hyperparameters(self.name) if key != "lr"]
        for key, value in list((self.model_extra or {}).items()):
            if key not in valid:
                raise ValueError(
                    f"{self.name} has no hyperparameter {key!r}{suggest(key, valid)} "
                    f"(valid: {', '.join(['lr', *valid])})"
                )
            if isinstance(value, dict):
                try:
                    self.model_extra[key] = SearchSpace.model_validate(value)
                except ValidationError as exc:
                    raise ValueError(f"{key}.{format_validation_error(exc, SearchSpace)}") from None
        if self.label is None:
            self.label = self.name
        return self

    @property
    def hyperparameters(self) -> dict[str, Any]:
        """The options besides ``name``, ``label`` and ``lr`` (fixed values or search spaces)."""
        return dict(self.model_extra or {})

    def searched(self) -> dict[str, SearchSpace]:
        """Hyperparameters (``lr`` included) given as search spaces."""
        out = {k: v for k, v in self.hyperparameters.items() if isinstance(v, SearchSpace)}
        if isinstance(self.lr, SearchSpace):
            out = {"lr": self.lr, **out}
        return out

    def fixed(self) -> dict[str, Any]:
        """Hyperparameters (``lr`` excluded) given as fixed values."""
        return {k: v for k, v in self.hyperparameters.items() if not isinstance(v, SearchSpace)}


class TuningSpec(BaseModel):
    """How a suite chooses learning rates, with the same budget for every optimizer.

    ``tpe``: an Optuna study per (problem, optimizer) of ``trials`` trials, TPE sampler, lr
    log-uniform on ``[low, high]`` (or the optimizer's own ``lr`` search space), median pruning
    on the intermediate validation metric when ``pruning``. ``grid``: every lr of ``grid``, each a
    full run. ``none``: every optimizer must give a fixed ``lr``. Tuning runs use ``seed``,
    distinct from the evaluation seeds so the reported runs are not the ones lr was picked on.
    """

    model_config = ConfigDict(extra="forbid")

    method: Literal["tpe", "grid", "none"] = "tpe"
    trials: int = Field(default=20, ge=1)
    grid: list[Annotated[float, Field(gt=0)]] | None = None
    low: float = Field(default=1e-4, gt=0)
    high: float = Field(default=1.0, gt=0)
    pruning: bool = True
    seed: int = 1000

    @model_validator(mode="after")
    def _consistent(self) -> TuningSpec:
        if self.low >= self.high:
            raise ValueError(f"tuning needs low < high, got low={self.low}, high={self.high}")
        if self.method == "grid" and not self.grid:
            raise ValueError("tuning method 'grid' needs a non-empty 'grid' list of learning rates")
        if self.method != "grid" and self.grid is not None:
            raise ValueError(f"'grid' only goes with method: grid, not {self.method}")
        return self


class SuiteSpec(BaseModel):
    """A ``ravine compare`` suite (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")

    name: str = "suite"
    output: str | None = None
    seeds: int | list[int] = 5
    problems: list[ProblemSpec] = Field(min_length=1)
    optimizers: list[OptimizerSpec] = Field(min_length=1)
    tuning: TuningSpec = TuningSpec()
    profile_cost: Literal["epochs", "time"] = "epochs"

    @field_validator("problems", mode="before")
    @classmethod
    def _bare_problem_names(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [{"kind": v} if isinstance(v, str) else v for v in value]
        return value

    @field_validator("optimizers", mode="before")
    @classmethod
    def _bare_optimizer_names(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [{"name": v} if isinstance(v, str) else v for v in value]
        return value

    @field_validator("seeds")
    @classmethod
    def _seed_list(cls, seeds: int | list[int]) -> list[int]:
        if isinstance(seeds, int):
            if seeds < 1:
                raise ValueError(f"seeds must be >= 1, got {seeds}")
            return list(range(seeds))
        if not seeds or len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds must be a non-empty list of distinct integers, got {seeds}")
        return seeds

    @model_validator(mode="after")
    def _consistent(self) -> SuiteSpec:
        _unique("problem", [p.label for p in self.problems])
        _unique("optimizer", [o.label for o in self.optimizers])
        for o in self.optimizers:
            if self.tuning.method == "none" and not isinstance(o.lr, float):
                raise ValueError(
                    f"optimizer {o.label!r} needs a fixed lr when tuning method is 'none'"
                )
            if self.tuning.method == "grid" and o.searched():
                raise ValueError(
                    f"optimizer {o.label!r}: grid tuning takes the suite's lr grid and fixed "
                    "values of the other hyperparameters; drop the search spaces or use "
                    "method: tpe"
                )
        return self

    @property
    def seed_list(self) -> list[int]:
        """The evaluation seeds as a list."""
        return list(self.seeds) if isinstance(self.seeds, list) else list(range(self.seeds))


class StudySpec(BaseModel):
    """A ``ravine tune`` configuration for a benchmark problem.

    ``problem`` is a suite problem entry, ``optimizer`` an optimizer entry whose search spaces
    (``lr`` searched over ``[1e-4, 1]`` log-uniformly when left out) are sampled by the study.
    """

    model_config = ConfigDict(extra="forbid")

    problem: ProblemSpec
    optimizer: OptimizerSpec
    seed: int = 0
    trials: int = Field(default=20, ge=1)
    pruning: bool = True
    output: str | None = None

    @field_validator("problem", mode="before")
    @classmethod
    def _bare_problem_name(cls, value: Any) -> Any:
        return {"kind": value} if isinstance(value, str) else value

    @field_validator("optimizer", mode="before")
    @classmethod
    def _bare_optimizer_name(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value


def _unique(what: str, labels: list[str]) -> None:
    seen: set[str] = set()
    for label in labels:
        if label in seen:
            raise ValueError(
                f"two {what}s are labelled {label!r}; give one of them a distinct "
                f"{'name' if what == 'problem' else 'label'}"
            )
        seen.add(label)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """The mapping at the top of the YAML file ``path`` (``ConfigError`` otherwise)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        data = safe_yaml(text, str(path))
    except YAMLError as exc:
        raise ConfigError(str(exc)) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top, got {type(data).__name__}")
    return data


def load_suite(source: str | Path | dict[str, Any]) -> SuiteSpec:
    """Validate a suite from a YAML file or a dict (``ConfigError`` with a one-line message).

    A suite without a ``name`` is named after its file.
    """
    data = read_yaml(source) if not isinstance(source, dict) else dict(source)
    if not isinstance(source, dict):
        data.setdefault("name", Path(source).stem)
    try:
        return SuiteSpec.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, SuiteSpec)) from None


def load_study(data: dict[str, Any]) -> StudySpec:
    """Validate a benchmark-problem tuning configuration (``ConfigError`` on failure)."""
    try:
        return StudySpec.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, StudySpec)) from None
