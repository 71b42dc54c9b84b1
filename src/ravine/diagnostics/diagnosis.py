"""The one call: :func:`diagnose` measures a model where it stands and returns ranked findings.

Stages, cheapest and most decisive first, each within the ``budget``:

1. loss, gradient, per-example gradient statistics and B_simple with a bootstrap interval
   (no Hessian-vector products);
2. dead ReLU units (one forward pass with hooks);
3. the step size: the sharpness λmax of ``H`` (SGD family) or of the preconditioned
   ``P^{-1/2} H P^{-1/2}`` (adaptive optimizers, ``P`` their current denominator), its stability
   bound for the optimizer, and the second-order change of one step along the gradient
   (:func:`ravine.diagnostics.sharpness.step_size`);
4. both ends of the Hessian spectrum (λmin for saddles and κ) by one Lanczos run;
5. the per-layer view (:func:`ravine.diagnostics.layerwise.layerwise`): which layer limits the
   step, per-layer gradient norms.

The numbers go through the rules of :mod:`ravine.diagnostics.findings`; what the budget did not
allow is listed in :attr:`Diagnosis.skipped`. Measurements run at the optimizer's true ``θ``
(interim-point methods keep ``θ + αv`` in the parameters between steps) on a forked random
stream, and the model's parameters, buffers and mode are left as they were, so calling
:func:`diagnose` inside a training loop never changes training.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from ravine._validate import check_int
from ravine.data.sources import fixed_examples
from ravine.diagnostics.classify import param_norm
from ravine.diagnostics.findings import Diagnosis, FindingThresholds
from ravine.diagnostics.hvp import LossFn, check_choice
from ravine.diagnostics.layerwise import b_simple_interval, layerwise
from ravine.diagnostics.measure import measure
from ravine.diagnostics.noise import as_tensors, gradient_statistics
from ravine.diagnostics.sharpness import step_size
from ravine.diagnostics.units import dead_units
from ravine.optim import true_params

__all__ = ["Budget", "diagnose", "DEFAULT_HVPS", "HISTORY_KEYS"]

#: Hessian-vector products of the default budget (about 2-6 s on a 10^4-parameter CNN and
#: 1024 examples on 2 CPU cores; see BENCHMARKS.md).
DEFAULT_HVPS = 160
#: Keys a caller (a monitor, a run directory) may pass in ``history``.
HISTORY_KEYS = ("loss_history", "grad_norm_history", "clip_fraction", "clip_norm")
_CHUNK = 256


@dataclass(frozen=True)
class Budget:
    """How much :func:`diagnose` may spend: Hessian-vector products and/or wall seconds."""

    hvps: int | None = DEFAULT_HVPS
    seconds: float | None = None

    @classmethod
    def of(cls, budget: Any) -> Budget:
        """From ``None`` (the default), an int (HVPs), a dict ``{"hvps", "seconds"}`` or a Budget."""
        if budget is None:
            return cls()
        if isinstance(budget, cls):
            return budget
        if isinstance(budget, bool):
            raise ValueError(f"budget must be an int, a dict or None, got {budget!r}")
        if isinstance(budget, int):
            check_int("budget", budget, 1)
            return cls(hvps=budget)
        if isinstance(budget, Mapping):
            unknown = set(budget) - {"hvps", "seconds"}
            if unknown:
                raise ValueError(
                    f"budget keys must be 'hvps' and/or 'seconds', got {sorted(unknown)[0]!r}"
                )
            hvps, seconds = budget.get("hvps"), budget.get("seconds")
            if hvps is not None:
                check_int("budget.hvps", hvps, 1)
            if seconds is not None and not (
                isinstance(seconds, (int, float)) and math.isfinite(seconds) and seconds > 0
            ):
                raise ValueError(f"budget.seconds must be > 0, got {seconds!r}")
            return cls(hvps=hvps, seconds=None if seconds is None else float(seconds))
        raise ValueError(f"budget must be an int, a dict or None, got {type(budget).__name__}")


class _Spend:
    """What is left of the budget as the stages run."""

    def __init__(self, budget: Budget) -> None:
        self.budget = budget
        self.start = time.perf_counter()
        self.hvps = 0
        self.skipped: list[str] = []

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def allows(self, stage: str, wanted_hvps: int = 0) -> int | None:
        """The HVPs the stage may use (``None``: skip it, and say why)."""
        if self.budget.seconds is not None and self.elapsed() >= self.budget.seconds:
            self.skipped.append(f"{stage}: the time budget of {self.budget.seconds:g} s ran out")
            return None
        if wanted_hvps == 0:
            return 0
        left = wanted_hvps if self.budget.hvps is None else self.budget.hvps - self.hvps
        if left < min(wanted_hvps, 8):
            self.skipped.append(
                f"{stage}: the budget of {self.budget.hvps} Hessian-vector products ran out"
            )
            return None
        return min(wanted_hvps, left)


def _batch_size_of(data: Any) -> int | None:
    size = getattr(data, "batch_size", None)  # a DataLoader
    return size if isinstance(size, int) else None


@contextlib.contextmanager
def _untouched(model: nn.Module, optimizer: Optimizer | None) -> Iterator[None]:
    """True θ for interim-point optimizers, a forked RNG, and the model's mode restored."""
    devices = sorted({p.device.index for p in model.parameters() if p.device.type == "cuda"})
    modes = {m: m.training for m in model.modules()}
    with torch.random.fork_rng(devices=devices):
        with true_params(optimizer) if optimizer is not None else contextlib.nullcontext():
            try:
                yield
            finally:
                for module, training in modes.items():
                    module.training = training


def _loss(
    model: nn.Module, loss_fn: LossFn, batches: list[tuple[Tensor, Tensor]],
    optimizer: Optimizer | None, mode: str,
) -> float:
    """The mean loss over the batches (when no curvature stage measured it)."""
    with _untouched(model, optimizer), torch.no_grad():
        model.train(mode == "train")
        total = sum(float(loss_fn(model(x), y)) * x.shape[0] for x, y in batches)
    return total / sum(x.shape[0] for x, _ in batches)


def _subset(data: Any, examples: int, seed: int) -> tuple[Tensor, Tensor]:
    x, y = as_tensors(data)
    keep = fixed_examples(x.shape[0], examples, seed)
    return x[keep], y[keep]


def diagnose(
    model: nn.Module,
    loss_fn: LossFn,
    data: Any,
    *,
    optimizer: Optimizer | None = None,
    lr: float | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    mode: str = "eval",
    budget: Any = None,
    layers: bool = True,
    history: Mapping[str, Any] | None = None,
    examples: int = 1024,
    thresholds: FindingThresholds | None = None,
) -> Diagnosis:
    """Why does this network train slowly or blow up, and what should change? Ranked findings.

    Args:
        model: the network at its current parameters.
        loss_fn: ``loss_fn(model(x), y)``, the batch-mean loss.
        data: a batch ``(x, y)``, a dataset (``ArrayDataset``, ``TensorDataset``, any map-style
            dataset of ``(x, y)`` items) or a DataLoader; a fixed seeded subset of ``examples``
            of its examples is measured.
        optimizer: any torch optimizer (ravine's or torch's) over the model's parameters: its
            kind, lr, momentum/betas and adaptive state decide the step-size rule.
        lr: overrides the optimizer's learning rate (or gives one without an optimizer).
        batch_size: the training batch size m (default: the DataLoader's), judged against
            B_simple.
        seed: the subset, Lanczos start vectors and bootstrap resamples.
        mode: "eval" (batch norm on running statistics, dropout off) or "train".
        budget: ``None`` (:data:`DEFAULT_HVPS` Hessian-vector products), an int (HVPs) or a dict
            ``{"hvps": int, "seconds": float}``; stages that do not fit are listed in
            :attr:`Diagnosis.skipped`.
        layers: also measure the per-layer view (names the layer that limits the step).
        history: recent training numbers the caller recorded (:data:`HISTORY_KEYS`):
            ``loss_history``, ``grad_norm_history`` (pre-clip norms), ``clip_fraction``,
            ``clip_norm``.
        examples: how many examples of ``data`` to measure on.
        thresholds: the rules' thresholds (:class:`~ravine.diagnostics.findings.FindingThresholds`).

    Returns:
        A :class:`~ravine.diagnostics.findings.Diagnosis`: ``.findings`` ranked (``code``,
        ``severity``, ``message``, ``evidence``, ``fix``), ``.numbers``, ``.skipped``.

    Example::

        d = diagnostics.diagnose(net, nn.functional.cross_entropy, train_loader, optimizer=opt)
        print(d.to_markdown())
        d.top.fix            # e.g. {"lr": 0.03}
    """
    check_int("seed", seed, 0)
    check_int("examples", examples, 2)
    check_choice("mode", mode, ("eval", "train"))
    if batch_size is not None:
        check_int("batch_size", batch_size, 1)
    history = dict(history or {})
    unknown = set(history) - set(HISTORY_KEYS)
    if unknown:
        raise ValueError(
            f"history keys must be among {', '.join(HISTORY_KEYS)}, got {sorted(unknown)[0]!r}"
        )
    spend = _Spend(Budget.of(budget))
    batch_size = batch_size if batch_size is not None else _batch_size_of(data)
    x, y = _subset(data, examples, seed)
    batches = [(x[i : i + _CHUNK], y[i : i + _CHUNK]) for i in range(0, x.shape[0], _CHUNK)]
    numbers: dict[str, Any] = {"examples": int(x.shape[0]), "mode": mode}
    if batch_size is not None:
        numbers["batch_size"] = batch_size
    common = {"seed": seed, "mode": mode}
    with _untouched(model, optimizer), warnings.catch_warnings():
        # said once by the caller (the CLI) or in the docstring; not on every measurement
        warnings.filterwarnings("ignore", message="batch norm/dropout")
        stats = gradient_statistics(model, loss_fn, batches, **common)
        numbers.update(stats.to_dict())
        if batch_size is not None:
            numbers["noise_std"] = math.sqrt(stats.trace_sigma / batch_size)
        b, low, high = b_simple_interval(model, loss_fn, batches, **common)
        numbers.update(b_simple=b, b_simple_low=low, b_simple_high=high)
        numbers.update(dead_units(model, batches, mode=mode).to_dict())
        numbers["param_norm"] = param_norm(model)

        allowed = spend.allows("step size (sharpness)", 60)
        if allowed is not None:
            ss = step_size(model, loss_fn, batches, optimizer, lr=lr, max_hvps=allowed, **common)
            spend.hvps += ss.pop("hvps")
            numbers.update({k: v for k, v in ss.items() if k != "preconditioner"})
            if "preconditioner" in ss:
                numbers["preconditioner"] = ss["preconditioner"]
        allowed = spend.allows("λmin and κ (both ends of the spectrum)", 80)
        if allowed is not None:
            ends = measure(
                model, loss_fn, batches, ("loss", "grad_norm", "lambda_max", "lambda_min"),
                max_hvps=allowed, **common,
            )
            spend.hvps += ends.pop("hvps")
            ends.pop("seconds")
            numbers.update(ends)
        if layers:
            allowed = spend.allows("per-layer curvature", 60)
            if allowed is not None:
                per_layer = layerwise(
                    model, loss_fn, batches, optimizer=optimizer, max_hvps=max(allowed // 4, 8),
                    **common,
                )
                spend.hvps += per_layer.hvps
                numbers["limiting_layer"] = per_layer.limiting_layer
                numbers["layer_grad_norms"] = {r.name: r.grad_norm for r in per_layer.rows}
    if "loss" not in numbers:
        numbers["loss"] = _loss(model, loss_fn, batches, optimizer, mode)
    for key, value in history.items():
        numbers[key] = value
    numbers["hvps"] = spend.hvps
    numbers["seconds"] = spend.elapsed()
    return Diagnosis.from_numbers(numbers, skipped=spend.skipped, thresholds=thresholds)
