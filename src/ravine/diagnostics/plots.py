"""PNG plots of the diagnostics (matplotlib's Agg canvas, imported only when plotting).

The figures are drawn on ``matplotlib.figure.Figure`` with an Agg canvas, so no global backend
is switched and no window opens. The plotters read the results' attributes only, so this module
imports none of the modules whose results it draws (they import it, for their ``.plot()``).
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "plot_spectral_density",
    "plot_gradient_noise",
    "plot_history",
    "negative_mass_sentence",
    "spectral_density_figure",
    "history_figure",
    "NEGLIGIBLE_NEGATIVE",
]

# |λmin| / λmax below this is negligible negative curvature (classify's saddle threshold).
NEGLIGIBLE_NEGATIVE = 1e-2


def _figure(rows: int = 1, cols: int = 1, size: tuple[float, float] = (6.0, 4.0)) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    return path


def negative_mass_sentence(negative_mass: float, lambda_min: float, lambda_max: float) -> str:
    """One sentence on the spectral mass below zero, judged against the size of the spectrum.

    The SLQ mass below zero alone is ambiguous: 40% of the eigenvalues can be negative and still
    be round-off-sized next to λmax (a minimum in practice), or a few can be large (a saddle).
    The sentence gives the mass with ``|λmin| / λmax``, calling negative curvature *tiny* when
    that ratio is below ``NEGLIGIBLE_NEGATIVE`` (the threshold of ``classify``'s saddle rule).
    E.g. "43% of spectral mass below 0, but λmin = -0.037 is tiny relative to λmax = 4.2
    (|λmin|/λmax = 0.0088)".
    """
    lmin, lmax = f"{lambda_min:.3g}", f"{lambda_max:.3g}"
    if negative_mass <= 0 or lambda_min >= 0:
        return f"no spectral mass below 0 (λmin = {lmin}, λmax = {lmax})"
    mass = f"{100 * negative_mass:.3g}% of spectral mass below 0"
    if lambda_max <= 0:
        return f"{mass}: every node is <= 0 (λmax = {lmax}), the loss curves down everywhere"
    ratio = abs(lambda_min) / lambda_max
    if ratio < NEGLIGIBLE_NEGATIVE:
        return (
            f"{mass}, but λmin = {lmin} is tiny relative to λmax = {lmax} "
            f"(|λmin|/λmax = {ratio:.2g})"
        )
    return (
        f"{mass}, and λmin = {lmin} is large relative to λmax = {lmax} "
        f"(|λmin|/λmax = {ratio:.2g}): real negative curvature"
    )


def spectral_density_figure(density: Any) -> Any:
    """The figure of :func:`plot_spectral_density` (a ``matplotlib.figure.Figure``)."""
    figure = _figure(size=(7.0, 4.4))
    ax = figure.add_subplot()
    floor = max(float(density.density.max()) * 1e-8, 1e-300)
    ax.semilogy(
        density.grid,
        np.maximum(density.density, floor),
        color="C0",
        label=f"density (nodes broadened by σ = {density.sigma:.2g})",
    )
    for index, (nodes, weights) in enumerate(zip(density.nodes, density.weights, strict=True)):
        ax.plot(
            nodes,
            np.maximum(weights / density.n_probes, floor),
            "|",
            color="C1",
            alpha=0.5,
            label="Lanczos nodes θ (one tick each; height = quadrature weight / probes)"
            if index == 0
            else None,
        )
    ax.axvline(0.0, color="gray", lw=0.8, ls="--", label="λ = 0")
    ax.set_xlabel("eigenvalue λ")
    ax.set_ylabel("density")
    ax.legend(fontsize=8, loc="upper right")
    sentence = negative_mass_sentence(density.negative_mass, density.lambda_min, density.lambda_max)
    ax.set_title(
        f"Hessian spectral density (SLQ, {density.n_probes} probes, {density.hvps} HVPs)\n"
        + textwrap.fill(sentence, 90),
        fontsize=9,
    )
    return figure


def plot_spectral_density(density: Any, path: str | Path) -> Path:
    """Plot an SLQ density (a :class:`~ravine.diagnostics.spectrum.SpectralDensity`; log scale),
    its quadrature nodes as ticks (explained in the legend) and, in the title, the mass below
    zero against the size of the spectrum (:func:`negative_mass_sentence`); returns ``path``."""
    return _save(spectral_density_figure(density), path)


def plot_gradient_noise(result: Any, path: str | Path) -> Path:
    """Log-log plot of the measured minibatch-gradient std against m, the fit and √(tr Σ / m)
    (``result``: a :class:`~ravine.diagnostics.noise.GradientNoiseResult`)."""
    figure = _figure()
    ax = figure.add_subplot()
    sizes = np.array(sorted(result.std_by_m), dtype=np.float64)
    measured = np.array([result.std_by_m[int(m)] for m in sizes])
    ax.loglog(sizes, measured, "o", label="measured  √E‖g_B − G‖²")
    ax.loglog(
        sizes,
        [result.predicted_std_by_m[int(m)] for m in sizes],
        "--",
        label="√(tr Σ / m)",
    )
    intercept = float(np.mean(np.log(measured) - result.exponent * np.log(sizes)))
    ax.loglog(
        sizes,
        np.exp(intercept) * sizes**result.exponent,
        "-",
        lw=0.8,
        label=f"fit: slope {result.exponent:.3f}",
    )
    ax.set_xlabel("batch size m")
    ax.set_ylabel("std of minibatch gradient")
    ax.set_title(f"Gradient noise; B_simple = {result.b_simple:.3g}")
    ax.legend()
    return _save(figure, path)


def plot_history(rows: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Plot diagnostics recorded during training (one row per measurement, key ``step``).

    Panels, each drawn when its keys occur: λmax against the stability bound 2/lr (keys
    ``lambda_max``, ``lr``), the condition number, B_simple, and the gradient norm; the step
    axis has integer ticks.
    """
    return _save(history_figure(rows), path)


def history_figure(rows: Sequence[Mapping[str, Any]]) -> Any:
    """The figure of :func:`plot_history` (a ``matplotlib.figure.Figure``)."""
    from matplotlib.ticker import MaxNLocator

    panels = [
        ("lambda_max", "λmax (vs 2/lr)"),
        ("condition_number", "κ = |λmax|/|λmin|"),
        ("b_simple", "B_simple"),
        ("grad_norm", "‖∇R‖"),
    ]
    present = [(k, t) for k, t in panels if any(_loggable(r.get(k)) for r in rows)]
    if not present:
        raise ValueError(
            "rows must contain at least one of lambda_max, condition_number, b_simple, grad_norm"
        )
    figure = _figure(size=(6.0, 2.4 * len(present)))
    axes = figure.subplots(len(present), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (key, title) in zip(axes, present, strict=True):
        points = [(r.get("step"), r.get(key)) for r in rows if _loggable(r.get(key))]
        ax.semilogy([p[0] for p in points], [p[1] for p in points], "o-", ms=3, label=key)
        if key == "lambda_max":
            bound = [(r.get("step"), 2.0 / r["lr"]) for r in rows if _loggable(r.get("lr"))]
            if bound:
                ax.semilogy([b[0] for b in bound], [b[1] for b in bound], "--", label="2 / lr")
            ax.legend()
        ax.set_ylabel(title)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[-1].set_xlabel("step")
    return figure


def _loggable(value: Any) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    )
