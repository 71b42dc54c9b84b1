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
import random
import time
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from ravine._checks import check_int
from ravine.data.sources import fixed_examples
from ravine.diagnostics.classify import param_norm
from ravine.diagnostics.findings import Diagnosis, FindingThresholds
from ravine.diagnostics.hvp import DiagnosticsWarning, HessianOperator, LossFn, check_choice
from ravine.diagnostics.layerwise import layerwise, noise_interval, parameter_blocks
from ravine.diagnostics.noise import as_tensors
from ravine.diagnostics.sharpness import optimizer_view, step_size
from ravine.diagnostics.spectrum import ExtremesResult, operator_extremes
from ravine.diagnostics.units import dead_units
from ravine.optim import true_params

__all__ = ["Budget", "diagnose", "untouched", "DEFAULT_HVPS", "HISTORY_KEYS"]

#: Hessian-vector products of the default budget (about 2-6 s on a 10^4-parameter CNN and
#: 1024 examples on 2 CPU cores; see BENCHMARKS.md).
DEFAULT_HVPS = 100
#: Keys a caller (a monitor, a run directory) may pass in ``history``.
HISTORY_KEYS = ("loss_history", "grad_norm_history", "clip_fraction", "clip_norm")
_CHUNK = 256
#: Relative Lanczos residual: eigenvalue errors are about its square, ample for the rules.
TOL = 1e-2


@dataclass(frozen=True)
class Budget:
    """How much :func:`diagnose` may spend: Hessian-vector products and/or wall seconds."""

    hvps: int | None = DEFAULT_HVPS
    seconds: float | None = None

    @classmethod
    def of(cls, budget: Any) -> Budget:
        """From ``None`` (the default), an int (HVPs), a dict ``{"hvps", "seconds"}``."""
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

    @property
    def deadline(self) -> float | None:
        """The ``time.perf_counter()`` value at which the time budget runs out."""
        return None if self.budget.seconds is None else self.start + self.budget.seconds

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
def untouched(model: nn.Module) -> Iterator[None]:
    """Leave training exactly as it was: the torch (CPU and CUDA), Python and NumPy random
    streams, every module's ``training`` flag and every buffer (batch-norm statistics)."""
    devices = sorted(
        {t.device.index or 0 for t in (*model.parameters(), *model.buffers()) if t.is_cuda}
    )
    modes = [(m, m.training) for m in model.modules()]
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        with torch.no_grad():
            for buffer, saved in buffers:
                buffer.copy_(saved)
        for module, training in modes:
            module.training = training


@contextlib.contextmanager
def _measuring(model: nn.Module, optimizer: Optimizer | None) -> Iterator[None]:
    """:func:`untouched`, at the true θ of interim-point optimizers."""
    with untouched(model), true_params(optimizer):  # a no-op for None or another optimizer
        yield


def input_scale_ratio(x: Tensor) -> float:
    """max/min over input features of their mean square E[x_j²] (features that are 0 on every
    example left out; ``nan`` for non-float inputs such as token ids)."""
    if not x.is_floating_point() or x.dim() < 2:
        return math.nan
    squares = x.detach().double().pow(2).mean(dim=0).flatten()
    squares = squares[squares > 0]
    if squares.numel() < 2:
        return math.nan
    return float(squares.max() / squares.min())


def _subset(data: Any, examples: int, seed: int) -> tuple[Tensor, Tensor]:
    x, y = as_tensors(data)
    keep = fixed_examples(x.shape[0], examples, seed)
    return x[keep], y[keep]


def _chunks(x: Tensor, y: Tensor) -> list[tuple[Tensor, Tensor]]:
    return [(x[i : i + _CHUNK], y[i : i + _CHUNK]) for i in range(0, x.shape[0], _CHUNK)]


def _by_block(op: HessianOperator, model: nn.Module, vector: Tensor) -> dict[str, float]:
    """The squared norm of ``vector``'s part in each layer (leaf module owning parameters)."""
    parts = op.unflatten(vector)
    return {
        name: float(sum(parts[i].double().pow(2).sum() for i in members))
        for name, members in parameter_blocks(model, op.names, op.params, "module")
    }


def _curvature(
    model: nn.Module, loss_fn: LossFn, batches: list, spend: _Spend, *, seed: int, mode: str
) -> tuple[dict[str, Any], ExtremesResult | None]:
    """Loss, gradient per layer and both ends of the Hessian spectrum (one Lanczos run); the
    layer holding most of the sharpest direction limits the step."""
    op = HessianOperator(model, loss_fn, batches, mode=mode, seed=seed)
    loss, gradient = op.loss_and_gradient()
    out: dict[str, Any] = {
        "loss": loss,
        "grad_norm": float(torch.linalg.vector_norm(gradient)),
        "n_parameters": op.dim,
        "layer_grad_norms": {k: math.sqrt(v) for k, v in _by_block(op, model, gradient).items()},
    }
    allowed = spend.allows("λmax, λmin and κ (Lanczos)", 60)
    if allowed is None:
        return out, None
    ext = operator_extremes(
        op.matvec,
        op.dim,
        tol=TOL,
        max_steps=allowed,
        which="both",
        seed=seed,
        device=op.device,
        eps=float(torch.finfo(op.dtype).eps),
        return_eigenvectors=True,
        deadline=spend.deadline,
    )
    spend.hvps += ext.hvps
    out.update(
        lambda_max=ext.lambda_max,
        lambda_min=ext.lambda_min,
        lambda_max_residual=ext.residual_max,
        lambda_min_residual=ext.residual_min,
        condition_number=ext.condition_number,
        negative_curvature=ext.negative_curvature,
        lanczos_converged=ext.converged,
    )
    if ext.eigenvectors_max is not None:
        mass = _by_block(op, model, ext.eigenvectors_max[0])
        out["limiting_layer"] = max(mass, key=mass.__getitem__)
    return out, ext


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
    layers: bool = False,
    history: Mapping[str, Any] | None = None,
    examples: int = 1024,
    curvature_examples: int = 256,
    thresholds: FindingThresholds | None = None,
) -> Diagnosis:
    """Why does this network train slowly or blow up, and what should change? Ranked findings.

    Args:
        model: the network at its current parameters.
        loss_fn: ``loss_fn(model(x), y)``, the batch-mean loss.
        data: a batch ``(x, y)``, a dataset (``ArrayDataset``, ``TensorDataset``, any map-style
            dataset of ``(x, y)`` items), a DataLoader or an iterable of batches; a fixed seeded
            subset of ``examples`` of its examples is measured.
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
        layers: also run :func:`~ravine.diagnostics.layerwise.layerwise` (λmax of every layer's
            diagonal Hessian block: several Lanczos runs, within the budget); its numbers join
            ``numbers["layers"]``. Without it the limiting layer is the one holding most of the
            sharpest eigenvector.
        history: recent training numbers the caller recorded (:data:`HISTORY_KEYS`):
            ``loss_history``, ``grad_norm_history`` (pre-clip norms), ``clip_fraction``,
            ``clip_norm``.
        examples: how many examples of ``data`` the gradient statistics use.
        curvature_examples: how many of those the Hessian-vector products use (the cost of
            each product grows with it).
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
    check_int("curvature_examples", curvature_examples, 1)
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
    batches, curvature_batches = (
        _chunks(x, y),
        _chunks(x[:curvature_examples], y[:curvature_examples]),
    )
    numbers: dict[str, Any] = {"examples": int(x.shape[0]), "mode": mode}
    if batch_size is not None:
        numbers["batch_size"] = batch_size
    common = {"seed": seed, "mode": mode}
    with _measuring(model, optimizer), warnings.catch_warnings():
        # the caller (the CLI, a monitor) says this once; not on every measurement
        warnings.simplefilter("ignore", DiagnosticsWarning)
        noise = noise_interval(model, loss_fn, batches, **common)
        numbers.update(noise.to_dict())
        if batch_size is not None:
            numbers["noise_std"] = math.sqrt(noise.trace_sigma / batch_size)
        numbers.update(dead_units(model, batches, mode=mode).to_dict())
        numbers["param_norm"] = param_norm(model)
        numbers["input_scale_ratio"] = input_scale_ratio(x)
        curvature, ends = _curvature(model, loss_fn, curvature_batches, spend, **common)
        numbers.update(curvature)
        adaptive = optimizer is not None and optimizer_view(optimizer).adaptive
        allowed = spend.allows("preconditioned sharpness", 40) if adaptive else 0
        if allowed is not None and (optimizer is not None or lr is not None):
            steps = step_size(
                model,
                loss_fn,
                curvature_batches,
                optimizer,
                lr=lr,
                tol=TOL,
                max_hvps=max(allowed, 1),
                hessian_top=ends,
                deadline=spend.deadline,
                **common,
            )
            spend.hvps += steps.pop("hvps")
            steps.pop("loss")
            numbers.update(steps)
        if layers:
            allowed = spend.allows("per-layer curvature", 60)
            if allowed is not None:
                per_layer = layerwise(
                    model,
                    loss_fn,
                    curvature_batches,
                    optimizer=optimizer,
                    max_hvps=max(allowed // 4, 8),
                    trace_hvps=4,
                    **common,
                )
                spend.hvps += per_layer.hvps
                numbers["limiting_layer"] = per_layer.limiting_layer
                numbers["layers"] = per_layer.to_dict()
    numbers.update(history)
    numbers["hvps"] = spend.hvps
    numbers["seconds"] = spend.elapsed()
    return Diagnosis.from_numbers(numbers, skipped=spend.skipped, thresholds=thresholds)
