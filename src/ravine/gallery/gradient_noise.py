"""gradient-noise: the standard error of the minibatch gradient falls as 1/√m.

The lecture ("ERM gradient properties"): the minibatch gradient is an unbiased estimate of the
full gradient whose standard error falls as σ/√m, so 100x the examples buy only 10x less noise.
Measured on an MLP on MNIST-1D at initialization and after a short training run: the standard
deviation of minibatch gradients (``n_batches`` independent minibatches per m, drawn with
replacement) against m, its fitted log-log slope (expected −0.5) and B_simple = tr(Σ)/|G|², the
batch size at which the noise equals the gradient itself.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ravine import data, diagnostics, fit, models
from ravine.gallery import Figure
from ravine.gallery._common import figure, save

NAME = "gradient-noise"
ORDER = 10
CLAIM = (
    "The standard error of the minibatch gradient falls as 1/√m: 100x the examples buy only 10x "
    "less noise (slope −0.5 on log-log axes)."
)
TOLERANCE = 0.05


def run(out_dir: Path, *, quick: bool = False, seed: int = 0) -> Figure:
    """Measure the noise at init and after training; draw std vs m with the 1/√m line."""
    splits = data.load("mnist1d", seed=seed)
    n = 512 if quick else 2048
    subset = (splits.train.x[:n], splits.train.y[:n])
    sizes = [4, 8, 16, 32, 64] if quick else [4, 8, 16, 32, 64, 128, 256]
    torch.manual_seed(seed)
    net = models.mlp(40, [100, 100], 10)
    loss = nn.functional.cross_entropy
    n_batches = 40 if quick else 200
    results = {
        "init": diagnostics.gradient_noise(net, loss, subset, sizes, seed=seed, n_batches=n_batches)
    }
    fit(
        net,
        splits.train,
        optimizer="momentum",
        lr=0.05,
        epochs=1 if quick else 5,
        batch_size=64,
        seed=seed,
        quiet=True,
    )
    results["trained"] = diagnostics.gradient_noise(
        net, loss, subset, sizes, seed=seed, n_batches=n_batches
    )
    fig, axes = figure(size=(6.0, 4.2))
    ax = axes[0][0]
    for label, result in results.items():
        ms = sorted(result.std_by_m)
        stds = [result.std_by_m[m] for m in ms]
        (line,) = ax.loglog(ms, stds, "o-", label=f"{label}: slope {result.exponent:.3f}")
        predicted = [result.predicted_std_by_m[m] for m in ms]
        ax.loglog(ms, predicted, "--", color=line.get_color(), lw=0.8)
        if ms[0] <= result.b_simple <= ms[-1]:
            ax.axvline(result.b_simple, color=line.get_color(), ls=":", lw=1)
    ax.set_xlabel("minibatch size m")
    ax.set_ylabel("std of the minibatch gradient")
    ax.set_title("dashed: √(tr Σ / m); dotted: B_simple")
    ax.legend()
    image = save(fig, out_dir / f"{NAME}.png")
    slopes = {label: r.exponent for label, r in results.items()}
    agrees = all(abs(s + 0.5) <= TOLERANCE for s in slopes.values())
    measured = (
        f"fitted slopes {slopes['init']:.3f} at initialization and {slopes['trained']:.3f} after "
        f"training (expected −0.5 ± {TOLERANCE}); B_simple {results['init'].b_simple:.3g} → "
        f"{results['trained'].b_simple:.3g} examples ({n} examples, {n_batches} minibatches per m)."
    )
    numbers = {
        "slope_init": slopes["init"],
        "slope_trained": slopes["trained"],
        "b_simple_init": results["init"].b_simple,
        "b_simple_trained": results["trained"].b_simple,
    }
    return Figure(NAME, CLAIM, measured, agrees, [image], numbers)
