"""normalization: batch norm (and layer/weight norm) permit larger learning rates and train faster.

The lecture ("Batch normalization"): normalizing each hidden unit over the minibatch,
h ← γ (h − μ) / σ + β, decouples a layer from the scale of the layers below, which makes
training more robust. Measured on a 4-hidden-layer ReLU MLP (40-64-64-64-64-10,
:func:`ravine.models.mlp` with ``norm="none" | "batch" | "layer" | "weight"``) trained with
plain SGD on MNIST-1D for a fixed number of epochs, over a learning-rate sweep and seeds:

* the final training loss at each learning rate (mean over seeds; a run whose loss becomes
  non-finite counts as diverged);
* the largest *stable* learning rate: the largest of the grid at which every seed ends below
  the initial loss ln 10 (chance level of 10 classes);
* the best final loss over the sweep ("trains faster": lower loss for the same budget).

Agreement (the claim is about batch norm; layer and weight norm are reported): batch norm's
largest stable learning rate is larger than that without normalization, and its best final loss
is lower.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from ravine import data, fit, models
from ravine.gallery import Figure
from ravine.gallery._common import figure, save, seeds

NAME = "normalization"
ORDER = 130
CLAIM = (
    "Batch normalization (and layer/weight normalization) permit larger learning rates and train "
    "faster."
)
NORMS = ["none", "batch", "layer", "weight"]
CHANCE = math.log(10)


def _final_loss(norm: str, lr: float, epochs: int, seed: int, train: tuple) -> float:
    torch.manual_seed(seed)
    net = models.mlp(40, [64, 64, 64, 64], 10, norm=norm)
    try:
        result = fit(
            net, train, optimizer="sgd", lr=lr, epochs=epochs, batch_size=100, seed=seed, quiet=True
        )
    except RuntimeError:  # NonFiniteLossError: the run diverged
        return math.inf
    loss = result.history[-1]["train_loss"]
    return loss if math.isfinite(loss) else math.inf


def run(out_dir: Path, *, quick: bool = False, seed: int = 0) -> Figure:
    """Sweep the learning rate for each normalization; final loss, stability, best loss."""
    splits = data.load("mnist1d", seed=seed)
    train = (splits.train.x, splits.train.y)
    grid = [float(v) for v in (np.logspace(-1, 1, 5) if quick else np.logspace(-2, 1, 7))]
    epochs = 2 if quick else 8
    run_seeds = seeds(quick, full=2, seed=seed)
    losses = {
        norm: {lr: [_final_loss(norm, lr, epochs, s, train) for s in run_seeds] for lr in grid}
        for norm in NORMS
    }
    stable = {
        norm: max((lr for lr in grid if max(losses[norm][lr]) < CHANCE), default=math.nan)
        for norm in NORMS
    }
    best = {norm: min(float(np.mean(v)) for v in losses[norm].values()) for norm in NORMS}

    fig, axes = figure(1, 1, size=(7.0, 4.5))
    ax = axes[0][0]
    for norm in NORMS:
        means = [float(np.mean(losses[norm][lr])) for lr in grid]
        drawn = [m if math.isfinite(m) else np.nan for m in means]
        (line,) = ax.semilogx(grid, drawn, "o-", label=f"{norm} (stable up to {stable[norm]:.3g})")
        for lr, m in zip(grid, means, strict=True):
            if not math.isfinite(m):
                ax.plot(lr, CHANCE * 1.5, "x", color=line.get_color(), ms=8)
    ax.axhline(CHANCE, color="k", ls=":", lw=1, label="initial loss ln 10")
    ax.set_xlabel("learning rate (SGD)")
    ax.set_ylabel(f"training loss after {epochs} epochs")
    ax.set_title(f"mean over {len(run_seeds)} seed(s); x: diverged", fontsize=9)
    ax.legend(fontsize=8, title="normalization")
    image = save(fig, out_dir / f"{NAME}.png")

    agrees = (
        bool(
            stable["batch"] > stable["none"] or (math.isnan(stable["none"]) and stable["batch"] > 0)
        )
        and best["batch"] < best["none"]
    )
    measured = (
        "largest stable learning rate: "
        + ", ".join(f"{n} {stable[n]:.3g}" for n in NORMS)
        + f"; best loss after {epochs} epochs: "
        + ", ".join(f"{n} {best[n]:.3f}" for n in NORMS)
        + f" ({len(grid)} learning rates from {grid[0]:g} to {grid[-1]:g}, "
        + f"{len(run_seeds)} seed(s))."
    )
    numbers = {
        "grid": grid,
        "largest_stable_lr": stable,
        "best_loss": best,
        "losses": {n: {str(lr): v for lr, v in by_lr.items()} for n, by_lr in losses.items()},
    }
    return Figure(NAME, CLAIM, measured, agrees, [image], numbers)
