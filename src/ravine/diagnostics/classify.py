"""What kind of point is this? :func:`classify` labels the current parameters "flat", "saddle",
"minimum-like", "ill-conditioned" or "descending", with the numbers behind the label
(:func:`classify_numbers` applies the same rules to numbers alone)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from ravine._checks import check_positive
from ravine.diagnostics.findings import (
    FLAT,
    ILL_CONDITIONED,
    PARAM_SCALE,
    SADDLE_GRADIENT,
    SADDLE_NEGATIVE,
    gradient_progress,
    sensitivities,
    significant_negative,
)
from ravine.diagnostics.hvp import LossFn, as_batches, checked_batch
from ravine.diagnostics.measure import measure

__all__ = ["LABELS", "ClassifyThresholds", "Classification", "classify", "classify_numbers"]

LABELS = ("flat", "saddle", "minimum-like", "ill-conditioned", "descending")


@dataclass(frozen=True)
class ClassifyThresholds:
    """Thresholds of :func:`classify_numbers` (all dimensionless; the defaults are those of
    :class:`~ravine.diagnostics.findings.FindingThresholds`, so labels and findings agree).

    Attributes:
        flat: the largest sensitivity (see :func:`classify_numbers`) of a flat region.
        negative: τ: λmin counts as significantly negative when ``λmin < -τ · |λmax|`` (and
            ``|λmin|`` exceeds its Lanczos residual). 0.1 sits far above round-off and Lanczos
            error; trained networks near interpolation show ratios of 1e-3 to 3e-2.
        gradient: the largest gradient progress ``|G|²/(2λL)`` of a saddle.
        ill_conditioned: κ at or above which a point with a large gradient is ill-conditioned.
        param_scale: the smallest parameter scale of the sensitivities.
    """

    flat: float = FLAT
    negative: float = SADDLE_NEGATIVE
    gradient: float = SADDLE_GRADIENT
    ill_conditioned: float = ILL_CONDITIONED
    param_scale: float = PARAM_SCALE

    def __post_init__(self) -> None:
        check_positive("flat", self.flat)
        check_positive("negative", self.negative)
        check_positive("gradient", self.gradient)
        check_positive("ill_conditioned", self.ill_conditioned)
        check_positive("param_scale", self.param_scale)


@dataclass(frozen=True)
class Classification:
    """A label with the numbers and thresholds behind it and a one-sentence reason."""

    label: str
    reason: str
    numbers: dict[str, float | int | bool]
    thresholds: dict[str, float] = field(default_factory=dict)


_CLASSIFY_KEYS = (
    "loss",
    "grad_sq_norm",
    "trace_sigma",
    "lambda_max",
    "lambda_min",
    "param_norm",
    "batch_size",
)


def classify_numbers(
    numbers: Mapping[str, float], thresholds: ClassifyThresholds | None = None
) -> Classification:
    """Label a point from its numbers; the rules of :func:`classify`.

    Needs ``loss`` (L), ``grad_sq_norm`` (|G|²), ``trace_sigma`` (tr Σ, per-example),
    ``lambda_max``, ``lambda_min``, ``param_norm`` (|θ|) and ``batch_size`` (m); uses
    ``lambda_min_residual`` (or ``residual_min``) when present. With the sensitivities — the
    relative change of the loss under a relative change ``δθ = ε s`` of the parameters, per ε,
    with the parameter scale ``s = max(|θ|, param_scale)`` (a zero-initialized net has no
    relative scale of its own) —

    .. math:: s_{grad} = \\frac{|G|\\,s}{L}, \\quad
              s_{noise} = \\frac{\\sqrt{\\operatorname{tr}Σ}\\,s}{L}, \\quad
              s_{curv} = \\frac{\\max(|λ_{max}|, |λ_{min}|)\\,s^2}{L},

    and the gradient progress ``p = |G|² / (2 λ L)``, ``λ = max(|λmax|, |λmin|)`` (the fraction
    of the loss one step of ``1/λ`` is guaranteed to remove on a λ-smooth model), the label is
    the first that applies:

    1. **flat**: all three sensitivities ``<= flat``. The gradient is small, and not because
       large per-example gradients cancel (``s_noise`` is small too): the loss barely changes in
       any direction, for any example.
    2. **saddle**: ``p <= gradient`` and ``λmin < -negative·|λmax|`` with ``|λmin|`` above its
       Lanczos residual. The gradient is judged against the loss, not only the noise: near
       interpolation the loss is tiny, p is large, and a trained network whose small negative
       eigenvalues come from the residual part of the Hessian is not a saddle.
    3. **minimum-like**: the gradient is small — below the noise of one minibatch,
       ``|G|² <= tr(Σ)/m`` (``B_simple >= m``), or ``p <= gradient`` — and there is no
       significant negative curvature.
    4. **ill-conditioned**: ``κ = |λmax|/|λmin| >= ill_conditioned``.
    5. **descending**: none of the above (a large gradient on benign curvature).
    """
    thresholds = thresholds or ClassifyThresholds()
    missing = [k for k in _CLASSIFY_KEYS if numbers.get(k) is None]
    if missing:
        raise ValueError(f"numbers is missing {', '.join(missing)} (needed to classify)")
    loss = abs(float(numbers["loss"]))
    grad_sq, trace = float(numbers["grad_sq_norm"]), float(numbers["trace_sigma"])
    lmax, lmin = float(numbers["lambda_max"]), float(numbers["lambda_min"])
    theta, m = float(numbers["param_norm"]), float(numbers["batch_size"])
    residual = numbers.get("lambda_min_residual", numbers.get("residual_min"))
    residual = None if residual is None else float(residual)
    sens = sensitivities(loss, grad_sq, lmax, lmin, theta, trace, thresholds.param_scale)
    progress = gradient_progress(grad_sq, loss, lmax, lmin)
    kappa = abs(lmax) / abs(lmin) if lmin != 0 else math.inf
    out = dict(numbers)
    out.update(sens)
    out["condition_number"] = kappa
    out["noise_std"] = math.sqrt(trace / m)
    out["gradient_progress"] = progress
    out["negative_ratio"] = lmin / abs(lmax) if lmax != 0 else (-math.inf if lmin < 0 else 0.0)
    below_noise = grad_sq <= trace / m
    stalled = progress <= thresholds.gradient
    negative = significant_negative(lmin, lmax, thresholds.negative, residual)
    worst = max(sens.values())
    if worst <= thresholds.flat:
        label = "flat"
        reason = (
            f"gradient, per-example spread and curvature all change the loss by at most "
            f"{worst:.3g} per relative parameter change (flat threshold {thresholds.flat:g})"
        )
    elif stalled and negative:
        label = "saddle"
        reason = (
            f"a gradient step removes at most {progress:.3g} of the loss "
            f"(<= {thresholds.gradient:g}) and λmin = {lmin:.3g} is below "
            f"-{thresholds.negative:g}·|λmax| = {-thresholds.negative * abs(lmax):.3g}"
        )
    elif (below_noise or stalled) and not negative:
        label = "minimum-like"
        reason = (
            f"|G|² = {grad_sq:.3g} (minibatch noise tr(Σ)/m = {trace / m:.3g}, gradient "
            f"progress {progress:.3g}) is small and λmin = {lmin:.3g} is not significantly "
            "negative"
        )
    elif kappa >= thresholds.ill_conditioned:
        label = "ill-conditioned"
        reason = f"κ = |λmax|/|λmin| = {kappa:.3g} >= {thresholds.ill_conditioned:g}"
    else:
        label = "descending"
        reason = (
            f"a gradient step removes up to {progress:.3g} of the loss (|G|² = {grad_sq:.3g}, "
            f"minibatch noise {trace / m:.3g}) and κ = {kappa:.3g} < "
            f"{thresholds.ill_conditioned:g}"
        )
    out["label"] = label
    return Classification(label, reason, out, asdict(thresholds))


def param_norm(model: nn.Module) -> float:
    squares = [p.detach().double().pow(2).sum() for p in model.parameters() if p.requires_grad]
    return float(torch.stack(squares).sum().sqrt())


def _first_batch_size(data: Any) -> int:
    for index, batch in enumerate(as_batches(data)):
        return int(checked_batch(batch, index)[0].shape[0])
    raise ValueError("data has no batches")


def classify(
    model: nn.Module,
    loss_fn: LossFn,
    data: Any,
    *,
    batch_size: int | None = None,
    thresholds: ClassifyThresholds | None = None,
    seed: int = 0,
    mode: str = "eval",
    backend: str = "auto",
    tol: float = 1e-3,
    max_hvps: int = 300,
) -> Classification:
    """Classify the current point of ``model`` on ``data`` (see :func:`classify_numbers`).

    Measures the loss, the per-example gradient statistics (|G|², tr Σ), λmax and λmin (one
    Lanczos run to relative tolerance ``tol``) and |θ|. ``batch_size`` is the training batch
    size m against whose noise the gradient is judged (default: the size of the first batch of
    ``data``; pass the real one when ``data`` is the whole training set).
    """
    data = as_batches(data, seed=seed)  # read once: measured and counted on the same batches
    numbers = measure(
        model,
        loss_fn,
        data,
        ("loss", "lambda_max", "lambda_min", "noise"),
        batch_size=batch_size,
        seed=seed,
        mode=mode,
        backend=backend,
        tol=tol,
        max_hvps=max_hvps,
    )
    numbers["param_norm"] = param_norm(model)
    numbers.setdefault("batch_size", _first_batch_size(data))
    return classify_numbers(numbers, thresholds)
