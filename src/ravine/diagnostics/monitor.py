"""What kind of point is this? Classification, flat numbers for training logs, and a report.

* :func:`classify` labels the current parameters "flat", "saddle", "minimum-like",
  "ill-conditioned" or "descending", with the numbers behind the label (:func:`classify_numbers`
  applies the same rules to numbers alone).
* :func:`measure` returns a flat dict of JSON-friendly numbers (λmax, λmin, κ, trace, gradient
  noise, ...) for a training loop to log every few steps.
* :func:`report` writes ``diagnostics.json``, plots and an advice section for a model and data.
"""

from __future__ import annotations

import difflib
import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ravine._validate import check_int, check_positive
from ravine.diagnostics.advice import ILL_CONDITIONED, advice, advice_markdown
from ravine.diagnostics.hvp import (
    HessianOperator,
    LossFn,
    as_batches,
    checked_batch,
)
from ravine.diagnostics.noise import (
    GradientNoiseResult,
    as_tensors,
    gradient_noise,
    gradient_statistics,
)
from ravine.diagnostics.spectrum import (
    ExtremesResult,
    SpectralDensity,
    TraceResult,
    operator_density,
    operator_extremes,
    operator_trace,
)

__all__ = [
    "ClassifyThresholds",
    "Classification",
    "DiagnosticsReport",
    "LABELS",
    "WHAT",
    "classify",
    "classify_numbers",
    "measure",
    "report",
]

LABELS = ("flat", "saddle", "minimum-like", "ill-conditioned", "descending")
WHAT = ("loss", "grad_norm", "lambda_max", "lambda_min", "trace", "noise")


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


def _param_norm(model: nn.Module) -> float:
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
    numbers["param_norm"] = _param_norm(model)
    numbers.setdefault("batch_size", _first_batch_size(data))
    return classify_numbers(numbers, thresholds)


def _check_what(what: str | Sequence[str]) -> tuple[str, ...]:
    items = (what,) if isinstance(what, str) else tuple(what)
    for item in items:
        if item not in WHAT:
            close = difflib.get_close_matches(str(item), WHAT, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(
                f"what entries must be among {', '.join(map(repr, WHAT))}, got {item!r}{hint}"
            )
    return items


def measure(
    model: nn.Module,
    loss_fn: LossFn,
    data: Any,
    what: str | Sequence[str] = ("loss", "grad_norm", "lambda_max", "noise"),
    *,
    lr: float | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    mode: str = "eval",
    backend: str = "auto",
    tol: float = 1e-3,
    max_hvps: int = 100,
    trace_hvps: int = 30,
    chunk_size: int = 256,
) -> dict[str, float | int | bool]:
    """Measure diagnostics at the current parameters; a flat dict of JSON-friendly numbers.

    ``data`` is a batch ``(x, y)``, a dataset with ``.x``/``.y`` or an iterable of batches (for
    logging during training, a fixed subset of the training set of a few hundred to a few
    thousand examples keeps the cost bounded). ``what`` selects (keys produced in brackets):

    * "loss" [``loss``], "grad_norm" [``grad_norm``]: the loss and |∇R| on ``data``.
    * "lambda_max" [``lambda_max``, ``lambda_max_residual``, ``lr_bound`` = 2/λmax, and with
      ``lr`` also ``lr_times_lambda_max``]: Lanczos to relative residual ``tol``, targeting the top.
    * "lambda_min" [``lambda_min``, ``lambda_min_residual``, ``condition_number``,
      ``negative_curvature``]: with "lambda_max" one Lanczos run converging at both ends.
      Either adds ``lanczos_converged`` (false if ``max_hvps`` ran out first).
    * "trace" [``trace``, ``trace_stderr``]: Hutchinson with ``trace_hvps`` products.
    * "noise" [``grad_sq_norm``, ``trace_sigma``, ``b_simple``, and with ``batch_size`` also
      ``noise_std`` = √(tr Σ / m)]: per-example gradients of all examples in ``data``.

    Always present: ``hvps`` (Hessian-vector products used) and ``seconds`` (wall time).
    Infinite values (κ when λmin = 0, B_simple when G = 0) are returned as ``inf``.
    """
    items = _check_what(what)
    if lr is not None:
        check_positive("lr", lr)
    if batch_size is not None:
        check_int("batch_size", batch_size, 1)
    check_int("max_hvps", max_hvps, 1)
    start = time.perf_counter()
    out: dict[str, float | int | bool] = {}
    if batch_size is not None:
        out["batch_size"] = batch_size
    if lr is not None:
        out["lr"] = lr
    hvps = 0
    needs_operator = {"loss", "grad_norm", "lambda_max", "lambda_min", "trace"} & set(items)
    if needs_operator:
        op = HessianOperator(model, loss_fn, data, mode=mode, backend=backend, seed=seed)
        if "loss" in items or "grad_norm" in items:
            loss, gradient = op.loss_and_gradient()
            if "loss" in items:
                out["loss"] = loss
            if "grad_norm" in items:
                out["grad_norm"] = float(torch.linalg.vector_norm(gradient))
        ends = [e for e in ("lambda_max", "lambda_min") if e in items]
        if ends:
            which = "both" if len(ends) == 2 else ends[0].removeprefix("lambda_")
            ext = operator_extremes(
                op.matvec,
                op.dim,
                tol=tol,
                max_steps=max_hvps,
                which=which,
                seed=seed,
                device=op.device,
                eps=float(torch.finfo(op.dtype).eps),
            )
            hvps += ext.hvps
            out["lanczos_converged"] = ext.converged
            if "lambda_max" in items:
                out["lambda_max"] = ext.lambda_max
                out["lambda_max_residual"] = ext.residual_max
                out["lr_bound"] = 2.0 / ext.lambda_max if ext.lambda_max > 0 else math.inf
                if lr is not None:
                    out["lr_times_lambda_max"] = lr * ext.lambda_max
            if "lambda_min" in items:
                out["lambda_min"] = ext.lambda_min
                out["lambda_min_residual"] = ext.residual_min
                out["condition_number"] = ext.condition_number
                out["negative_curvature"] = ext.negative_curvature
        if "trace" in items:
            tr = operator_trace(op.matvec, op.dim, n_hvps=trace_hvps, seed=seed, device=op.device)
            hvps += tr.hvps
            out.update(tr.to_dict())
            out.pop("trace_hvps")
    if "noise" in items:
        stats = gradient_statistics(
            model, loss_fn, data, mode=mode, chunk_size=chunk_size, seed=seed
        )
        out.update(stats.to_dict())
        if batch_size is not None:
            out["noise_std"] = math.sqrt(stats.trace_sigma / batch_size)
    out["hvps"] = hvps
    out["seconds"] = time.perf_counter() - start
    return out


@dataclass(frozen=True)
class DiagnosticsReport:
    """What :func:`report` measured and wrote."""

    numbers: dict[str, Any]
    advice: list[str]
    markdown: str
    files: list[Path]
    extremes: ExtremesResult
    trace: TraceResult
    density: SpectralDensity
    noise: GradientNoiseResult
    classification: Classification


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def report(
    model: nn.Module,
    loss_fn: LossFn,
    dataset: Any,
    out_dir: str | Path,
    *,
    lr: float | None = None,
    batch_size: int | None = None,
    momentum: float | None = None,
    adaptive: bool = False,
    clip_fraction: float | None = None,
    noise_batch_sizes: Sequence[int] | None = None,
    n_batches: int = 50,
    max_examples: int | None = 4096,
    chunk_size: int = 1024,
    seed: int = 0,
    mode: str = "eval",
    backend: str = "auto",
    tol: float = 1e-3,
    max_hvps: int = 300,
    trace_hvps: int = 90,
    density_probes: int = 4,
    density_steps: int = 48,
    title: str = "Diagnostics",
) -> DiagnosticsReport:
    """Measure everything on ``dataset`` and write ``diagnostics.json``, plots and advice.

    Files written under ``out_dir``: ``diagnostics.json`` (all numbers; infinities as null),
    ``plots/hessian_spectrum.png`` (SLQ density), ``plots/gradient_noise.png`` and
    ``diagnostics.md`` (the markdown section also returned as ``.markdown``, for a run's
    ``report.md``).

    Args:
        dataset: a pair ``(x, y)``, a dataset with ``.x``/``.y`` or a map-style dataset; at most
            ``max_examples`` of its examples (a seeded random subset) are used for everything.
        lr, batch_size, momentum, adaptive, clip_fraction: the training settings the advice is
            about (batch size also sets the noise level of :func:`classify_numbers`; default:
            32).
        noise_batch_sizes: minibatch sizes of :func:`~ravine.diagnostics.gradient_noise`
            (default: powers of two from 4 up to a quarter of the examples, at most 256).
        chunk_size: examples per batch of the Hessian operator (memory control).
        the rest: as in :func:`hessian_extremes`, :func:`hessian_trace`, :func:`spectral_density`.
    """
    check_int("seed", seed, 0)
    if max_examples is not None:
        check_int("max_examples", max_examples, 2)
    check_int("chunk_size", chunk_size, 1)
    if batch_size is not None:
        check_int("batch_size", batch_size, 1)
    x, y = as_tensors(dataset)
    if max_examples is not None and x.shape[0] > max_examples:
        keep = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))
        x, y = x[keep[:max_examples]], y[keep[:max_examples]]
    n = x.shape[0]
    if noise_batch_sizes is None:
        noise_batch_sizes = [m for m in (4, 8, 16, 32, 64, 128, 256) if m <= max(n // 4, 8)]
    batches = [(x[i : i + chunk_size], y[i : i + chunk_size]) for i in range(0, n, chunk_size)]
    out_dir = Path(out_dir)

    op = HessianOperator(model, loss_fn, batches, mode=mode, backend=backend, seed=seed)
    loss, gradient = op.loss_and_gradient()
    eps = float(torch.finfo(op.dtype).eps)
    extremes = operator_extremes(
        op.matvec, op.dim, tol=tol, max_steps=max_hvps, seed=seed, device=op.device, eps=eps
    )
    trace = operator_trace(op.matvec, op.dim, n_hvps=trace_hvps, seed=seed, device=op.device)
    density = operator_density(
        op.matvec,
        op.dim,
        n_probes=density_probes,
        steps=density_steps,
        seed=seed,
        device=op.device,
    )
    noise = gradient_noise(
        model,
        loss_fn,
        (x, y),
        noise_batch_sizes,
        seed=seed,
        n_batches=n_batches,
        mode=mode,
        chunk_size=min(chunk_size, 256),
    )
    numbers: dict[str, Any] = {
        "n_examples": n,
        "n_parameters": op.dim,
        "mode": mode,
        "hvp_backend": op.backend,
        "loss": loss,
        "grad_norm": float(torch.linalg.vector_norm(gradient)),
        "param_norm": _param_norm(model),
        "batch_size": batch_size if batch_size is not None else 32,
    }
    numbers.update(extremes.to_dict())
    numbers.update(trace.to_dict())
    numbers.update(density.to_dict())
    numbers.update(noise.to_dict())
    numbers["hvps"] = op.hvps
    classification = classify_numbers(numbers)
    numbers.update(classification.numbers)
    settings = {
        "lr": lr,
        "momentum": momentum,
        "adaptive": adaptive,
        "clip_fraction": clip_fraction,
    }
    numbers.update({k: v for k, v in settings.items() if v is not None})
    sentences = advice(numbers)
    markdown = (
        advice_markdown(numbers, title=title)
        + f"\nThe point is classified as **{classification.label}**: {classification.reason}.\n"
    )

    files = [
        density.plot(out_dir / "plots" / "hessian_spectrum.png"),
        noise.plot(out_dir / "plots" / "gradient_noise.png"),
    ]
    json_path = out_dir / "diagnostics.json"
    payload = {
        "numbers": {k: _jsonable(v) for k, v in numbers.items()},
        "thresholds": classification.thresholds,
        "reason": classification.reason,
        "advice": sentences,
        "std_by_m": {str(m): s for m, s in noise.std_by_m.items()},
    }
    json_path.write_text(json.dumps(payload, indent=2) + "\n")
    md_path = out_dir / "diagnostics.md"
    md_path.write_text(markdown)
    files += [json_path, md_path]
    return DiagnosticsReport(
        numbers, sentences, markdown, files, extremes, trace, density, noise, classification
    )
