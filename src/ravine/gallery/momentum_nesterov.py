"""momentum-nesterov: momentum and Nesterov momentum accelerate gradient descent.

The lecture (Algorithms 8.2 and 8.3): momentum steps along an accumulated velocity
``v ← αv − εg; θ ← θ + v``; Nesterov's variant takes the gradient at the look-ahead point
``θ + αv``, where the velocity is about to carry the parameters, and so corrects a step that
would overshoot before it is taken. Measured at the same learning rate ε and α = 0.9 for all:

* on the benchmark's quadratic (κ = 100, 10 log-spaced curvatures, ε = 1/L), full gradients:
  the loss against the step and the steps until ``f <= 10⁻⁶ f(x₀)``;
* on the benchmark's MNIST-1D CNN (``models.cnn1d``, batch norm) trained by :func:`ravine.fit`
  with SGD, Momentum and Nesterov at ε = 0.01, several seeds: the training loss per epoch
  (mean ± std over seeds) and the validation accuracy.

Criterion for ``agrees``: on the quadratic both momentum methods reach the tolerance in fewer steps
than gradient descent and Nesterov in no more steps than momentum (it looks ahead); on the CNN both
momentum methods end with a lower mean training loss than SGD.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ravine import data, fit, models
from ravine.bench import problems
from ravine.bench.problems import QuadraticSpec
from ravine.gallery import Figure
from ravine.gallery._common import band, descend, figure, mean_std, pm, save, seeds

NAME = "momentum-nesterov"
ORDER = 80
CLAIM = (
    "Momentum and Nesterov momentum accelerate gradient descent at the same learning rate, and "
    "Nesterov's look-ahead gradient damps momentum's overshoot."
)
KAPPA = 100.0
DIM = 10
ALPHA = 0.9
TOL = 1e-6
QUAD_STEPS = 1000
CNN_LR = 0.01
OPTIMIZERS = {"sgd": {}, "momentum": {"momentum": ALPHA}, "nesterov": {"momentum": ALPHA}}
COLORS = {"sgd": "C0", "momentum": "C1", "nesterov": "C2"}


def steps_to(losses: list[float], tol: float) -> int | None:
    """The first step with ``f <= tol · f(x₀)``; None when never reached."""
    hits = np.nonzero(np.asarray(losses) <= tol * losses[0])[0]
    return int(hits[0]) if hits.size else None


def quadratic_curves() -> dict[str, list[float]]:
    """Loss per step of each method on the quadratic at ε = 1/L, α = 0.9."""
    problem = problems.build(QuadraticSpec(kind="quadratic", kappa=KAPPA, dim=DIM))
    lr = 1.0 / float(problem.curvature.max())
    return {
        o: descend(problem.loss, problem.start, o, lr, steps=QUAD_STEPS, **hp)[0]
        for o, hp in OPTIMIZERS.items()
    }


def cnn_histories(quick: bool, seed: int) -> dict[str, list[list[dict]]]:
    """fit's history for each method and seed on MNIST-1D with the CNN."""
    splits = data.load("mnist1d", seed=seed)
    train = splits.train if not quick else (splits.train.x[:1200], splits.train.y[:1200])
    out: dict[str, list[list[dict]]] = {o: [] for o in OPTIMIZERS}
    for s in seeds(quick, full=3, seed=seed):
        for optimizer, hp in OPTIMIZERS.items():
            torch.manual_seed(s)
            net = models.cnn1d()
            result = fit(
                net,
                train,
                splits.val,
                optimizer={"name": optimizer, **hp},
                lr=CNN_LR,
                epochs=2 if quick else 6,
                batch_size=100,
                seed=s,
                quiet=True,
            )
            out[optimizer].append(result.history)
    return out


def run(out_dir: Path, *, quick: bool = False, seed: int = 0) -> Figure:
    """Loss curves on the quadratic and on the MNIST-1D CNN for SGD, momentum and Nesterov."""
    curves = quadratic_curves()
    reach = {o: steps_to(c, TOL) for o, c in curves.items()}
    histories = cnn_histories(quick, seed)
    train = {o: [[r["train_loss"] for r in h] for h in hs] for o, hs in histories.items()}
    val = {o: [[r["val_acc"] for r in h] for h in hs] for o, hs in histories.items()}
    final = {o: mean_std([run[-1] for run in runs]) for o, runs in train.items()}
    final_acc = {o: mean_std([run[-1] for run in runs]) for o, runs in val.items()}
    n_seeds = len(train["sgd"])

    fig, axes = figure(1, 3, size=(15.0, 4.2))
    ax = axes[0][0]
    for optimizer, losses in curves.items():
        ax.semilogy(np.arange(len(losses)), losses, color=COLORS[optimizer], label=optimizer)
    ax.axhline(TOL * curves["sgd"][0], color="0.5", ls=":", lw=1, label=f"{TOL:g}·f(x₀)")
    # below tol² the curves only repeat their rates; the axis stops there
    ax.set_ylim(bottom=TOL**2 * curves["sgd"][0])
    ax.set_xlabel("step")
    ax.set_ylabel("f(x)")
    ax.set_title(f"quadratic κ = {KAPPA:g}: ε = 1/L, α = {ALPHA}", fontsize=9)
    ax.legend(fontsize=8)
    epochs = np.arange(1, len(train["sgd"][0]) + 1)
    for ax, values, ylabel in (
        (axes[0][1], train, "training loss (epoch mean)"),
        (axes[0][2], val, "validation accuracy"),
    ):
        for optimizer, runs in values.items():
            band(ax, epochs, runs, optimizer, color=COLORS[optimizer], marker="o", ms=3)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_title(
            f"MNIST-1D CNN, ε = {CNN_LR}, α = {ALPHA} ({n_seeds} seed{'s' * (n_seeds > 1)}, "
            "band ±1 std)",
            fontsize=9,
        )
        ax.legend(fontsize=8)
    axes[0][1].set_yscale("log")
    for ax in axes[0]:
        ax.grid(alpha=0.3)
    image = save(fig, out_dir / f"{NAME}.png")

    never = QUAD_STEPS + 1
    steps = {o: r if r is not None else never for o, r in reach.items()}
    agrees = (
        steps["momentum"] < steps["sgd"]
        and steps["nesterov"] < steps["sgd"]
        and steps["nesterov"] <= steps["momentum"]
        and final["momentum"][0] < final["sgd"][0]
        and final["nesterov"][0] < final["sgd"][0]
    )

    def when(o: str) -> str:
        return f"{reach[o]}" if reach[o] is not None else f"> {QUAD_STEPS}"

    measured = (
        f"on the quadratic (κ = {KAPPA:g}) f falls below {TOL:g}·f(x₀) after {when('sgd')} "
        f"gradient-descent steps, {when('momentum')} momentum steps and {when('nesterov')} "
        f"Nesterov steps; on the MNIST-1D CNN the final training loss is "
        f"{pm(final['sgd'], n_seeds)} (SGD), {pm(final['momentum'], n_seeds)} (momentum) and "
        f"{pm(final['nesterov'], n_seeds)} (Nesterov), validation accuracy "
        f"{pm(final_acc['sgd'], n_seeds)}, {pm(final_acc['momentum'], n_seeds)} and "
        f"{pm(final_acc['nesterov'], n_seeds)} "
        + (f"(mean ± std over {n_seeds} seeds)." if n_seeds > 1 else "(1 seed).")
    )
    numbers = {
        "quadratic_steps": reach,
        "cnn_final_train_loss": {o: list(v) for o, v in final.items()},
        "cnn_final_val_acc": {o: list(v) for o, v in final_acc.items()},
        "seeds": n_seeds,
    }
    return Figure(NAME, CLAIM, measured, agrees, [image], numbers)
