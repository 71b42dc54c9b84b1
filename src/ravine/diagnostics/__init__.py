"""Why is training hard? Curvature at both ends of the spectrum, conditioning, saddles, flat
regions and minibatch gradient noise, measured on the user's own model and data.

=====================================  ======================================================
function                               measures
=====================================  ======================================================
:func:`hessian_extremes`               λmax, λmin, κ = |λmax|/|λmin|, negative curvature (Lanczos)
:func:`hessian_trace`                  tr(H) with a standard error (Hutchinson, Hutch++)
:func:`spectral_density`               eigenvalue density, mass below zero (SLQ)
:func:`gradient_noise`                 std of the minibatch gradient vs m, exponent, B_simple
:func:`noise_scale_two_batch`          |G|², tr(Σ) from gradient norms at two batch sizes
:func:`classify`                       flat / saddle / minimum-like / ill-conditioned / descending
:func:`advice`                         sentences to act on, from the measured numbers
:func:`measure`, :func:`report`        flat numbers for training logs; json + plots + advice
=====================================  ======================================================

All of them take ``(model, loss_fn, data)`` with ``loss_fn(model(x), y)`` the batch-mean loss,
and an explicit ``mode`` ("eval" by default) for models with batch norm or dropout.

Example::

    ev = diagnostics.hessian_extremes(net, loss_fn, (x, y))     # .lambda_max .lambda_min ...
    gn = diagnostics.gradient_noise(net, loss_fn, (x, y), batch_sizes=[8, 32, 128])
    numbers = {"lr": 0.1, "batch_size": 32, **ev.to_dict(), **gn.to_dict()}
    print(diagnostics.advice(numbers))
"""

from ravine.diagnostics.advice import advice, advice_markdown
from ravine.diagnostics.classify import (
    Classification,
    ClassifyThresholds,
    classify,
    classify_numbers,
)
from ravine.diagnostics.diagnosis import Budget, diagnose
from ravine.diagnostics.findings import CODES, Diagnosis, Finding, FindingThresholds, find
from ravine.diagnostics.hvp import DiagnosticsWarning, HessianOperator, hvp
from ravine.diagnostics.layerwise import LayerwiseResult, b_simple_interval, layerwise
from ravine.diagnostics.measure import measure
from ravine.diagnostics.monitor import Monitor
from ravine.diagnostics.noise import (
    GradientNoiseResult,
    GradientStatistics,
    NoiseScaleEstimator,
    gradient_noise,
    gradient_statistics,
    noise_scale_two_batch,
    per_example_gradients,
)
from ravine.diagnostics.plots import plot_gradient_noise, plot_history, plot_spectral_density
from ravine.diagnostics.probe import Fork, ProbeResult, probe
from ravine.diagnostics.report import DiagnosticsReport, report
from ravine.diagnostics.sharpness import (
    OptimizerView,
    curvature_along_gradient,
    optimizer_view,
    preconditioned_extremes,
    stability_bound,
    step_size,
)
from ravine.diagnostics.spectrum import (
    ExtremesResult,
    SpectralDensity,
    TraceResult,
    hessian_extremes,
    hessian_trace,
    operator_density,
    operator_extremes,
    operator_trace,
    spectral_density,
)
from ravine.diagnostics.units import DeadUnits, dead_units

__all__ = [
    "diagnose",
    "Budget",
    "Diagnosis",
    "Finding",
    "FindingThresholds",
    "CODES",
    "find",
    "layerwise",
    "LayerwiseResult",
    "b_simple_interval",
    "dead_units",
    "DeadUnits",
    "probe",
    "ProbeResult",
    "Fork",
    "step_size",
    "optimizer_view",
    "OptimizerView",
    "stability_bound",
    "preconditioned_extremes",
    "curvature_along_gradient",
    "DiagnosticsWarning",
    "HessianOperator",
    "hvp",
    "hessian_extremes",
    "hessian_trace",
    "spectral_density",
    "operator_extremes",
    "operator_trace",
    "operator_density",
    "ExtremesResult",
    "TraceResult",
    "SpectralDensity",
    "gradient_noise",
    "gradient_statistics",
    "per_example_gradients",
    "noise_scale_two_batch",
    "NoiseScaleEstimator",
    "GradientNoiseResult",
    "GradientStatistics",
    "classify",
    "classify_numbers",
    "Classification",
    "ClassifyThresholds",
    "measure",
    "Monitor",
    "report",
    "DiagnosticsReport",
    "advice",
    "advice_markdown",
    "plot_spectral_density",
    "plot_gradient_noise",
    "plot_history",
]
