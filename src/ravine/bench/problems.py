"""Benchmark problems: what one run of one optimizer at one learning rate and seed computes.

Two families:

*Deterministic full-gradient problems* on a few parameters, run with the optimizer directly
(one "epoch" is one full-gradient step, the whole "data set" being used by every step):

``quadratic``
    :math:`f(x) = \\tfrac12 \\sum_i \\lambda_i (s_i x_i)^2` with :math:`\\lambda_i` log-spaced
    from 1 to ``kappa`` along the axes (so the Hessian's condition number is ``kappa`` when no
    ``rescale`` is given) and an optional axis-aligned rescaling ``s = rescale``: the rescaled
    Hessian is :math:`\\operatorname{diag}(\\lambda_i s_i^2)`. The default start
    :math:`x^{(0)}_i = -1/\\sqrt{\\lambda_i}` puts the same loss in every eigendirection.
``rosenbrock``
    :math:`f(x, y) = (a - x)^2 + b (y - x^2)^2`, minimum 0 at :math:`(a, a^2)`, from
    :math:`(-1.2, 1)`: a curved, narrow valley.

Both record the loss at the true parameters after every step (``optim.true_params``, so the
interim point of Nesterov-type methods is never mistaken for the iterate) and the 2-D path.
A run diverges when the loss becomes non-finite or exceeds ``1e8`` times its starting value.

*Neural-network problems* on offline data, trained by :func:`ravine.fit`:

=================  ==========  ================================================  =========
kind               data        model                                             target
=================  ==========  ================================================  =========
``logreg-digits``  digits      linear (multinomial logistic regression)          val_acc .9
``mlp-digits``     digits      MLP 128-128, dropout 0.2, weight decay 1e-4       val_acc .95
``mlp-mnist1d``    MNIST-1D    MLP 100-100                                       val_acc .55
``cnn-mnist1d``    MNIST-1D    1-D CNN 32-32-32 with batch norm                  val_acc .9
``custom``         ``dataset`` ``model`` (a ``models.build`` spec)               none
=================  ==========  ================================================  =========

The data split is fixed (``data: {seed: ...}``, default 0); a run's seed sets the model's
initialization and fit's batching. Classification problems monitor ``val_acc`` and report
``test_acc``; regression problems ``val_loss`` and ``test_loss``.
"""

from __future__ import annotations

import copy
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, model_validator

from ravine import data, models, optim
from ravine._checks import format_validation_error
from ravine.train import NonFiniteLossError, fit
from ravine.train.options import FitOptions, expand_shorthand

__all__ = [
    "RunResult",
    "Problem",
    "DeterministicProblem",
    "Quadratic",
    "Rosenbrock",
    "DatasetProblem",
    "QuadraticSpec",
    "RosenbrockSpec",
    "DatasetSpec",
    "ProblemSpec",
    "kinds",
    "build",
    "DIVERGENCE_FACTOR",
]

DIVERGENCE_FACTOR = 1e8

Callback = Callable[[int, dict[str, Any]], None]


@dataclass
class RunResult:
    """What one run produced.

    Attributes:
        history: one dict per epoch (``epoch`` >= 1, ``time`` in seconds since the start, and the
            problem's metrics: ``loss`` for deterministic problems, fit's records otherwise).
        final: the final metrics (``loss``; or ``test_acc`` / ``test_loss``).
        wall_time: seconds the run took.
        diverged: the loss became non-finite or blew up; ``final`` then holds ``inf`` / ``nan``.
        trajectory: for 2-D deterministic problems the iterates, start included.
    """

    history: list[dict[str, Any]]
    final: dict[str, float]
    wall_time: float
    diverged: bool = False
    trajectory: list[list[float]] | None = None


class Problem(ABC):
    """A benchmark problem: ``run(optimizer, lr, hp, seed=...)`` performs one training run.

    Attributes:
        label: the name the report uses.
        monitor: the history key tuning and targets use; ``mode`` says ``"min"`` or ``"max"``.
        final_metric: the key of :attr:`RunResult.final` the report tabulates.
        epochs: the epoch budget of every run.
        target: the monitor value a run must reach (``<=`` for min, ``>=`` for max), or None.
        report_every: epochs between two calls of the callbacks.
    """

    label: str
    epochs: int
    target: float | None
    final_metric: str
    report_every: int = 1

    @property
    @abstractmethod
    def monitor(self) -> str:
        """History key of the metric to tune on and to compare with the target."""

    @property
    @abstractmethod
    def mode(self) -> Literal["min", "max"]:
        """Whether smaller (``"min"``) or larger (``"max"``) monitor values are better."""

    @abstractmethod
    def run(
        self,
        optimizer: str,
        lr: float,
        hp: dict[str, Any] | None = None,
        *,
        seed: int = 0,
        callbacks: Sequence[Callback] = (),
    ) -> RunResult:
        """Train with optimizer ``optimizer`` (registry name) at learning rate ``lr``.

        ``hp`` holds the optimizer's other hyperparameters; every callback is called as
        ``cb(epoch, record)`` after every :attr:`report_every` epochs and may raise to stop the
        run (for instance ``optuna.TrialPruned``).
        """

    def describe(self) -> str:
        """A one-line description for reports."""
        return self.label


class _Common(BaseModel):
    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    name: str | None = None
    epochs: int | None = Field(default=None, ge=1)
    target: float | None = None

    @property
    def label(self) -> str:
        """The problem's name in reports: ``name``, else ``kind``."""
        return self.name or self.kind  # type: ignore[attr-defined]


class QuadraticSpec(_Common):
    """Options of the ``quadratic`` problem (see the module docstring); epochs = steps."""

    kind: Literal["quadratic"]
    kappa: float = Field(default=100.0, ge=1)
    dim: int = Field(default=2, ge=2)
    rescale: list[Annotated[float, Field(gt=0)]] | None = None
    start: list[float] | None = None
    init_std: float = Field(default=0.0, ge=0)

    @model_validator(mode="after")
    def _lengths(self) -> QuadraticSpec:
        for key in ("rescale", "start"):
            value = getattr(self, key)
            if value is not None and len(value) != self.dim:
                raise ValueError(f"{key} needs dim={self.dim} entries, got {len(value)}")
        return self


class RosenbrockSpec(_Common):
    """Options of the ``rosenbrock`` problem (see the module docstring); epochs = steps."""

    kind: Literal["rosenbrock"]
    a: float = 1.0
    b: float = Field(default=100.0, gt=0)
    start: list[float] = Field(default=[-1.2, 1.0], min_length=2, max_length=2)
    init_std: float = Field(default=0.0, ge=0)


# The benchmark decides these per run; every other training option a problem may set.
_BENCH_DECIDES = ("optimizer", "lr", "seed", "epochs")


def _fit_fields() -> dict[str, Any]:
    """FitOptions' fields, each optional (``None``: the problem's or fit's default)."""
    fields = {}
    for name, info in FitOptions.model_fields.items():
        if name not in _BENCH_DECIDES:
            optional = copy.copy(info)
            optional.default, optional.default_factory = None, None
            fields[name] = (info.annotation | None, optional)
    return fields


_FitFields = create_model("_FitFields", __base__=_Common, **_fit_fields())


class DatasetSpec(_FitFields):  # type: ignore[misc, valid-type]
    """Options of the neural-network problems: the built-ins and ``custom`` (dataset + model).

    ``data`` holds keyword arguments of ``ravine.data.load``; ``model`` a ``models.build`` spec
    (for built-ins: keys overriding the built-in model; input and output sizes are filled in
    from the data); every other key is a training option of :class:`ravine.train.FitOptions`
    (the benchmark sets ``optimizer``, ``lr`` and ``seed`` itself).
    """

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    kind: Literal["logreg-digits", "mlp-digits", "mlp-mnist1d", "cnn-mnist1d", "custom"]
    dataset: str | None = None
    data: dict[str, Any] = {}
    model: dict[str, Any] = {}
    monitor: Literal["val_acc", "val_loss"] | None = None

    @model_validator(mode="before")
    @classmethod
    def _short_forms(cls, raw: Any) -> Any:
        return expand_shorthand(raw)

    def fit_options(self) -> dict[str, Any]:
        """The training options this problem sets (the others keep their defaults)."""
        return {name: getattr(self, name) for name in self.model_fields_set
                if name in FitOptions.model_fields and name not in _BENCH_DECIDES}

    @model_validator(mode="after")
    def _custom_needs_data_and_model(self) -> DatasetSpec:
        if self.kind == "custom":
            if self.dataset is None:
                raise ValueError("a custom problem needs 'dataset' (a built-in name or a file)")
            if "kind" not in self.model:
                raise ValueError("a custom problem needs 'model' with a 'kind' (mlp, cnn1d, cnn2d)")
        elif self.dataset is not None:
            raise ValueError(f"problem {self.kind!r} has its own data; use kind: custom instead")
        return self


ProblemSpec = Annotated[
    QuadraticSpec | RosenbrockSpec | DatasetSpec, Field(discriminator="kind")
]


# --------------------------------------------------------------------------- deterministic


class DeterministicProblem(Problem):
    """A smooth function of a few parameters, minimized with full gradients (minimum value 0)."""

    final_metric = "loss"
    start: torch.Tensor
    init_std: float

    @property
    def monitor(self) -> str:
        return "loss"

    @property
    def mode(self) -> Literal["min", "max"]:
        return "min"

    @property
    def dim(self) -> int:
        """Number of parameters."""
        return int(self.start.numel())

    @abstractmethod
    def loss(self, x: torch.Tensor) -> torch.Tensor:
        """The objective at ``x`` of shape ``(..., dim)`` (batched, for contour plots)."""

    def run(
        self,
        optimizer: str,
        lr: float,
        hp: dict[str, Any] | None = None,
        *,
        seed: int = 0,
        callbacks: Sequence[Callback] = (),
    ) -> RunResult:
        generator = torch.Generator().manual_seed(seed)
        noise = torch.randn(self.dim, generator=generator, dtype=torch.float64)
        x0 = self.start + self.init_std * noise
        theta = torch.nn.Parameter(x0.clone())
        opt = optim.create(optimizer, [theta], lr=lr, **(hp or {}))
        limit = DIVERGENCE_FACTOR * max(float(self.loss(x0)), 1e-300)
        path = [x0.tolist()]
        history: list[dict[str, Any]] = []
        diverged = False
        start = time.perf_counter()
        for step in range(1, self.epochs + 1):
            opt.zero_grad(set_to_none=True)
            self.loss(theta).backward()
            grad_norm = float(theta.grad.norm())
            opt.step()
            with optim.true_params(opt), torch.no_grad():
                x = theta.detach().clone()
            value = float(self.loss(x))
            path.append(x.tolist())
            record = {"epoch": step, "step": step, "loss": value, "lr": lr,
                      "grad_norm": grad_norm, "time": time.perf_counter() - start}
            history.append(record)
            diverged = not math.isfinite(value) or value > limit
            if diverged:
                break
            if step % self.report_every == 0 or step == self.epochs:
                for callback in callbacks:
                    callback(step, record)
        final = math.inf if diverged else history[-1]["loss"]
        return RunResult(
            history=history,
            final={"loss": final},
            wall_time=time.perf_counter() - start,
            diverged=diverged,
            trajectory=path if self.dim == 2 else None,
        )


class Quadratic(DeterministicProblem):
    """The ill-conditioned axis-aligned quadratic (see the module docstring)."""

    def __init__(self, spec: QuadraticSpec) -> None:
        self.spec = spec
        self.label = spec.label
        self.epochs = spec.epochs or 200
        self.target = 1e-6 if spec.target is None else spec.target
        self.report_every = max(1, self.epochs // 20)
        exponents = torch.arange(spec.dim, dtype=torch.float64) / (spec.dim - 1)
        self.eigenvalues = spec.kappa**exponents
        scale = torch.ones(spec.dim, dtype=torch.float64)
        if spec.rescale is not None:
            scale = torch.tensor(spec.rescale, dtype=torch.float64)
        self.curvature = self.eigenvalues * scale**2
        self.start = (
            torch.tensor(spec.start, dtype=torch.float64)
            if spec.start is not None
            else -1.0 / self.eigenvalues.sqrt()
        )
        self.init_std = spec.init_std

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * (self.curvature * x * x).sum(-1)

    def describe(self) -> str:
        curv = self.curvature
        return (
            f"quadratic, dim {self.dim}, Hessian diag({', '.join(f'{c:.3g}' for c in curv)}), "
            f"condition number {float(curv.max() / curv.min()):.3g}"
        )


class Rosenbrock(DeterministicProblem):
    """Rosenbrock's banana valley (see the module docstring)."""

    def __init__(self, spec: RosenbrockSpec) -> None:
        self.spec = spec
        self.label = spec.label
        self.epochs = spec.epochs or 2000
        self.target = 1e-4 if spec.target is None else spec.target
        self.report_every = max(1, self.epochs // 20)
        self.a, self.b = spec.a, spec.b
        self.start = torch.tensor(spec.start, dtype=torch.float64)
        self.init_std = spec.init_std

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        u, v = x[..., 0], x[..., 1]
        return (self.a - u) ** 2 + self.b * (v - u * u) ** 2

    def describe(self) -> str:
        x0, y0 = self.start.tolist()
        return f"rosenbrock, a={self.a:g}, b={self.b:g}, start ({x0:g}, {y0:g})"


# --------------------------------------------------------------------------- neural networks

_BUILTIN: dict[str, dict[str, Any]] = {
    "logreg-digits": dict(
        dataset="digits", model={"kind": "mlp", "hidden": []}, epochs=20, batch_size=64,
        target=0.9,
    ),
    "mlp-digits": dict(
        dataset="digits", model={"kind": "mlp", "hidden": [128, 128], "dropout": 0.2},
        weight_decay=1e-4, epochs=20, batch_size=64, target=0.95,
    ),
    "mlp-mnist1d": dict(
        dataset="mnist1d", model={"kind": "mlp", "hidden": [100, 100]}, epochs=20,
        batch_size=100, target=0.55,
    ),
    "cnn-mnist1d": dict(
        dataset="mnist1d", model={"kind": "cnn1d", "norm": "batch"}, epochs=15, batch_size=100,
        target=0.9,
    ),
}


class DatasetProblem(Problem):
    """A model trained on a data set with :func:`ravine.fit` (see the module docstring)."""

    def __init__(self, spec: DatasetSpec) -> None:
        self.spec = spec
        self.label = spec.label
        defaults = _BUILTIN.get(spec.kind, {})
        self.dataset: str = spec.dataset or defaults["dataset"]
        self.model_spec = {**defaults.get("model", {}), **spec.model}
        self.epochs = spec.epochs or defaults.get("epochs", 10)
        self.options = spec.fit_options()
        self.batch_size = self.options.pop("batch_size", None) or defaults.get("batch_size", 100)
        weight_decay = self.options.pop("weight_decay", None)
        self.weight_decay = weight_decay if weight_decay is not None else defaults.get(
            "weight_decay", 0.0)
        self.target = spec.target if spec.target is not None else defaults.get("target")
        self._splits: Any = None

    @property
    def splits(self) -> Any:
        """The data (loaded once; the split is fixed whatever the run's seed)."""
        if self._splits is None:
            self._splits = data.load(self.dataset, **{"seed": 0, **self.spec.data})
        return self._splits

    @property
    def classification(self) -> bool:
        """Whether the problem is classification (built-ins are)."""
        if self.spec.kind in _BUILTIN:
            return True
        return self.splits.task == "classification"

    @property
    def monitor(self) -> str:
        if self.spec.monitor is not None:
            return self.spec.monitor
        return "val_acc" if self.classification else "val_loss"

    @property
    def mode(self) -> Literal["min", "max"]:
        return "max" if self.monitor.endswith("acc") else "min"

    @property
    def final_metric(self) -> str:  # type: ignore[override]
        return "test_acc" if self.monitor.endswith("acc") else "test_loss"

    def build_model(self) -> torch.nn.Module:
        """The model with input and output sizes filled in from the data (not yet seeded)."""
        splits = self.splits
        return models.for_data(dict(self.model_spec), splits.num_features, splits.num_outputs)

    def run(
        self,
        optimizer: str,
        lr: float,
        hp: dict[str, Any] | None = None,
        *,
        seed: int = 0,
        callbacks: Sequence[Callback] = (),
    ) -> RunResult:
        hp = dict(hp or {})
        # fit applies its own weight decay to weights only (biases and norm gains excluded),
        # which is what a weight_decay given with the optimizer should mean too.
        weight_decay = hp.pop("weight_decay", self.weight_decay)
        splits = self.splits
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = self.build_model()
        history: list[dict[str, Any]] = []

        def collect(epoch: int, record: dict[str, Any]) -> None:
            history.append(_scalars(record))

        start = time.perf_counter()
        try:
            result = fit(
                model,
                splits.train,
                splits.val,
                test=splits.test,
                **{"loss": "cross_entropy" if self.classification else "mse", **self.options},
                optimizer={"name": optimizer, "lr": lr, **hp},
                epochs=self.epochs,
                batch_size=self.batch_size,
                weight_decay=weight_decay,
                seed=seed,
                quiet=True,
                callbacks=[collect, *callbacks],
            )
        except NonFiniteLossError:
            return RunResult(
                history=history,
                final={self.final_metric: math.nan},
                wall_time=time.perf_counter() - start,
                diverged=True,
            )
        final = {
            (key if key.startswith("test_") else f"test_{key}"): float(value)
            for key, value in (result.test or {}).items()
            if isinstance(value, (int, float))
        }
        return RunResult(history=history, final=final, wall_time=time.perf_counter() - start)

    def describe(self) -> str:
        model = ", ".join(f"{k}={v}" for k, v in self.model_spec.items())
        return (
            f"{self.dataset}, model ({model}), batch {self.batch_size}, "
            f"weight decay {self.weight_decay:g}"
        )


def _scalars(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if isinstance(v, (int, float, str, bool)) or v is None}


def kinds() -> list[str]:
    """Names of the built-in problem kinds, plus ``custom``."""
    return ["quadratic", "rosenbrock", *_BUILTIN, "custom"]


def build(spec: QuadraticSpec | RosenbrockSpec | DatasetSpec | dict[str, Any] | str) -> Problem:
    """The problem described by ``spec`` (a validated spec, a dict, or a bare kind name).

    Raises:
        ValueError: for an unknown kind (naming the closest) or an invalid option.
    """
    if isinstance(spec, str):
        spec = {"kind": spec}
    if isinstance(spec, dict):
        try:
            spec = _Root.model_validate({"problem": spec}).problem
        except ValidationError as exc:
            raise ValueError(format_validation_error(exc, _Root).removeprefix("problem.")) from None
    if isinstance(spec, QuadraticSpec):
        return Quadratic(spec)
    if isinstance(spec, RosenbrockSpec):
        return Rosenbrock(spec)
    return DatasetProblem(spec)


class _Root(BaseModel):
    """Lets the error formatter walk a bare problem spec."""

    problem: ProblemSpec
