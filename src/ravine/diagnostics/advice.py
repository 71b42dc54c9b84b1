"""Plain-language advice from measured numbers.

:func:`advice` reads a mapping of numbers (the keys of :func:`ravine.diagnostics.measure` and
:func:`ravine.diagnostics.classify`, plus the training settings) and returns sentences a user can
act on. Every rule uses only the keys it needs and is skipped when they are missing, so the
function is testable from numbers alone.

Rules (thresholds are module constants):

* Step size. On the quadratic model ``½ θᵀHθ``, gradient descent with step ε multiplies the
  component along the eigenvector of λ by ``1 - ελ``; it diverges when ``ε > 2/λmax``. Heavy-ball
  momentum α (the lecture's Algorithm 8.2) moves the bound to ``2(1 + α)/λmax``. ratio =
  ``lr / bound``: > 1 diverges, > ``EDGE_OF_STABILITY`` oscillates, < ``FAR_BELOW_BOUND`` leaves
  room to raise lr. (For adaptive methods the bound applies to the preconditioned Hessian, so the
  rule is skipped when ``adaptive`` is true.)
* Batch size against the simple noise scale B_simple = tr(Σ)/|G|² (McCandlish et al., 2018):
  batches far below it (``< B_simple / BATCH_FACTOR``) are noise-dominated, and doubling the batch
  nearly halves the steps needed; batches far above it (``> BATCH_FACTOR · B_simple``) waste
  compute, since the extra examples barely reduce the steps.
* Clipping: the fraction of steps where gradient clipping fired.
* Conditioning κ = |λmax|/|λmin| (when λmin > 0): on a quadratic, gradient descent needs O(κ)
  steps and momentum O(√κ); above ``ILL_CONDITIONED`` momentum/Nesterov and adaptive methods are
  recommended.
* Negative curvature (λmin < 0) and the label of :func:`~ravine.diagnostics.classify`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = [
    "advice",
    "advice_markdown",
    "EDGE_OF_STABILITY",
    "FAR_BELOW_BOUND",
    "BATCH_FACTOR",
    "ILL_CONDITIONED",
    "WELL_CONDITIONED",
    "CLIP_OFTEN",
    "CLIP_SOMETIMES",
]

EDGE_OF_STABILITY = 0.5
FAR_BELOW_BOUND = 0.01
BATCH_FACTOR = 10.0
ILL_CONDITIONED = 1e3
WELL_CONDITIONED = 10.0
CLIP_OFTEN = 0.5
CLIP_SOMETIMES = 0.05


def _number(numbers: Mapping[str, Any], key: str) -> float | None:
    value = numbers.get(key)
    if value is None or isinstance(value, (bool, str)):
        return None
    value = float(value)
    return value if not math.isnan(value) else None


def _fmt(x: float) -> str:
    return f"{x:.3g}"


def _step_size(numbers: Mapping[str, Any]) -> list[str]:
    lr, lmax = _number(numbers, "lr"), _number(numbers, "lambda_max")
    if lr is None or lmax is None or numbers.get("adaptive"):
        return []
    if lmax <= 0:
        return [
            f"The Hessian has no positive curvature (λmax = {_fmt(lmax)}), so no step-size bound "
            "applies here; the loss keeps decreasing along the gradient."
        ]
    momentum = _number(numbers, "momentum") or 0.0
    bound = 2.0 * (1.0 + momentum) / lmax
    name = "2/λmax" if momentum == 0 else f"2(1+α)/λmax with momentum α = {_fmt(momentum)}"
    ratio = lr / bound
    if ratio > 1:
        return [
            f"The learning rate {_fmt(lr)} exceeds the stability bound {name} = {_fmt(bound)} "
            f"({_fmt(ratio)}x): on the local quadratic, gradient descent diverges along the "
            f"sharpest direction. Lower the learning rate below {_fmt(bound)} "
            f"(e.g. {_fmt(0.5 * bound)}) or add warm-up."
        ]
    if ratio > EDGE_OF_STABILITY:
        return [
            f"The learning rate {_fmt(lr)} is {_fmt(ratio)} of the stability bound {name} = "
            f"{_fmt(bound)}: the iterates oscillate along the sharpest direction. If the loss is "
            "noisy or spiky, lower the learning rate or decay it."
        ]
    if ratio < FAR_BELOW_BOUND:
        return [
            f"The learning rate {_fmt(lr)} is only {_fmt(ratio)} of the stability bound {name} "
            f"= {_fmt(bound)}: the sharpest direction would tolerate a much larger step. Try a "
            "larger learning rate (and measure λmax again, since it changes during training)."
        ]
    return [
        f"The learning rate {_fmt(lr)} is within the stability bound {name} = {_fmt(bound)} "
        f"({_fmt(ratio)} of it)."
    ]


def _batch_size(numbers: Mapping[str, Any]) -> list[str]:
    m, b_simple = _number(numbers, "batch_size"), _number(numbers, "b_simple")
    if m is None or b_simple is None:
        return []
    if math.isinf(b_simple):
        return [
            "The full-batch gradient is zero here (B_simple is infinite): every minibatch "
            "gradient is pure noise, which is expected at a stationary point."
        ]
    if m < b_simple / BATCH_FACTOR:
        return [
            f"The batch size {int(m)} is far below the gradient noise scale B_simple ≈ "
            f"{_fmt(b_simple)}: minibatch gradients are dominated by noise. Larger batches (up to "
            f"about {_fmt(b_simple)}) would cut the number of steps almost proportionally; with "
            "this batch size, keep the learning rate small or decay it."
        ]
    if m > BATCH_FACTOR * b_simple:
        return [
            f"The batch size {int(m)} is far above the gradient noise scale B_simple ≈ "
            f"{_fmt(b_simple)}: larger batches barely reduce the number of steps here. A batch "
            f"near {_fmt(b_simple)} with more steps gives the same progress for less compute."
        ]
    return [
        f"The batch size {int(m)} is within a factor {_fmt(BATCH_FACTOR)} of the gradient noise "
        f"scale B_simple ≈ {_fmt(b_simple)}, a good trade-off between steps and compute."
    ]


def _clipping(numbers: Mapping[str, Any]) -> list[str]:
    fraction = _number(numbers, "clip_fraction")
    if fraction is None:
        return []
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"clip_fraction must be in [0, 1], got {fraction!r}")
    percent = f"{100 * fraction:.3g}%"
    if fraction >= CLIP_OFTEN:
        return [
            f"Gradient clipping fired on {percent} of the steps: the clipping threshold, not the "
            "learning rate, sets the step length. Raise clip_norm to about the typical gradient "
            "norm, or lower the learning rate."
        ]
    if fraction >= CLIP_SOMETIMES:
        return [
            f"Gradient clipping fired on {percent} of the steps: it is taming frequent gradient "
            "spikes. That is fine while the loss is stable; otherwise lower the learning rate."
        ]
    return [
        f"Gradient clipping fired on {percent} of the steps: it only guards against rare "
        "spikes and does not shape training."
    ]


def _conditioning(numbers: Mapping[str, Any]) -> list[str]:
    kappa, lmin = _number(numbers, "condition_number"), _number(numbers, "lambda_min")
    if kappa is None or lmin is None or lmin <= 0:
        return []
    if kappa >= ILL_CONDITIONED:
        return [
            f"The Hessian is ill-conditioned (κ = |λmax|/|λmin| ≈ {_fmt(kappa)}): plain gradient "
            "descent needs O(κ) steps on such a quadratic, momentum or Nesterov O(√κ). Use "
            "momentum; adaptive methods (RMSProp, Adam) help further when the badly scaled "
            "directions align with individual parameters."
        ]
    if kappa >= WELL_CONDITIONED:
        return [
            f"The Hessian is moderately conditioned (κ ≈ {_fmt(kappa)}): momentum speeds "
            "gradient descent up by about √κ."
        ]
    return [
        f"The Hessian is well conditioned (κ ≈ {_fmt(kappa)}): plain SGD is adequate; momentum "
        "and adaptive step sizes gain little here."
    ]


def _curvature_sign(numbers: Mapping[str, Any]) -> list[str]:
    lmin, lmax = _number(numbers, "lambda_min"), _number(numbers, "lambda_max")
    if lmin is None or lmin >= 0 or numbers.get("negative_curvature") is False:
        return []
    ratio = f", {_fmt(abs(lmin) / abs(lmax))} of |λmax|" if lmax else ""
    return [
        f"The Hessian has negative curvature (λmin = {_fmt(lmin)}{ratio}): this is not a "
        "minimum, and Newton's method cannot be used as is. Gradient noise and momentum help "
        "escape along the negative-curvature direction."
    ]


_LABEL_ADVICE = {
    "flat": (
        "The loss is nearly flat here: the gradient, its per-example spread and the curvature "
        "are all tiny relative to the loss. Raise the learning rate, and check for saturated "
        "activations or dead ReLUs (better initialization or normalization layers help)."
    ),
    "saddle": (
        "The point looks like a saddle: the gradient is below the minibatch noise while the "
        "Hessian has a significantly negative eigenvalue. Keep training with SGD noise and "
        "momentum; do not stop early here."
    ),
    "minimum-like": (
        "The point looks like a minimum: the gradient is below the minibatch noise and there is "
        "no significant negative curvature. Further progress needs a smaller learning rate or a "
        "larger batch (to reduce the noise), or stop training."
    ),
}


def advice(numbers: Mapping[str, Any]) -> list[str]:
    """Sentences a user can act on, from measured numbers.

    Recognized keys (all optional): ``lr``, ``momentum`` (heavy-ball α), ``adaptive`` (bool),
    ``lambda_max``, ``lambda_min``, ``condition_number``, ``negative_curvature`` (bool),
    ``batch_size``, ``b_simple``, ``clip_fraction`` (in [0, 1]) and ``label`` (from
    :func:`~ravine.diagnostics.classify`). See the module docstring for the rules.
    """
    sentences = (
        _step_size(numbers)
        + _batch_size(numbers)
        + _clipping(numbers)
        + _curvature_sign(numbers)
        + _conditioning(numbers)
    )
    label = numbers.get("label")
    if isinstance(label, str) and label in _LABEL_ADVICE:
        sentences.append(_LABEL_ADVICE[label])
    return sentences


def advice_markdown(numbers: Mapping[str, Any], *, title: str = "Diagnostics advice") -> str:
    """The advice as a markdown section (``## title`` and a bullet list)."""
    items = advice(numbers) or ["No advice: none of the recognized numbers were measured."]
    return f"## {title}\n\n" + "\n".join(f"- {s}" for s in items) + "\n"
