"""saddles-flat: saddle points, flat regions and negative curvature occur in real networks.

The lecture ("Conditioning"): besides ill-conditioning, the objective of a neural network is
almost flat in many directions (g ≈ 0 and tiny curvature) and its Hessian often has negative
eigenvalues (saddle points). Measured on an MLP (40-100-100-10, float64) trained with momentum
on MNIST-1D, on a fixed subset of the training set:

* the Hessian's spectral density by stochastic Lanczos quadrature (SLQ,
  :func:`ravine.diagnostics.spectral_density`) at initialization, mid-training and at the end;
  from its quadrature nodes θ_l and weights w_l, the fraction of eigenvalues below zero
  clearly below zero, λ ≤ −``FLAT`` · λmax (``negative_mass``), and the fraction within
  ``FLAT`` · λmax of zero (the flat directions). SLQ's own ``negative_mass`` (all weight on
  θ_l < 0) is not used: the bulk at zero gets one heavy node whose sign is a matter of chance;
* λmax and λmin (one Lanczos run, :func:`ravine.diagnostics.hessian_extremes`) at several
  epochs, with Lanczos' proof of a negative eigenvalue (``negative_curvature``: a Ritz value below
  −√eps·|λmax|, beyond round-off).

Agreement: at every SLQ checkpoint the Hessian has a proven negative eigenvalue, a negative mass
of at least ``MIN_NEGATIVE``, and at least half of its spectrum within ``FLAT`` · λmax of zero.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from ravine import data, diagnostics, fit, models
from ravine.gallery import Figure
from ravine.gallery._common import figure, save

NAME = "saddles-flat"
ORDER = 60
CLAIM = (
    "Saddle points, flat regions and negative curvature occur in real networks: the Hessian of "
    "an MLP has negative eigenvalues and most of its spectrum near zero, from initialization to "
    "the end of training."
)
FLAT = 0.01
"""A direction counts as flat when its |eigenvalue| is below this fraction of λmax."""
BACKEND = "double-backward"
"""Fixed, so that no time goes into timing the backends (the fastest for this MLP on a CPU)."""
MIN_NEGATIVE = 1e-3
"""The smallest negative mass (fraction of eigenvalues below zero) that counts as present."""


def _mass(density: diagnostics.SpectralDensity, inside: np.ndarray | None = None) -> np.ndarray:
    """Per probe, the quadrature weight on the nodes selected by ``inside(nodes)``."""
    return np.array(
        [float(w[inside(t)].sum()) for t, w in zip(density.nodes, density.weights, strict=True)]
    )


def _spectrum_numbers(density: diagnostics.SpectralDensity, lambda_max: float) -> dict[str, float]:
    flat = _mass(density, lambda t: np.abs(t) < FLAT * lambda_max)
    negative = _mass(density, lambda t: t <= -FLAT * lambda_max)
    return {
        "negative_mass": float(negative.mean()),
        "flat_mass": float(flat.mean()),
        "flat_mass_spread": float(flat.std(ddof=1)) if flat.size > 1 else 0.0,
    }


def run(out_dir: Path, *, quick: bool = False, seed: int = 0) -> Figure:
    """Train an MLP on MNIST-1D; measure the Hessian's density and extremes along the way."""
    splits = data.load("mnist1d", seed=seed)
    n = 256 if quick else 1024
    subset = (splits.train.x[:n].double(), splits.train.y[:n])
    train = (splits.train.x.double(), splits.train.y)
    epochs = 4 if quick else 32
    extremes_at = [0, 2, 4] if quick else [0, 1, 2, 4, 8, 16, 32]
    density_at = {0: "init", epochs // 2: "mid-training", epochs: "end"}
    probes, steps = (2, 32) if quick else (4, 64)
    loss = nn.functional.cross_entropy
    torch.manual_seed(seed)
    net = models.mlp(40, [100, 100], 10).double()

    extremes, densities, spectra, grad_norms = {}, {}, {}, {}

    def measure(epoch: int, record: dict | None = None) -> None:
        if epoch not in extremes_at and epoch not in density_at:
            return
        ev = diagnostics.hessian_extremes(
            net, loss, subset, seed=seed, max_hvps=60 if quick else 150, backend=BACKEND
        )
        extremes[epoch] = ev
        _, gradient = diagnostics.HessianOperator(
            net, loss, subset, backend=BACKEND
        ).loss_and_gradient()
        grad_norms[epoch] = float(gradient.norm())
        if epoch in density_at:
            densities[epoch] = diagnostics.spectral_density(
                net, loss, subset, n_probes=probes, steps=steps, seed=seed, backend=BACKEND
            )
            spectra[epoch] = _spectrum_numbers(densities[epoch], ev.lambda_max)

    measure(0)
    # One run; the callback measures after the chosen epochs (momentum keeps its velocity).
    fit(
        net,
        train,
        optimizer="momentum",
        lr=0.05,
        epochs=epochs,
        batch_size=100,
        seed=seed,
        quiet=True,
        callbacks=[measure],
    )

    fig, axes = figure(1, 2, size=(11.0, 4.2))
    ax = axes[0][0]
    for epoch, label in density_at.items():
        d = densities[epoch]
        scale = extremes[epoch].lambda_max
        ax.semilogy(
            d.grid / scale,
            np.maximum(d.density * scale, 1e-8),
            label=f"{label} (epoch {epoch}): {spectra[epoch]['negative_mass']:.1%} negative, "
            f"{spectra[epoch]['flat_mass']:.0%} flat",
        )
    ax.axvspan(-FLAT, FLAT, color="0.85", lw=0, label=f"flat: |λ| < {FLAT:g}·λmax")
    ax.set_ylim(1e-5, None)
    ax.set_xlabel("eigenvalue / λmax")
    ax.set_ylabel("spectral density (SLQ)")
    ax.set_title("Hessian spectrum: a bulk at zero, a tail below it")
    ax.legend(fontsize=8)

    ax = axes[0][1]
    epochs_x = sorted(extremes)
    ax.semilogy(epochs_x, [extremes[e].lambda_max for e in epochs_x], "o-", label="λmax")
    ax.semilogy(epochs_x, [-extremes[e].lambda_min for e in epochs_x], "s-", label="−λmin")
    ax.semilogy(epochs_x, [grad_norms[e] for e in epochs_x], "^:", label="|gradient|")
    ax.set_xlabel("epoch")
    ax.set_ylabel("value (log scale)")
    ax.set_title("curvature at both ends over training")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize=8)
    image = save(fig, out_dir / f"{NAME}.png")

    checkpoints = list(density_at)
    agrees = all(
        extremes[e].negative_curvature
        and spectra[e]["negative_mass"] >= MIN_NEGATIVE
        and spectra[e]["flat_mass"] >= 0.5
        for e in checkpoints
    )
    parts = [
        f"{label}: negative mass {spectra[e]['negative_mass']:.2%}, "
        f"{spectra[e]['flat_mass']:.0%} ± {spectra[e]['flat_mass_spread']:.0%} of the spectrum "
        f"within {FLAT:g}·λmax of zero, λmin/λmax = {extremes[e].lambda_min:.3g}/"
        f"{extremes[e].lambda_max:.3g}"
        for e, label in density_at.items()
    ]
    measured = (
        "; ".join(parts)
        + f" (SLQ {probes} probes × {steps} steps on {n} examples; ± over probes). "
        + "Lanczos proves a negative eigenvalue at "
        + f"{sum(ev.negative_curvature for ev in extremes.values())} of {len(extremes)} epochs."
    )
    numbers = {
        "epochs": epochs_x,
        "lambda_max": [extremes[e].lambda_max for e in epochs_x],
        "lambda_min": [extremes[e].lambda_min for e in epochs_x],
        "negative_curvature": [extremes[e].negative_curvature for e in epochs_x],
        "grad_norm": [grad_norms[e] for e in epochs_x],
        **{
            f"{key}_{label.replace('-training', '')}": spectra[e][key]
            for e, label in density_at.items()
            for key in ("negative_mass", "flat_mass")
        },
    }
    return Figure(NAME, CLAIM, measured, agrees, [image], numbers)
