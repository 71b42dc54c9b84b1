"""A diagnostics report for a model and data: :func:`report` writes ``diagnostics.json``, plots
and an advice section."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

from ravine._checks import check_int
from ravine._io import write_atomic
from ravine.diagnostics.classify import Classification, classify_numbers, param_norm
from ravine.diagnostics.diagnosis import diagnose
from ravine.diagnostics.findings import Diagnosis
from ravine.diagnostics.hvp import HessianOperator, LossFn
from ravine.diagnostics.noise import GradientNoiseResult, as_tensors, gradient_noise
from ravine.diagnostics.spectrum import (
    ExtremesResult,
    SpectralDensity,
    TraceResult,
    operator_density,
    operator_extremes,
    operator_trace,
)

__all__ = ["DiagnosticsReport", "report"]


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
    diagnosis: Diagnosis


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
    optimizer: Optimizer | None = None,
    history: Mapping[str, Any] | None = None,
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
    """Measure everything on ``dataset`` and write ``diagnostics.json``, plots and findings.

    The ranked findings are those of :func:`~ravine.diagnostics.diagnose` (run on the same
    examples with the same optimizer), with this report's tighter Lanczos, trace, SLQ and
    gradient-noise numbers in place of its quicker ones.

    Files written under ``out_dir``: ``diagnostics.json`` (all numbers; infinities as null),
    ``plots/hessian_spectrum.png`` (SLQ density), ``plots/gradient_noise.png`` and
    ``diagnostics.md`` (the markdown section also returned as ``.markdown``, for a run's
    ``report.md``).

    Args:
        dataset: a pair ``(x, y)``, a dataset with ``.x``/``.y`` or a map-style dataset; at most
            ``max_examples`` of its examples (a seeded random subset) are used for everything.
        lr, batch_size: the training settings the findings are about (batch size also sets the
            noise level of :func:`classify_numbers`; default: 32). ``lr`` overrides the
            optimizer's.
        optimizer: the training optimizer (its kind, momentum and adaptive state decide the
            step-size rule); without one, ``lr`` is plain SGD's, or heavy-ball's with
            ``momentum``, and ``adaptive=True`` skips the rule.
        history, clip_fraction: recent training numbers, as :func:`diagnose` takes them
            (``clip_fraction`` joins ``history``).
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
        "param_norm": param_norm(model),
        "batch_size": batch_size if batch_size is not None else 32,
    }
    numbers.update(extremes.to_dict())
    numbers.update(trace.to_dict())
    numbers.update(density.to_dict())
    numbers.update(noise.to_dict())
    numbers["hvps"] = op.hvps
    classification = classify_numbers(numbers)
    numbers.update(classification.numbers)
    history = dict(history or {})
    if clip_fraction is not None:
        history["clip_fraction"] = clip_fraction
    quick = diagnose(
        model,
        loss_fn,
        (x, y),
        optimizer=optimizer,
        lr=lr,
        batch_size=numbers["batch_size"],
        seed=seed,
        mode=mode,
        history=history,
        examples=n,
    )
    merged = {**quick.numbers, **numbers}
    # B_simple travels with its bootstrap interval (a bias-corrected estimate; see
    # layerwise.noise_interval), not with the plug-in ratio measured above
    for key in ("b_simple", "b_simple_low", "b_simple_high"):
        if key in quick.numbers:
            merged[key] = quick.numbers[key]
    if optimizer is None:
        # without an optimizer the settings say which rule applies; its bound is recomputed
        for key in ("lr_bound", "lr_ratio"):
            merged.pop(key, None)
        merged["optimizer"] = "momentum" if momentum else "sgd"
        merged.update(momentum=momentum or 0.0, adaptive=adaptive)
    diagnosis = Diagnosis.from_numbers(merged, skipped=quick.skipped)
    numbers = diagnosis.numbers
    sentences = [f.message for f in diagnosis.findings]
    markdown = (
        diagnosis.to_markdown(title=title)
        + f"\nThe point is classified as **{classification.label}**: {classification.reason}.\n"
    )

    files = [
        density.plot(out_dir / "plots" / "hessian_spectrum.png"),
        noise.plot(out_dir / "plots" / "gradient_noise.png"),
    ]
    json_path = out_dir / "diagnostics.json"
    payload = {
        "numbers": {k: _jsonable(v) for k, v in numbers.items()},
        "findings": [f.to_dict() for f in diagnosis.findings],
        "skipped": diagnosis.skipped,
        "thresholds": classification.thresholds,
        "reason": classification.reason,
        "advice": sentences,
        "std_by_m": {str(m): s for m, s in noise.std_by_m.items()},
    }
    write_atomic(json_path, lambda f: f.write(json.dumps(payload, indent=2) + "\n"))
    md_path = out_dir / "diagnostics.md"
    write_atomic(md_path, lambda f: f.write(markdown))
    files += [json_path, md_path]
    return DiagnosticsReport(
        numbers,
        sentences,
        markdown,
        files,
        extremes,
        trace,
        density,
        noise,
        classification,
        diagnosis,
    )
