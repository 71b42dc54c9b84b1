r"""step-size-rules: SGD needs a decreasing step size.

The lecture ("Convergence of SGD", "Step Size Rules"): the minibatch gradient is noisy, so with a
constant step ε SGD does not converge; it hovers at a noise floor. Step sizes with
Σ ε_k = ∞ and Σ ε_k² < ∞, such as ε_k ∝ 1/k, average the noise out, and in practice a linear decay
from α to β = 0.01 α over t = 100 N/m steps (100 epochs) does too.

Measured on noisy least squares (``ravine.data.quadratic_problem``: N examples, 10 features,
Hessian condition number 10, label noise σ = 1) with a linear model without bias trained by
:func:`ravine.fit` (SGD, minibatch m = 8, 100 epochs, so the lecture's t is the whole run) under
three schedules from the same α = 0.1:

* ``constant``: ε_k = α;
* ``inverse-time``: ε_k = α / (1 + k/τ) ≈ ατ/k, meets both conditions. The constant c = ατ of a
  1/k rule matters: with c·μ < 1/2 (μ the smallest curvature) the rate is slower than 1/k, and
  arbitrarily slow as c·μ → 0 (Nemirovski, Juditsky, Lan & Shapiro 2009, "Robust stochastic
  approximation approach to stochastic programming", §1). τ is therefore set from the problem's
  known curvature, c·μ = 1: τ = 1/(αμ) with μ = 2/κ, the smallest eigenvalue of the mean squared
  error's Hessian (50 steps here; ravine's default τ of one epoch would be N/m);
* ``linear-decay``: the lecture's rule with β = 0.01 α and t = 100 N/m.

The quantity is the *excess* training loss ``L(w) − L(w_opt)`` (mean squared error over the whole
training set, with ``w_opt`` its least-squares minimizer), evaluated after every epoch (the
training set passed as fit's validation set). Seeds change the data, the initialization and the
batches. Criterion for ``agrees``: for each decay, mean + std of the final excess loss over seeds
lies below mean − std of the constant step's (one seed: the plain values).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from ravine import data, fit, schedules
from ravine.gallery import Figure
from ravine.gallery._common import figure, mean_std, save, seeds

NAME = "step-size-rules"
ORDER = 30
CLAIM = (
    "SGD with a constant step stalls at a noise floor; a step size that decreases (∝ 1/k, or "
    "linearly to 0.01α over t = 100 N/m steps) goes below it."
)
ALPHA = 0.1
BATCH = 8
EPOCHS = 100
DIM = 10
KAPPA = 10.0
NOISE = 1.0
RULES = ("constant", "inverse-time", "linear-decay")
# c·μ = 1 for the 1/k rule (module docstring); μ = 2/κ for the mean squared error.
TAU = 1.0 / (ALPHA * 2.0 / KAPPA)


def one_run(rule: str, n: int, seed: int) -> tuple[list[float], list[float]]:
    """Excess training loss after each epoch and the learning rate per epoch, one schedule."""
    x, y, info = data.quadratic_problem(n, DIM, KAPPA, noise=NOISE, seed=seed)
    xt, yt = torch.as_tensor(x), torch.as_tensor(y).reshape(-1, 1)
    optimum = float(np.mean((x @ info["w_opt"] - y) ** 2))
    torch.manual_seed(seed)
    net = nn.Linear(DIM, 1, bias=False).double()
    result = fit(
        net,
        (xt, yt),
        (xt, yt),
        optimizer="sgd",
        lr=ALPHA,
        schedule={"name": rule, "decay_steps": TAU} if rule == "inverse-time" else rule,
        epochs=EPOCHS,
        batch_size=BATCH,
        loss="mse",
        seed=seed,
        quiet=True,
    )
    excess = [r["val_loss"] - optimum for r in result.history]
    return excess, [r["lr"] for r in result.history]


def run(out_dir: Path, *, quick: bool = False, seed: int = 0) -> Figure:
    """Excess loss per epoch under the three schedules (mean ± std over seeds)."""
    n = 32 if quick else 128
    runs: dict[str, list[list[float]]] = {r: [] for r in RULES}
    rates: dict[str, list[float]] = {}
    for s in seeds(quick, full=3, seed=seed):
        for rule in RULES:
            excess, lrs = one_run(rule, n, s)
            runs[rule].append(excess)
            rates[rule] = lrs
    final = {r: mean_std([v[-1] for v in runs[r]]) for r in RULES}
    # the floor: the constant step's excess over the second half of training, against its end
    half = EPOCHS // 2
    plateau = mean_std([float(np.mean(v[half:])) for v in runs["constant"]])
    n_seeds = len(runs["constant"])

    steps_per_epoch = -(-n // BATCH)
    fig, axes = figure(1, 2, size=(12.0, 4.2))
    ax = axes[0][0]
    epochs = np.arange(1, EPOCHS + 1)
    for rule in RULES:
        # on a log axis the band is mean ± std of log10 (a linear band would cross zero)
        logs = np.log10(np.maximum(np.asarray(runs[rule]), 1e-300))
        mean = logs.mean(axis=0)
        (line,) = ax.plot(epochs, 10**mean, label=f"{rule} (geometric mean)")
        if len(logs) > 1:
            spread = logs.std(axis=0, ddof=1)
            ax.fill_between(
                epochs,
                10 ** (mean - spread),
                10 ** (mean + spread),
                color=line.get_color(),
                alpha=0.2,
                lw=0,
            )
    ax.axhline(plateau[0], color="C0", ls=":", lw=1, label="constant: mean of epochs 51-100")
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("excess training loss L(w) − L(w_opt)")
    ax.set_title(
        f"noisy least squares, N = {n}, m = {BATCH}, α = {ALPHA} ({n_seeds} seed"
        f"{'s' * (n_seeds > 1)}, band ±1 std of log₁₀)",
        fontsize=9,
    )
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax = axes[0][1]
    total = EPOCHS * steps_per_epoch
    for rule in RULES:
        # the schedule as fit builds it (steps_per_epoch gives the lecture's defaults)
        probe = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=ALPHA)
        options = {"decay_steps": TAU} if rule == "inverse-time" else {}
        sched = schedules.create(rule, probe, steps_per_epoch=steps_per_epoch, **options)
        ax.plot(np.arange(total), [lr[0] for lr in schedules.trace(sched, total)], label=rule)
    ax.set_yscale("log")
    ax.set_xlabel("step k")
    ax.set_ylabel("learning rate ε_k")
    ax.set_title(f"the schedules (τ = {TAU:g}; t = 100 N/m = {total} steps, β = 0.01α)", fontsize=9)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    image = save(fig, out_dir / f"{NAME}.png")

    constant_low = final["constant"][0] - final["constant"][1]
    agrees = all(final[r][0] + final[r][1] < constant_low for r in RULES[1:])

    def pm(pair: tuple[float, float]) -> str:
        return f"{pair[0]:.3g} ± {pair[1]:.2g}"

    measured = (
        f"final excess loss after {EPOCHS} epochs: constant {pm(final['constant'])} (its mean "
        f"over epochs 51-100: {pm(plateau)}), 1/k {pm(final['inverse-time'])}, linear decay "
        f"{pm(final['linear-decay'])} (mean ± std over {n_seeds} seed{'s' * (n_seeds > 1)}); "
        f"the decays end {final['constant'][0] / final['inverse-time'][0]:.1f}x and "
        f"{final['constant'][0] / final['linear-decay'][0]:.1f}x below the constant step."
    )
    numbers = {
        "final_excess": {r: list(v) for r, v in final.items()},
        "constant_plateau": list(plateau),
        "seeds": n_seeds,
        "n": n,
    }
    return Figure(NAME, CLAIM, measured, agrees, [image], numbers)
