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

from ravine._validate import check_positive
from ravine.diagnostics.advice import ILL_CONDITIONED
from ravine.diagnostics.hvp import LossFn, as_batches, checked_batch
from ravine.diagnostics.measure import measure

__all__ = ["LABELS", "ClassifyThresholds", "Classification", "classify", "classify_numbers"]

LABELS = ("flat", "saddle", "minimum-like", "ill-conditioned", "descending")


@dataclass(frozen=True)
class ClassifyThresholds:
    """Thresholds of :func:`classify_numbers` (all dimensionless).

    Attributes:
        flat: the largest sensitivity (see :func:`classify_numbers`) of a flat region.
        negative: λmin counts as significantly negative when ``λmin < -negative · |λmax|``.
        ill_conditioned: κ at or above which a point with a large gradient is ill-conditioned.
    """

    flat: float = 1e-3
    negative: float = 1e-2
    ill_conditioned: float = ILL_CONDITIONED

    def __post_init__(self) -> None:
        check_positive("flat", self.flat)
        check_positive("negative", self.negative)
        check_positive("ill_conditioned", self.ill_conditioned)


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
    ``lambda_max``, ``lambda_min``, ``param_norm`` (|θ|) and ``batch_size`` (m). With the
    sensitivities — the
    relative change of the loss under a relative change ``δθ = ε|θ|`` of the parameters, per ε —

    .. math:: s_{grad} = \\frac{|G|\\,|θ|}{L}, \\quad
              s_{noise} = \\frac{\\sqrt{\\operatorname{tr}Σ}\\,|θ|}{L}, \\quad
              s_{curv} = \\frac{\\max(|λ_{max}|, |λ_{min}|)\\,|θ|^2}{L},

    the label is the first that applies:

    1. **flat**: all three sensitivities ``<= flat``. The gradient is small, and not because
       large per-example gradients cancel (``s_noise`` is small too): the loss barely changes in
       any direction, for any example.
    2. **saddle**: the gradient is small, ``|G|² <= tr(Σ)/m`` (below the noise of one minibatch
       of the training batch size, i.e. ``B_simple >= m``), and ``λmin < -negative·|λmax|``.
    3. **minimum-like**: the gradient is small and there is no significant negative curvature.
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
    scale = theta / loss if loss > 0 else math.inf
    sensitivities = {
        "grad_sensitivity": math.sqrt(grad_sq) * scale,
        "noise_sensitivity": math.sqrt(trace) * scale,
        "curvature_sensitivity": max(abs(lmax), abs(lmin)) * theta * scale,
    }
    kappa = abs(lmax) / abs(lmin) if lmin != 0 else math.inf
    out = dict(numbers)
    out.update(sensitivities)
    out["condition_number"] = kappa
    out["noise_std"] = math.sqrt(trace / m)
    small = grad_sq <= trace / m
    negative = lmin < -thresholds.negative * abs(lmax)
    worst = max(sensitivities.values())
    if worst <= thresholds.flat:
        label = "flat"
        reason = (
            f"gradient, per-example spread and curvature all change the loss by at most "
            f"{worst:.3g} per relative parameter change (flat threshold {thresholds.flat:g})"
        )
    elif small and negative:
        label = "saddle"
        reason = (
            f"|G|² = {grad_sq:.3g} is below the minibatch noise tr(Σ)/m = {trace / m:.3g} and "
            f"λmin = {lmin:.3g} < -{thresholds.negative:g}·|λmax| = "
            f"{-thresholds.negative * abs(lmax):.3g}"
        )
    elif small:
        label = "minimum-like"
        reason = (
            f"|G|² = {grad_sq:.3g} is below the minibatch noise tr(Σ)/m = {trace / m:.3g} and "
            f"λmin = {lmin:.3g} is not significantly negative"
        )
    elif kappa >= thresholds.ill_conditioned:
        label = "ill-conditioned"
        reason = f"κ = |λmax|/|λmin| = {kappa:.3g} >= {thresholds.ill_conditioned:g}"
    else:
        label = "descending"
        reason = (
            f"|G|² = {grad_sq:.3g} exceeds the minibatch noise tr(Σ)/m = {trace / m:.3g} and "
            f"κ = {kappa:.3g} < {thresholds.ill_conditioned:g}"
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
