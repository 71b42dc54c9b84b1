"""Diagnostics recorded during training: ``fit(..., diagnostics=dict(every=5, what=[...]))``.

Every ``every`` epochs, after validation, :func:`ravine.diagnostics.measure` runs at the true
parameters on a fixed random subset of the training set (``examples`` of them, drawn once from the
run's seed) in evaluation mode (batch norm on its running statistics, dropout off), and its
numbers join that epoch's record in ``metrics.jsonl`` with a ``diag_`` prefix
(``diag_lambda_max``, ``diag_lr_bound`` = 2/λmax, ``diag_b_simple``, ...).
The run report then plots λmax against 2/lr, κ, B_simple and the full-subset gradient norm.

The cost is a few dozen Hessian-vector products and one pass of per-example gradients over the
subset; BENCHMARKS.md states the measured overhead at the default interval.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, fields
from typing import Any

from torch import Tensor, nn

from ravine._checks import check_int, check_positive, suggest
from ravine.diagnostics.measure import check_what, measure

__all__ = ["DiagnosticsSchedule", "DEFAULT_WHAT", "PREFIX"]

DEFAULT_WHAT = ("lambda_max", "noise")
PREFIX = "diag_"


@dataclass(frozen=True)
class DiagnosticsSchedule:
    """When and what to measure during training.

    Attributes:
        every: measure after every ``every``-th epoch (>= 1).
        what: quantities for :func:`ravine.diagnostics.measure` (``loss``, ``grad_norm``,
            ``lambda_max``, ``lambda_min``, ``trace``, ``noise``).
        examples: size of the fixed training subset the measurements use (>= 2).
        tol: relative Lanczos tolerance.
        max_hvps: Hessian-vector product budget per measurement.
    """

    every: int = 10
    what: tuple[str, ...] = DEFAULT_WHAT
    examples: int = 256
    tol: float = 1e-3
    max_hvps: int = 60

    @classmethod
    def from_option(cls, option: Any) -> DiagnosticsSchedule | None:
        """Build from fit's ``diagnostics=`` option: ``None``/``False``, ``True`` or a dict."""
        if option is None or option is False:
            return None
        if option is True:
            return cls()
        if isinstance(option, cls):
            return option
        if not isinstance(option, dict):
            raise ValueError(f"diagnostics must be a dict, True or None, got {option!r}")
        valid = [f.name for f in fields(cls)]
        for key in option:
            if key not in valid:
                raise ValueError(
                    f"unknown diagnostics option {key!r}{suggest(key, valid)} "
                    f"(valid: {', '.join(valid)})"
                )
        options = dict(option)
        if "what" in options:
            what = options["what"]
            options["what"] = (what,) if isinstance(what, str) else tuple(what)
        schedule = cls(**options)
        schedule._validate()
        return schedule

    def _validate(self) -> None:
        for name, minimum in (("every", 1), ("examples", 2), ("max_hvps", 1)):
            check_int(f"diagnostics.{name}", getattr(self, name), minimum)
        check_positive("diagnostics.tol", self.tol)
        check_what(self.what)

    def due(self, epoch: int) -> bool:
        """Whether to measure after ``epoch`` (1-based)."""
        return epoch % self.every == 0

    def measure(
        self,
        model: nn.Module,
        loss_fn: Any,
        batch: tuple[Tensor, Tensor],
        *,
        lr: float,
        batch_size: int,
        seed: int,
    ) -> dict[str, Any]:
        """Measure at the model's current parameters; keys carry the ``diag_`` prefix."""
        with warnings.catch_warnings():
            # Training-time measurements are in eval mode by design (documented above); the
            # per-call warning about batch norm / dropout would repeat every interval.
            warnings.filterwarnings("ignore", message="batch norm/dropout")
            numbers = measure(
                model,
                loss_fn,
                batch,
                self.what,
                lr=lr,
                batch_size=min(batch_size, batch[0].shape[0]),
                seed=seed,
                mode="eval",
                tol=self.tol,
                max_hvps=self.max_hvps,
            )
        return {PREFIX + k: v for k, v in numbers.items()}
