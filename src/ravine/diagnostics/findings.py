"""Ranked, coded, machine-checkable findings from measured numbers.

:func:`find` reads a flat mapping of numbers (what :func:`~ravine.diagnostics.measure`,
:func:`~ravine.diagnostics.classify` and the other instruments produce, plus the training
settings) and returns :class:`Finding` records: a stable ``code``, a ``severity``, a message
with the numbers, the ``evidence`` it used and a machine-readable ``fix``. It is pure — numbers
in, findings out; no model, no torch — so every rule is testable from numbers alone. Each rule
uses only the keys it needs and is skipped (with the reason, see :meth:`Diagnosis.from_numbers`)
when they are missing. Unknown keys raise, so a misspelled key cannot silently switch a rule off.

Rules (thresholds are the fields of :class:`FindingThresholds`; sources in brackets):

``lr-too-high`` (critical)
    On the local quadratic ``½ θᵀHθ`` gradient descent with step ε multiplies the component along
    the eigenvector of λ by ``1 − ελ`` and diverges when ``ε > 2/λmax`` [lecture, "Conditioning";
    Goodfellow et al. 2016, §8.2.1]. Heavy-ball momentum α (Algorithm 8.2) moves the edge to
    ``2(1 + α)/λmax``, Nesterov momentum (Algorithm 8.3) to ``2(1 + α)/((1 + 2α) λmax)``. For
    adaptive methods the same edge holds for the *preconditioned* sharpness
    ``λmax(P^{-1/2} H P^{-1/2})``: ``2/ε`` for AdaGrad / RMSProp, ``(2 + 2β1)/((1 − β1) ε)`` for
    Adam (Cohen et al. 2022, "Adaptive gradient methods at the edge of stability"). Fires when
    ``lr_ratio = lr / lr_bound > lr_high``; fix ``lr = safe_fraction · lr_bound``. An adaptive
    optimizer measured with the plain Hessian (``sharpness_kind = "hessian"``, or only
    ``lambda_max``) is a wrong measurement: the step-size rules are skipped, never the SGD bound
    applied.
``lr-too-low`` (warning)
    ``lr_ratio < lr_low`` and, when known, the best step along the gradient
    ``ε* = gᵀg / gᵀHg`` exceeds ``lr_star_factor · lr`` (the loss along −g keeps falling well past
    the current step). Fix ``lr = min(safe_fraction · lr_bound, ε*)``. Never together with a
    finding that lowers the learning rate.
    With B_simple and m known, ε* is discounted for the minibatch noise, ``ε*/(1 + B_simple/m)``
    (McCandlish et al. 2018, eq. 2.6; the lecture's reason for decaying steps): near a minimum,
    where the noise dominates, a small step is right. For heavy ball and Nesterov the suggested
    lr is ``ε*(1 − α)``, whose effective step ``ε/(1 − α)`` is ε*.
``batch-too-small`` / ``batch-too-large`` (warning)
    The simple noise scale ``B_simple = tr(Σ)/|G|²`` (McCandlish et al. 2018, "An empirical model
    of large-batch training") is the batch size where noise and signal balance; the lecture's
    "ERM Gradient Properties" (std ∝ 1/√m) is why. Fires only when the whole confidence interval
    is far away: ``m < b_simple_low / batch_factor`` (noise-dominated steps) or
    ``m > batch_factor · b_simple_high`` (wasted compute); an infinite ``B_simple`` with a finite
    ``b_simple_low`` (the mean gradient not resolved by the examples measured) is judged by that
    lower bound. Fix: ``batch_size ≈ B_simple`` (its lower bound when infinite; at most
    ``n_examples``) with the learning rate scaled linearly with the batch (Goyal et al. 2017;
    square-root scaling for adaptive methods, Malladi et al. 2022), capped at
    ``safe_fraction · lr_bound``.
``ill-conditioned`` (warning)
    ``κ = λmax/λmin > ill_conditioned`` with ``λmin > 0`` [lecture, "Conditioning": GD needs O(κ)
    steps on a quadratic, momentum O(√κ)], or the chapter's own test [Goodfellow et al. 2016,
    §8.2.1, eq. 8.10]: a step −εg changes the loss by ``½ε²gᵀHg − εgᵀg``. The ratio of the two
    terms is ``ε/(2ε*)`` and at most ``ελmax/2 <= 1`` within the SGD bound, so the rule fires when
    it exceeds ``ill_second_order`` (0.5: the step overshoots the best step ε* along the gradient)
    although ε is within the stability bound: the gradient lies in the sharp directions, and the
    flat ones get steps of relative size ελ ≪ 1. Or the inputs' per-feature mean squares span more
    than ``input_scale`` [LeCun et al. 1998, "Efficient BackProp" §4.3: the first layer's
    curvature follows E[xxᵀ]]. Fix: standardized inputs for the last; momentum for SGD (with
    lr × (1 − α), the same effective step) [lecture, "Momentum"], an adaptive method for momentum
    [lecture, "Adaptive Step Sizes"].
``saddle`` (warning)
    Significant negative curvature, ``λmin < −saddle_negative · λmax`` and ``|λmin|`` above its
    Lanczos residual, with a gradient that cannot make progress relative to the loss: the
    descent-lemma fraction ``|G|² / (2 λ (L − loss_floor)) <= saddle_gradient`` (one step of
    ``1/λ``, ``λ = max(|λmax|, |λmin|)``, lowers the loss by at least ``|G|²/(2λ)``). Near
    interpolation the loss itself is tiny, so this fraction is large and the point is not a
    saddle — the rule that labelled a network at 99% training accuracy a saddle looked at ``|G|``
    against the noise and at ``λmin < −0.01·λmax`` only [lecture, "Neural Network Optimization
    Challenges"; Dauphin et al. 2014].
``flat`` (warning)
    The loss barely moves in any direction: the sensitivities ``|G|·s/L``, ``√tr(Σ)·s/L`` and
    ``max|λ|·s²/L`` (relative change of the loss per relative parameter change, with the parameter
    scale ``s = max(|θ|, param_scale)``) are all below ``flat`` [lecture, "Conditioning": "the
    objective function is almost flat so that g ≈ 0"].
``exploding-gradients`` (critical, warning for isolated spikes)
    A non-finite loss or gradient norm; gradient norms that grow by more than ``exploding_depth``
    from a later layer to an earlier one in ``layer_grad_norms`` (ordered input -> output); a
    ``grad_norm_history`` that grew by more than ``exploding_depth`` or spikes above
    ``spike_factor`` times its median. Fix ``clip_norm`` = the median recent gradient norm
    [lecture, "Gradient Clipping"; Pascanu et al. 2013].
``dead-units`` (warning)
    More than ``dead`` of the ReLU-family units output zero on every example (Lu et al. 2019,
    "Dying ReLU and initialization"); the worst layers are named. Fix: a smooth activation.
``clipping-always`` (warning)
    Clipping fired on at least ``clip_always`` of the recent steps: the threshold, not the
    learning rate, sets the step length [lecture, "Gradient Clipping"]. Fix ``clip_norm`` = the
    median recent gradient norm (or twice the current threshold without a history).
``healthy`` (info)
    Only when at least one rule ran and none fired.

Ranking: by severity (critical, warning, info), then by ``score`` — how many times the measured
value exceeds the rule's threshold (e.g. ``lr_ratio / lr_high``, ``lr_low / lr_ratio``,
``b_simple_low / (batch_factor · m)``), so that the worst violation comes first — then by the
order of :data:`CODES`.
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from numbers import Integral, Real
from typing import Any

from ravine._checks import check_positive, suggest

__all__ = [
    "CODES",
    "SEVERITIES",
    "OPTIMIZERS",
    "ADAPTIVE_OPTIMIZERS",
    "KNOWN_KEYS",
    "Finding",
    "Diagnosis",
    "FindingThresholds",
    "find",
    "is_known_key",
    "jsonable",
    "lr_bound",
    "gradient_progress",
    "significant_negative",
    "sensitivities",
]

SEVERITIES = ("critical", "warning", "info")

CODES: dict[str, tuple[str, str]] = {
    "lr-too-high": (
        "lr / lr_bound > lr_high: the step overshoots the sharpest direction and diverges",
        "lecture 'Conditioning'; Goodfellow et al. 2016 §8.2.1; Cohen et al. 2022 (adaptive)",
    ),
    "lr-too-low": (
        "lr / lr_bound < lr_low and ε* = gᵀg/gᵀHg > lr_star_factor · lr",
        "lecture 'Step Size Rules'; Goodfellow et al. 2016 §8.2.1",
    ),
    "batch-too-small": (
        "m < b_simple_low / batch_factor: minibatch gradients dominated by noise",
        "lecture 'ERM Gradient Properties'; McCandlish et al. 2018",
    ),
    "batch-too-large": (
        "m > batch_factor · b_simple_high: extra examples barely reduce the steps",
        "lecture 'ERM Gradient Properties'; McCandlish et al. 2018",
    ),
    "ill-conditioned": (
        "κ > ill_conditioned with λmin > 0, ½ε²gᵀHg > ill_second_order · εgᵀg within bound, "
        "or input features' mean squares spanning > input_scale",
        "lecture 'Conditioning', 'Momentum'; Goodfellow et al. 2016 §8.2.1 eq. 8.10",
    ),
    "saddle": (
        "λmin < -saddle_negative·λmax and |G|²/(2λL) <= saddle_gradient",
        "lecture 'Neural Network Optimization Challenges'; Dauphin et al. 2014",
    ),
    "flat": (
        "gradient, noise and curvature sensitivities all <= flat",
        "lecture 'Conditioning' (g ≈ 0 on flat regions)",
    ),
    "exploding-gradients": (
        "non-finite loss, layer gradient norms growing > exploding_depth toward the input, "
        "or gradient-norm history growing / spiking",
        "lecture 'Gradient Clipping'; Pascanu et al. 2013",
    ),
    "dead-units": (
        "fraction of ReLU units zero on every example > dead",
        "Lu et al. 2019 (dying ReLU)",
    ),
    "clipping-always": (
        "clip_fraction >= clip_always: clipping sets the step length",
        "lecture 'Gradient Clipping'",
    ),
    "healthy": ("no other rule fired (at least one ran)", "—"),
}

OPTIMIZERS = (
    "sgd",
    "momentum",
    "nesterov",
    "adagrad",
    "rmsprop",
    "rmsprop-nesterov",
    "adam",
    "adamw",
    "none",
)
ADAPTIVE_OPTIMIZERS = frozenset({"adagrad", "rmsprop", "rmsprop-nesterov", "adam", "adamw"})
SHARPNESS_KINDS = ("hessian", "preconditioned")

KNOWN_KEYS: frozenset[str] = frozenset(
    {
        # training settings and the step-size measurements
        "optimizer",
        "adaptive",
        "lr",
        "momentum",
        "sharpness",
        "sharpness_kind",
        "lr_bound",
        "lr_ratio",
        "lr_times_lambda_max",
        "gTg",
        "gHg",
        "gTd",
        "dHd",
        "first_order",
        "second_order",
        "predicted_change",
        "lr_star",
        "preconditioner",
        "batch_size",
        "clip_norm",
        "clip_fraction",
        # curvature (measure, hessian_extremes, hessian_trace, spectral_density)
        "lambda_max",
        "lambda_min",
        "lambda_max_residual",
        "lambda_min_residual",
        "residual_max",
        "residual_min",
        "converged",
        "lanczos_converged",
        "condition_number",
        "negative_curvature",
        "trace",
        "trace_stderr",
        "trace_hvps",
        "density_negative_mass",
        "density_lambda_max",
        "density_lambda_min",
        "density_hvps",
        "hvps",
        "hvp_backend",
        # loss, gradient and noise (measure, gradient_statistics, gradient_noise)
        "loss",
        "grad_norm",
        "grad_sq_norm",
        "trace_sigma",
        "b_simple",
        "b_simple_low",
        "b_simple_high",
        "noise_std",
        "noise_exponent",
        "param_norm",
        # classify
        "label",
        "grad_sensitivity",
        "noise_sensitivity",
        "curvature_sensitivity",
        "gradient_progress",
        "negative_ratio",
        # layers and history
        "limiting_layer",
        "layer_grad_norms",
        "dead_fraction",
        "dead_by_layer",
        "input_scale_ratio",
        "hooked_layers",
        "layers",
        "grad_norm_history",
        "loss_history",
        # bookkeeping
        "seconds",
        "examples",
        "mode",
        "n_parameters",
        "n_examples",
    }
)
# gradient_noise reports the measured std at each batch size m as ``std_m{m}``.
_KEY_PATTERN = re.compile(r"std_m\d+")

# Defaults shared with :class:`~ravine.diagnostics.classify.ClassifyThresholds`.
FLAT = 1e-3
SADDLE_NEGATIVE = 0.1
SADDLE_GRADIENT = 1e-3
ILL_CONDITIONED = 1e3
PARAM_SCALE = 1.0


def is_known_key(key: str) -> bool:
    """Whether :func:`find` accepts ``key`` (:data:`KNOWN_KEYS` or ``std_m{m}``)."""
    return key in KNOWN_KEYS or bool(_KEY_PATTERN.fullmatch(key))


@dataclass(frozen=True)
class FindingThresholds:
    """The constants of :func:`find`'s rules (see the module docstring for each rule).

    Attributes:
        lr_high: ``lr_ratio`` above which the step diverges (1 = the quadratic's edge).
        lr_low: ``lr_ratio`` below which the learning rate is far below the bound.
        lr_star_factor: ``lr-too-low`` also needs ``ε* > lr_star_factor · lr`` when ε* is known.
        safe_fraction: suggested learning rates are at most this fraction of ``lr_bound``.
        batch_factor: how far (as a factor) the batch must be from the B_simple interval.
        ill_conditioned: κ above which a positive-definite Hessian is ill-conditioned.
        ill_second_order: ``½ε²gᵀHg / εgᵀg = ε/(2ε*)`` above which the step is curvature-bound.
        input_scale: spread (max/min) of the inputs' per-feature mean squares above which the
            inputs make the loss ill-conditioned.
        saddle_negative: τ of ``λmin < −τ·λmax`` (well above round-off and Lanczos error).
        saddle_gradient: largest descent-lemma fraction ``|G|²/(2λ(L − loss_floor))`` of a saddle.
        loss_floor: the smallest loss the model can reach (0 for cross-entropy and MSE).
        flat: largest sensitivity of a flat region.
        param_scale: smallest parameter scale of the sensitivities (|θ| near 0 has no scale).
        exploding_depth: growth of gradient norms (across depth or history) that is explosive.
        spike_factor: a gradient norm above this times the median of its history is a spike.
        dead: fraction of dead units above which ``dead-units`` fires.
        clip_always: fraction of clipped steps at or above which ``clipping-always`` fires.
    """

    lr_high: float = 1.0
    lr_low: float = 0.01
    lr_star_factor: float = 10.0
    safe_fraction: float = 0.5
    batch_factor: float = 10.0
    ill_conditioned: float = ILL_CONDITIONED
    ill_second_order: float = 0.5
    input_scale: float = 1e3
    saddle_negative: float = SADDLE_NEGATIVE
    saddle_gradient: float = SADDLE_GRADIENT
    loss_floor: float = 0.0
    flat: float = FLAT
    param_scale: float = PARAM_SCALE
    exploding_depth: float = 1e3
    spike_factor: float = 10.0
    dead: float = 0.1
    clip_always: float = 0.5

    def __post_init__(self) -> None:
        for f in fields(self):
            if f.name != "loss_floor":
                check_positive(f.name, getattr(self, f.name))
        if not math.isfinite(self.loss_floor):
            raise ValueError(f"loss_floor must be a finite number, got {self.loss_floor!r}")
        for name in ("lr_low", "safe_fraction", "dead", "clip_always"):
            if getattr(self, name) > 1:
                raise ValueError(f"{name} must be <= 1, got {getattr(self, name)!r}")
        if self.lr_low >= self.lr_high:
            raise ValueError(f"lr_low must be < lr_high = {self.lr_high}, got {self.lr_low!r}")


def jsonable(value: Any) -> Any:
    """``value`` made JSON-ready: non-finite floats become ``"inf"``, ``"-inf"`` or ``"nan"``
    (always strings, never ``null``), tuples lists, mapping keys strings, numpy and torch scalars
    Python numbers."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, Integral):
        return int(value)
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, Real) or hasattr(value, "__float__"):
        x = float(value)
        if math.isnan(x):
            return "nan"
        if math.isinf(x):
            return "inf" if x > 0 else "-inf"
        return x
    return str(value)


@dataclass(frozen=True)
class Finding:
    """One ranked finding.

    Attributes:
        code: a stable string, a key of :data:`CODES`.
        severity: "critical" (training diverges or stalls), "warning" (slower than it needs to
            be) or "info".
        message: one or two sentences a user can act on, with the numbers.
        evidence: the numbers the rule used (with their uncertainty where estimated).
        fix: machine-readable settings to try, e.g. ``{"lr": 0.03}``; ``{}`` when none.
        layer: the layer the finding names, if any.
        score: how many times the measured value exceeds the rule's threshold (ranking).
    """

    code: str
    severity: str
    message: str
    evidence: dict[str, Any] = field(default_factory=dict)
    fix: dict[str, Any] = field(default_factory=dict)
    layer: str | None = None
    score: float = 1.0

    def __post_init__(self) -> None:
        if self.code not in CODES:
            raise ValueError(f"unknown finding code {self.code!r}{suggest(self.code, CODES)}")
        if self.severity not in SEVERITIES:
            raise ValueError(
                f"severity must be one of {', '.join(SEVERITIES)}, got {self.severity!r}"
                f"{suggest(self.severity, SEVERITIES)}"
            )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (see :func:`jsonable`)."""
        return jsonable(asdict(self))


@dataclass
class Diagnosis:
    """Ranked findings with everything measured and what was not.

    Attributes:
        findings: ranked by :func:`find`'s order (most severe, largest violation first).
        numbers: everything measured.
        skipped: what was not measured or checked, and why (e.g. a budget, a missing key).
    """

    findings: list[Finding]
    numbers: dict[str, Any] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)

    @classmethod
    def from_numbers(
        cls,
        numbers: Mapping[str, Any],
        *,
        skipped: Sequence[str] = (),
        thresholds: FindingThresholds | None = None,
    ) -> Diagnosis:
        """Run :func:`find` on ``numbers``; rules skipped for missing keys join ``skipped``."""
        findings, rules_skipped = _run(numbers, thresholds or FindingThresholds())
        return cls(findings, dict(numbers), list(skipped) + rules_skipped)

    @property
    def top(self) -> Finding | None:
        """The first (most important) finding, or ``None``."""
        return self.findings[0] if self.findings else None

    @property
    def codes(self) -> list[str]:
        """The findings' codes, in rank order."""
        return [f.code for f in self.findings]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``findings``, ``numbers`` and ``skipped`` (see :func:`jsonable`)."""
        return {
            "findings": [f.to_dict() for f in self.findings],
            "numbers": jsonable(self.numbers),
            "skipped": list(self.skipped),
        }

    def to_markdown(self, title: str = "Diagnosis") -> str:
        """A markdown section: ``## title``, a table (severity, code, message, fix), skipped."""
        lines = [f"## {title}", ""]
        if self.findings:
            lines += ["| severity | code | message | fix |", "|---|---|---|---|"]
            for f in self.findings:
                fix = ", ".join(f"{k}={_fmt(v)}" for k, v in f.fix.items()) or "—"
                message = f.message.replace("|", "\\|")
                lines.append(f"| {f.severity} | `{f.code}` | {message} | {fix} |")
        else:
            lines.append("No findings: none of the rules had the numbers they need.")
        if self.skipped:
            lines += ["", "Skipped:", ""] + [f"- {s}" for s in self.skipped]
        return "\n".join(lines) + "\n"

    def __repr__(self) -> str:
        shown = ", ".join(f"{f.code} ({f.severity})" for f in self.findings) or "none"
        counts = f"{len(self.numbers)} numbers; {len(self.skipped)} skipped"
        return f"Diagnosis(findings: {shown}; {counts})"


# --------------------------------------------------------------------------- shared formulas


def lr_bound(
    sharpness: float, optimizer: str = "sgd", momentum: float = 0.0, dampening: float = 0.0
) -> float:
    """The largest stable step size on a quadratic of the given (preconditioned) sharpness.

    ``2/λ`` for SGD and AdaGrad; ``2(1+α)/λ`` for heavy-ball momentum (Algorithm 8.2; also
    RMSProp with torch's momentum α, 0 by default);
    ``2(1+α)/((1+2α)λ)`` for Nesterov momentum (Algorithm 8.3, also RMSProp-Nesterov's
    preconditioned form); ``(2+2β1)/((1−β1)λ)`` for Adam/AdamW with ``momentum = β1`` (Cohen et
    al. 2022). ``dampening`` d (torch SGD's) divides the momentum bound by ``1 - d``. ``inf`` when
    ``sharpness <= 0`` (no positive curvature bounds the step) or ``d >= 1``.
    """
    if sharpness <= 0:
        return math.inf
    a = momentum
    if optimizer in ("momentum", "rmsprop"):
        return math.inf if dampening >= 1 else 2 * (1 + a) / ((1 - dampening) * sharpness)
    if optimizer in ("nesterov", "rmsprop-nesterov"):
        return 2 * (1 + a) / ((1 + 2 * a) * sharpness)
    if optimizer in ("adam", "adamw"):
        return (2 + 2 * a) / ((1 - a) * sharpness)
    return 2 / sharpness


def gradient_progress(
    grad_sq_norm: float,
    loss: float,
    lambda_max: float,
    lambda_min: float,
    loss_floor: float = 0.0,
) -> float:
    """``|G|² / (2 λ (L − loss_floor))`` with ``λ = max(|λmax|, |λmin|)``: the fraction of the
    loss (above its floor) that one gradient step of ``1/λ`` is guaranteed to remove on a
    λ-smooth model (descent lemma). ``inf`` at or below the floor or with no curvature."""
    gap = loss - loss_floor
    lam = max(abs(lambda_max), abs(lambda_min))
    if gap <= 0 or lam == 0:
        return math.inf if grad_sq_norm > 0 or gap <= 0 else 0.0
    return grad_sq_norm / (2 * lam * gap)


def significant_negative(
    lambda_min: float, lambda_max: float, tau: float, residual: float | None = None
) -> bool:
    """``λmin < −τ·|λmax|`` and ``|λmin|`` above its Lanczos residual (when known)."""
    if not lambda_min < -tau * abs(lambda_max):
        return False
    return residual is None or abs(lambda_min) > residual


def sensitivities(
    loss: float,
    grad_sq_norm: float,
    lambda_max: float,
    lambda_min: float,
    param_norm: float,
    trace_sigma: float | None = None,
    param_scale: float = PARAM_SCALE,
) -> dict[str, float]:
    """Relative change of the loss per relative parameter change, ``s = max(|θ|, param_scale)``:
    ``|G|·s/L`` (gradient), ``√tr(Σ)·s/L`` (per-example spread) and ``max|λ|·s²/L`` (curvature).
    The scale floor keeps a point at θ ≈ 0 (a zero-initialized net) from looking flat."""
    loss = abs(loss)
    s = max(param_norm, param_scale)
    scale = s / loss if loss > 0 else math.inf
    out = {
        "grad_sensitivity": _times(math.sqrt(grad_sq_norm), scale),
        "curvature_sensitivity": _times(max(abs(lambda_max), abs(lambda_min)) * s, scale),
    }
    if trace_sigma is not None:
        out["noise_sensitivity"] = _times(math.sqrt(trace_sigma), scale)
    return out


def _times(a: float, b: float) -> float:
    # 0 · inf is 0 here: no gradient at zero loss is no sensitivity.
    return 0.0 if a == 0 else a * b


# --------------------------------------------------------------------------- reading numbers


def _fmt(x: Any) -> str:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return str(x)
    return f"{x:.3g}"


class _Numbers:
    """Typed access to the numbers; records which rules were skipped for lack of keys."""

    def __init__(self, numbers: Mapping[str, Any]) -> None:
        for key in numbers:
            if not isinstance(key, str) or not is_known_key(key):
                raise ValueError(
                    f"unknown diagnostics key {key!r}{suggest(str(key), sorted(KNOWN_KEYS))}"
                )
        self.raw = numbers

    def num(self, key: str) -> float | None:
        """A finite-or-infinite float, ``None`` when absent, NaN or not a number."""
        value = self.raw.get(key)
        if value is None or isinstance(value, (bool, str, Mapping, list, tuple)):
            return None
        try:
            x = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{key} must be a number, got {value!r}") from None
        return None if math.isnan(x) else x

    def grad_sq(self) -> float | None:
        g2 = self.num("grad_sq_norm")
        if g2 is None:
            g = self.num("grad_norm")
            g2 = None if g is None else g * g
        return g2

    def text(self, key: str, choices: Sequence[str]) -> str | None:
        value = self.raw.get(key)
        if value is None:
            return None
        if value not in choices:
            raise ValueError(
                f"{key} must be one of {', '.join(choices)}, got {value!r}"
                f"{suggest(str(value), choices)}"
            )
        return str(value)

    def series(self, key: str) -> list[float] | None:
        value = self.raw.get(key)
        if value is None:
            return None
        return [float(v) for v in value]

    def table(self, key: str) -> dict[str, float] | None:
        value = self.raw.get(key)
        if value is None:
            return None
        return {str(k): float(v) for k, v in value.items()}


@dataclass
class _Context:
    """What earlier rules decided, so later ones never contradict them."""

    lr: float | None = None
    bound: float | None = None
    adaptive: bool = False
    optimizer: str | None = None
    lr_down: bool = False  # a finding lowers the learning rate
    lr_up: bool = False  # a finding raises it
    typical_norm: float | None = None


# --------------------------------------------------------------------------- rules


def _step_size(n: _Numbers, th: FindingThresholds, ctx: _Context) -> tuple[list[Finding], str]:
    lr = n.num("lr")
    ctx.lr = lr
    momentum = n.num("momentum") or 0.0
    kind = n.text("sharpness_kind", SHARPNESS_KINDS)
    opt = ctx.optimizer
    if opt is None:
        opt = "momentum" if momentum > 0 else "sgd"
    if ctx.adaptive and kind != "preconditioned":
        return [], (
            "step size: an adaptive optimizer needs the preconditioned sharpness "
            "(sharpness_kind='preconditioned'); the plain-Hessian bound does not apply"
        )
    if opt == "none":
        return [], "step size: no optimizer"
    ratio, bound = n.num("lr_ratio"), n.num("lr_bound")
    sharpness = n.num("sharpness")
    if sharpness is None and not ctx.adaptive and kind != "preconditioned":
        sharpness = n.num("lambda_max")
    if bound is None and sharpness is not None:
        if opt in ("adam", "adamw") and n.num("momentum") is None:
            return [], "step size: Adam's bound needs β1 (the momentum key)"
        bound = lr_bound(sharpness, opt, momentum)
    if bound is None and ratio is not None and lr is not None and ratio > 0:
        bound = lr / ratio
    if ratio is None and lr is not None and bound is not None:
        ratio = lr / bound
    if ratio is None:
        return [], "step size: needs lr_ratio, or lr with lr_bound, sharpness or lambda_max"
    ctx.bound = bound
    where = _bound_name(opt, momentum, kind == "preconditioned" or ctx.adaptive, bound)
    evidence: dict[str, Any] = {"lr": lr, "lr_bound": bound, "lr_ratio": ratio}
    if sharpness is not None:
        evidence["sharpness"] = sharpness
    evidence = {k: v for k, v in evidence.items() if v is not None}
    layer = n.raw.get("limiting_layer")
    if ratio > th.lr_high:
        ctx.lr_down = True
        fix = {"lr": th.safe_fraction * bound} if bound is not None and lr is not None else {}
        target = f"below {_fmt(bound)} (e.g. {_fmt(fix['lr'])})" if fix else "below the bound"
        edge = (
            " For an adaptive method this is the preconditioned sharpness against its edge of "
            "stability (Cohen et al. 2022)."
            if ctx.adaptive
            else ""
        )
        limiting = f" The sharpest block is layer {layer}." if layer else ""
        lr_text = _fmt(lr) if lr is not None else "the learning rate"
        return [
            Finding(
                "lr-too-high",
                "critical",
                f"The learning rate {lr_text} is {_fmt(ratio)}x {where}: training diverges "
                f"along the sharpest direction. Lower it {target}.{edge}{limiting}",
                evidence,
                fix,
                layer=str(layer) if layer else None,
                score=ratio / th.lr_high,
            )
        ], ""
    lr_star = n.num("lr_star")
    if lr_star is None and not ctx.adaptive:
        g_tg, g_hg = n.num("gTg"), n.num("gHg")
        if g_tg is not None and g_hg is not None and g_hg > 0:
            lr_star = g_tg / g_hg
    if ratio < th.lr_low and lr is not None and bound is not None and math.isfinite(bound):
        target = th.safe_fraction * bound
        star_text = ""
        if lr_star is not None and lr_star > 0:
            evidence["lr_star"] = lr_star
            # heavy ball and Nesterov move ε/(1−α) per step in a steady direction: the lr whose
            # effective step is ε* is ε*(1−α)
            heavy = opt in ("momentum", "nesterov") and 0 < momentum < 1
            best = lr_star * (1 - momentum) if heavy else lr_star
            # with gradient noise the best step shrinks to ε_max / (1 + B_simple/m)
            # (McCandlish et al. 2018, eq. 2.6): near a minimum, where the noise dominates, a
            # small (decayed) step is right, and raising it buys noise, not progress
            m, b = n.num("batch_size"), n.num("b_simple")
            if m is not None and m > 0 and b is not None and math.isfinite(b) and b > 0:
                best /= 1 + b / m
                evidence.update(batch_size=m, b_simple=b)
                star_text = (
                    f" and the best step along the gradient, discounted for the minibatch noise "
                    f"(ε*/(1 + B_simple/m), B_simple ≈ {_fmt(b)}), is {_fmt(best)}"
                )
            else:
                star_text = f" and the best step along the gradient is ε* = {_fmt(lr_star)}"
            if best <= th.lr_star_factor * lr:
                return [], ""
            target = min(target, best)
        if target > lr:
            ctx.lr_up = True
            return [
                Finding(
                    "lr-too-low",
                    "warning",
                    f"The learning rate {_fmt(lr)} is only {_fmt(ratio)} of {where}{star_text}: "
                    f"steps are needlessly short. Raise it to about {_fmt(target)} (and "
                    "measure the sharpness again).",
                    evidence,
                    {"lr": target},
                    score=th.lr_low / max(ratio, 1e-300),
                )
            ], ""
    return [], ""


def _bound_name(opt: str, momentum: float, preconditioned: bool, bound: float | None) -> str:
    """ "the stability bound 2(1+α)/λmax = 3.8 (heavy-ball momentum, α = 0.9)": the value right
    after its formula, the hyperparameters in brackets, so no "α = 0.9 = 3.8" chain appears."""
    lam = "λmax(P⁻¹ᐟ²HP⁻¹ᐟ²)" if preconditioned else "λmax"
    a = _fmt(momentum)
    if opt == "momentum":
        formula, note = f"2(1+α)/{lam}", f" (heavy-ball momentum, α = {a})"
    elif opt in ("nesterov", "rmsprop-nesterov"):
        formula, note = f"2(1+α)/((1+2α)·{lam})", f" (Nesterov momentum, α = {a})"
    elif opt in ("adam", "adamw"):
        formula, note = f"(2+2β1)/((1−β1)·{lam})", f" (Adam, β1 = {a})"
    else:
        formula, note = f"2/{lam}", ""
    value = f" = {_fmt(bound)}" if bound is not None else ""
    return f"the stability bound {formula}{value}{note}"


def _conditioning(n: _Numbers, th: FindingThresholds, ctx: _Context) -> tuple[list[Finding], str]:
    lmax, lmin = n.num("lambda_max"), n.num("lambda_min")
    kappa = n.num("condition_number")
    if kappa is None and lmax is not None and lmin is not None and lmin > 0:
        kappa = lmax / lmin
    evidence: dict[str, Any] = {}
    score = 0.0
    reasons = []
    if kappa is not None and lmin is not None and lmin > 0 and kappa > th.ill_conditioned:
        evidence.update(condition_number=kappa, lambda_max=lmax, lambda_min=lmin)
        score = kappa / th.ill_conditioned
        reasons.append(
            f"κ = λmax/λmin ≈ {_fmt(kappa)}: plain gradient descent needs O(κ) steps on such a "
            "quadratic, momentum O(√κ)"
        )
    # The chapter's test: second- over first-order change of the loss along −εg.
    # first_order/second_order are along the optimizer's step direction (P⁻¹g for adaptive
    # methods); gTg/gHg with lr give the same for the SGD family only.
    lr = ctx.lr
    g_tg, g_hg = n.num("gTg"), n.num("gHg")
    first, second = n.num("first_order"), n.num("second_order")
    dominance = None
    if first is not None and second is not None and first != 0:
        dominance = second / abs(first)
    elif lr is not None and g_tg is not None and g_hg is not None and g_tg > 0:
        if not ctx.adaptive:
            dominance = lr * g_hg / (2 * g_tg)
    if dominance is not None and dominance > th.ill_second_order and not ctx.lr_down:
        evidence.update(second_over_first=dominance)
        for key in ("gTg", "gHg", "first_order", "second_order", "lr_star"):
            if n.num(key) is not None:
                evidence[key] = n.num(key)
        score = max(score, dominance / th.ill_second_order)
        reasons.append(
            f"a step −εg changes the loss by ½ε²gᵀHg − εgᵀg with the second-order term "
            f"{_fmt(dominance)} of the first although ε is within the stability bound: the "
            "gradient points along the sharp directions"
        )
    # Inputs on very different scales (LeCun et al. 1998, "Efficient BackProp" §4.3): the first
    # layer's Hessian block is shaped by E[x xᵀ], so per-feature second moments spread over
    # orders of magnitude make the loss ill-conditioned whatever the network does later.
    spread = n.num("input_scale_ratio")
    if spread is not None and spread > th.input_scale:
        evidence.update(input_scale_ratio=spread)
        score = max(score, spread / th.input_scale)
        reasons.append(
            f"the input features' mean squares span a factor {_fmt(spread)}, so the first "
            "layer's curvature does too"
        )
    if kappa is None and dominance is None and spread is None:
        return [], (
            "ill-conditioned: needs condition_number with lambda_min, gTg, gHg and lr, or "
            "input_scale_ratio"
        )
    if not reasons:
        return [], ""
    opt = ctx.optimizer or "sgd"
    if spread is not None and spread > th.input_scale:
        fix: dict[str, Any] = {"standardize": True}
        action = (
            "Standardize the inputs (zero mean, unit variance per feature: `data.standardize: "
            "true` in a config); momentum or an adaptive method helps when that is not possible."
        )
    elif opt == "sgd":
        # heavy ball's effective step is ε/(1−α): keep the step the run had
        fix = {"optimizer": "momentum", "momentum": 0.9}
        if lr is not None and not (ctx.lr_up or ctx.lr_down):  # else the lr finding owns lr
            fix["lr"] = lr * (1 - 0.9)
        action = (
            "Use momentum (α = 0.9, with lr × (1 − α) to keep the effective step) or Nesterov; "
            "adaptive methods help further."
        )
    elif opt in ("momentum", "nesterov"):
        fix = {"optimizer": "adam"}
        action = "Try an adaptive method (Adam, RMSProp), which rescales each parameter."
    else:
        fix = {}
        action = "The optimizer already adapts; normalization layers can help further."
    return [
        Finding(
            "ill-conditioned",
            "warning",
            f"The loss is ill-conditioned: {'; '.join(reasons)}. {action}",
            evidence,
            fix,
            score=score,
        )
    ], ""


def _batch(n: _Numbers, th: FindingThresholds, ctx: _Context) -> tuple[list[Finding], str]:
    m, b = n.num("batch_size"), n.num("b_simple")
    if m is None or b is None:
        return [], "batch size: needs batch_size and b_simple"
    low = n.num("b_simple_low")
    high = n.num("b_simple_high")
    # An infinite estimate from the unbiased |G|² (noise_interval) is not "no gradient": the
    # mean gradient is not resolved by the examples measured, and the bootstrap still gives a
    # finite lower bound, which is all the batch-too-small test needs.
    if math.isinf(b) and (low is None or not 0 < low < math.inf):
        return [], "batch size: B_simple is infinite (zero full-batch gradient)"
    low = b if low is None else low
    high = b if high is None else high
    evidence = {"batch_size": m, "b_simple": b, "b_simple_low": low, "b_simple_high": high}
    interval = f" (interval {_fmt(low)}–{_fmt(high)})" if low != b or high != b else ""
    scale = f"≈ {_fmt(b)}{interval}"
    if math.isinf(b):
        scale = f">= {_fmt(low)} (the mean gradient is not resolved by the examples measured)"
    cap = n.num("n_examples")
    suggested = max(1, round(b if math.isfinite(b) else low))
    if cap is not None:
        suggested = min(suggested, int(cap))
    if m * th.batch_factor < low:
        code, score = "batch-too-small", low / (th.batch_factor * m)
        text = (
            f"The batch size {int(m)} is far below the gradient noise scale B_simple "
            f"{scale}: minibatch gradients are dominated "
            f"by noise. A batch near {suggested} cuts the number of steps almost proportionally"
        )
    elif m > th.batch_factor * high:
        code, score = "batch-too-large", m / (th.batch_factor * high)
        text = (
            f"The batch size {int(m)} is far above the gradient noise scale B_simple ≈ "
            f"{_fmt(b)}{interval}: larger batches barely reduce the "
            f"number of steps here. A batch near {suggested} with more steps gives the same "
            "progress for less compute"
        )
    else:
        return [], ""
    fix: dict[str, Any] = {"batch_size": suggested}
    lr = ctx.lr
    if lr is not None:
        factor = suggested / m
        scaled = lr * (math.sqrt(factor) if ctx.adaptive else factor)
        if ctx.bound is not None and math.isfinite(ctx.bound):
            scaled = min(scaled, th.safe_fraction * ctx.bound)
        # Never move the learning rate against the step-size finding.
        if not ((scaled < lr and ctx.lr_up) or (scaled > lr and ctx.lr_down)):
            fix["lr"] = scaled
            ctx.lr_up, ctx.lr_down = ctx.lr_up or scaled > lr, ctx.lr_down or scaled < lr
            rule = (
                "with the square root of the batch" if ctx.adaptive else "linearly with the batch"
            )
            capped = " (capped at half the stability bound)" if scaled < lr * factor else ""
            text += f", with the learning rate scaled {rule} to {_fmt(scaled)}{capped}"
    return [Finding(code, "warning", text + ".", evidence, fix, score=score)], ""


def _point(n: _Numbers, th: FindingThresholds, ctx: _Context) -> tuple[list[Finding], str]:
    loss, g2 = n.num("loss"), n.grad_sq()
    lmax, lmin = n.num("lambda_max"), n.num("lambda_min")
    if loss is None or g2 is None or lmax is None or lmin is None:
        label = n.raw.get("label")
        if label in ("saddle", "flat"):
            return [_point_finding(str(label), {"label": label}, 1.0, "", ctx)], ""
        return [], "saddle/flat: needs loss, grad_sq_norm (or grad_norm), lambda_max, lambda_min"
    theta = n.num("param_norm")
    trace_sigma = n.num("trace_sigma")
    if theta is not None:
        sens = sensitivities(loss, g2, lmax, lmin, theta, trace_sigma, th.param_scale)
        worst = max(sens.values())
        if worst <= th.flat:
            evidence = {"loss": loss, "grad_sq_norm": g2, "lambda_max": lmax, **sens}
            return [_point_finding("flat", evidence, th.flat / max(worst, 1e-300), "", ctx)], ""
    residual = n.num("lambda_min_residual")
    if residual is None:
        residual = n.num("residual_min")
    progress = gradient_progress(g2, loss, lmax, lmin, th.loss_floor)
    if significant_negative(lmin, lmax, th.saddle_negative, residual) and (
        progress <= th.saddle_gradient
    ):
        evidence = {
            "loss": loss,
            "grad_sq_norm": g2,
            "lambda_max": lmax,
            "lambda_min": lmin,
            "negative_ratio": lmin / abs(lmax) if lmax else -math.inf,
            "gradient_progress": progress,
        }
        if residual is not None:
            evidence["lambda_min_residual"] = residual
        score = abs(lmin) / (th.saddle_negative * abs(lmax)) if lmax else math.inf
        return [_point_finding("saddle", evidence, score, _fmt(lmin), ctx)], ""
    return [], ""


def _point_finding(
    code: str, evidence: dict[str, Any], score: float, lmin: str, ctx: _Context
) -> Finding:
    if code == "flat":
        larger = "" if ctx.lr_down else " or a larger learning rate"
        ctx.lr_up = ctx.lr_up or not ctx.lr_down
        message = (
            "The loss is nearly flat here: gradient, per-example spread and curvature are all "
            "tiny relative to the loss. Check for saturated activations or dead units; better "
            f"initialization, normalization layers{larger} help."
        )
    else:
        progress = evidence.get("gradient_progress")
        numbers = (
            f" (λmin = {lmin}, {_fmt(evidence['negative_ratio'])}·λmax; one gradient step "
            f"removes at most a fraction {_fmt(progress)} of the loss)"
            if progress is not None
            else ""
        )
        message = (
            f"This looks like a saddle point: strong negative curvature and a gradient too small "
            f"to make progress{numbers}. Keep training (gradient noise and momentum escape along "
            "the negative direction); do not stop early here."
        )
    return Finding(code, "warning", message, evidence, {}, score=score)


def _typical_norm(history: list[float] | None) -> float | None:
    finite = [h for h in history or [] if math.isfinite(h)]
    return statistics.median(finite) if finite else None


def _exploding(n: _Numbers, th: FindingThresholds, ctx: _Context) -> tuple[list[Finding], str]:
    loss = n.raw.get("loss")
    history = n.series("grad_norm_history")
    losses = n.series("loss_history")
    layers = n.table("layer_grad_norms")
    ctx.typical_norm = _typical_norm(history)
    evidence: dict[str, Any] = {}
    reasons: list[str] = []
    severity, score, layer = "warning", 0.0, None
    nonfinite_loss = isinstance(loss, (int, float)) and not isinstance(loss, bool)
    nonfinite_loss = nonfinite_loss and not math.isfinite(float(loss))
    if nonfinite_loss or any(not math.isfinite(v) for v in (losses or []) + (history or [])):
        severity, score = "critical", math.inf
        evidence["non_finite"] = True
        reasons.append("the loss or the gradient norm is not finite")
    if layers and len(layers) >= 2:
        names, norms = list(layers), list(layers.values())
        # Exploding gradients grow backward: an earlier layer's norm over a later one's.
        growth, worst = 0.0, None
        for i in range(len(norms)):
            for j in range(i + 1, len(norms)):
                if norms[j] > 0 and norms[i] / norms[j] > growth:
                    growth, worst = norms[i] / norms[j], names[i]
        if growth > th.exploding_depth:
            severity, score, layer = "critical", max(score, growth / th.exploding_depth), worst
            evidence["depth_growth"] = growth
            evidence["layer_grad_norms"] = layers
            reasons.append(
                f"gradient norms grow {_fmt(growth)}x from the output toward layer {worst}"
            )
    if history and len(history) >= 2 and ctx.typical_norm:
        finite = [h for h in history if math.isfinite(h)]
        growth = finite[-1] / finite[0] if finite[0] > 0 else 0.0
        spike = max(finite) / ctx.typical_norm
        if growth > th.exploding_depth:
            severity, score = "critical", max(score, growth / th.exploding_depth)
            evidence["history_growth"] = growth
            reasons.append(f"the gradient norm grew {_fmt(growth)}x over the recent steps")
        elif len(finite) >= 5 and spike > th.spike_factor:
            score = max(score, spike / th.spike_factor)
            evidence["spike_over_median"] = spike
            reasons.append(f"gradient norms spike to {_fmt(spike)}x their median")
    if history is None and layers is None and loss is None and losses is None:
        return [], "exploding gradients: needs loss, layer_grad_norms or grad_norm_history"
    if not reasons:
        return [], ""
    fix: dict[str, Any] = {}
    action = "Add normalization layers or a better initialization."
    if not ctx.lr_up:
        action = "Lower the learning rate or add normalization layers."
        ctx.lr_down = True
    if ctx.typical_norm:
        fix = {"clip_norm": ctx.typical_norm}
        evidence["median_grad_norm"] = ctx.typical_norm
        action = f"Clip the gradient norm at about its median {_fmt(ctx.typical_norm)}."
    return [
        Finding(
            "exploding-gradients",
            severity,
            f"Exploding gradients: {'; '.join(reasons)}. {action}",
            evidence,
            fix,
            layer=layer,
            score=score,
        )
    ], ""


def _dead(n: _Numbers, th: FindingThresholds, ctx: _Context) -> tuple[list[Finding], str]:
    fraction = n.num("dead_fraction")
    by_layer = n.table("dead_by_layer") or {}
    if fraction is None and not by_layer:
        return [], "dead units: needs dead_fraction or dead_by_layer"
    overall = fraction if fraction is not None else max(by_layer.values())
    if not 0 <= overall <= 1:
        raise ValueError(f"dead_fraction must be in [0, 1], got {overall!r}")
    if overall <= th.dead:
        return [], ""
    worst = sorted(by_layer.items(), key=lambda kv: -kv[1])[:3]
    named = ", ".join(f"{k} {100 * v:.3g}%" for k, v in worst)
    lower = "" if ctx.lr_up else ", a lower learning rate"
    where = f" (worst: {named})" if named else ""
    return [
        Finding(
            "dead-units",
            "warning",
            f"{100 * overall:.3g}% of the ReLU units are zero on every example{where}: they get "
            f"no gradient and never recover. Use a smooth activation (GELU){lower} or "
            "normalization before the activation.",
            {"dead_fraction": overall, **({"dead_by_layer": by_layer} if by_layer else {})},
            {"activation": "gelu"},
            layer=worst[0][0] if worst else None,
            score=overall / th.dead,
        )
    ], ""


def _clipping(n: _Numbers, th: FindingThresholds, ctx: _Context) -> tuple[list[Finding], str]:
    fraction = n.num("clip_fraction")
    if fraction is None:
        return [], "clipping: needs clip_fraction"
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"clip_fraction must be in [0, 1], got {fraction!r}")
    if fraction < th.clip_always:
        return [], ""
    clip = n.num("clip_norm")
    evidence: dict[str, Any] = {"clip_fraction": fraction}
    fix: dict[str, Any] = {}
    if ctx.typical_norm and (clip is None or ctx.typical_norm > clip):
        fix = {"clip_norm": ctx.typical_norm}
        evidence["median_grad_norm"] = ctx.typical_norm
    elif clip is not None:
        fix = {"clip_norm": 2 * clip}
    if clip is not None:
        evidence["clip_norm"] = clip
    target = f" to about {_fmt(fix['clip_norm'])}" if fix else ""
    lower = "" if ctx.lr_up else ", or lower the learning rate"
    return [
        Finding(
            "clipping-always",
            "warning",
            f"Gradient clipping fired on {100 * fraction:.3g}% of the steps: the threshold, not "
            f"the learning rate, sets the step length. Raise clip_norm{target}{lower}.",
            evidence,
            fix,
            score=fraction / th.clip_always,
        )
    ], ""


_RULES = (_step_size, _exploding, _batch, _conditioning, _point, _dead, _clipping)
_ORDER = {code: i for i, code in enumerate(CODES)}


def _run(numbers: Mapping[str, Any], th: FindingThresholds) -> tuple[list[Finding], list[str]]:
    n = _Numbers(numbers)
    ctx = _Context()
    ctx.optimizer = n.text("optimizer", OPTIMIZERS)
    adaptive = numbers.get("adaptive")
    if adaptive is not None and not isinstance(adaptive, bool):
        raise ValueError(f"adaptive must be a bool, got {adaptive!r}")
    ctx.adaptive = bool(adaptive) or ctx.optimizer in ADAPTIVE_OPTIMIZERS
    findings: list[Finding] = []
    skipped: list[str] = []
    ran = 0
    for rule in _RULES:
        found, why = rule(n, th, ctx)
        findings += found
        if why:
            skipped.append(why)
        else:
            ran += 1
    if not findings and ran:
        findings.append(
            Finding(
                "healthy",
                "info",
                f"Nothing to change: {ran} of {len(_RULES)} checks ran and none fired.",
                {"checks_run": ran},
            )
        )
    findings.sort(key=lambda f: (SEVERITIES.index(f.severity), -f.score, _ORDER[f.code]))
    return findings, skipped


def find(
    numbers: Mapping[str, Any], *, thresholds: FindingThresholds | None = None
) -> list[Finding]:
    """Ranked findings from measured numbers (see the module docstring for rules and ranking).

    Every key is optional; a rule runs only when its keys are present. Keys must be among
    :data:`KNOWN_KEYS` (or ``std_m{m}``): an unknown key raises ``ValueError`` naming the
    closest valid one. ``optimizer`` must be one of :data:`OPTIMIZERS`.
    """
    return _run(numbers, thresholds or FindingThresholds())[0]
