r"""conditioning: a large condition number κ makes gradient descent slow.

The lecture ("Conditioning"): when the Hessian's condition number κ = |λmax|/|λmin| is large, the
objective rises fast in one direction and slowly in another, and gradient descent needs many steps.
Measured on the benchmark's quadratic ``f(x) = ½ Σ_i λ_i x_i²`` (:mod:`ravine.bench.problems`:
``dim`` = 10 eigenvalues log-spaced from μ = 1 to L = κ, started with the same loss in every
eigendirection), for κ from 10 to 10⁴: the number of full-gradient steps until
``f(x_k) <= tol · f(x_0)`` (tol = 10⁻⁶) for gradient descent, heavy-ball momentum and Nesterov
momentum, each at the step size that is best for that κ, known in closed form on a quadratic:

* gradient descent: ε = 2/(L + μ), contraction (κ−1)/(κ+1) per step, so steps ∝ κ;
* heavy ball (Polyak 1964): α = ((√κ−1)/(√κ+1))², ε = 4/(√L + √μ)², contraction √α, steps ∝ √κ;
* Nesterov (Nesterov 1983; the strongly convex constant-momentum form): ε = 1/L,
  α = (√κ−1)/(√κ+1), contraction 1 − 1/√κ, steps ∝ √κ.

(ravine's Momentum and Nesterov take α and ε exactly as in Algorithms 8.2 and 8.3.) The fitted
log-log slope of steps against κ is expected ≈ 1 for gradient descent and ≈ 0.5 for the two
momentum methods. Criterion for ``agrees``: |slope − 1| <= 0.1 for gradient descent and
|slope − 0.5| <= 0.1 for each momentum method.
"""

from __future__ import annotations

import math
from pathlib import Path

from ravine.bench import problems
from ravine.bench.problems import QuadraticSpec
from ravine.gallery import Figure
from ravine.gallery._common import descend, figure, loglog_slope, save

NAME = "conditioning"
ORDER = 40
CLAIM = (
    "A large condition number κ makes gradient descent slow: at its best step size the number of "
    "steps grows like κ, and like √κ with momentum or Nesterov momentum."
)
TOL = 1e-6
DIM = 10
EXPECTED = {"sgd": 1.0, "momentum": 0.5, "nesterov": 0.5}
SLOPE_TOLERANCE = 0.1
LABELS = {"sgd": "gradient descent", "momentum": "heavy-ball momentum", "nesterov": "Nesterov"}


def best_step(optimizer: str, mu: float, big_l: float) -> dict[str, float]:
    """The closed-form best hyperparameters on a quadratic with curvatures in [μ, L]."""
    kappa = big_l / mu
    root = math.sqrt(kappa)
    if optimizer == "sgd":
        return {"lr": 2.0 / (big_l + mu)}
    if optimizer == "momentum":
        return {
            "lr": 4.0 / (math.sqrt(big_l) + math.sqrt(mu)) ** 2,
            "momentum": ((root - 1) / (root + 1)) ** 2,
        }
    return {"lr": 1.0 / big_l, "momentum": (root - 1) / (root + 1)}


def steps_to_tolerance(kappa: float, optimizer: str, *, max_steps: int = 500_000) -> int:
    """Steps of ``optimizer`` at its best step size until f <= TOL · f(x_0) at this κ."""
    problem = problems.build(QuadraticSpec(kind="quadratic", kappa=kappa, dim=DIM))
    curvature = problem.curvature
    hp = best_step(optimizer, float(curvature.min()), float(curvature.max()))
    losses, _ = descend(problem.loss, problem.start, optimizer, steps=max_steps, tol=TOL, **hp)
    if losses[-1] > TOL * losses[0]:
        raise RuntimeError(f"{optimizer} did not reach tol={TOL} at kappa={kappa} in {max_steps}")
    return len(losses) - 1


def run(out_dir: Path, *, quick: bool = False, seed: int = 0) -> Figure:
    """Steps to the tolerance against κ for the three methods; fitted log-log slopes."""
    # Deterministic problems (full gradients, fixed start): the seed changes nothing here.
    kappas = [10.0, 100.0, 1000.0] if quick else [10.0, 30.0, 100.0, 300.0, 1e3, 3e3, 1e4]
    steps = {o: [steps_to_tolerance(k, o) for k in kappas] for o in EXPECTED}
    slopes = {o: loglog_slope(kappas, s) for o, s in steps.items()}
    fig, axes = figure(size=(6.0, 4.4))
    ax = axes[0][0]
    for optimizer, counts in steps.items():
        (line,) = ax.loglog(
            kappas, counts, "o-", label=f"{LABELS[optimizer]}: slope {slopes[optimizer]:.3f}"
        )
        # the expected power law through the first point
        ref = [counts[0] * (k / kappas[0]) ** EXPECTED[optimizer] for k in kappas]
        ax.loglog(kappas, ref, ":", color=line.get_color(), lw=1)
    ax.set_xlabel("condition number κ = L/μ")
    ax.set_ylabel(f"steps until f ≤ {TOL:g}·f(x₀)")
    ax.set_title(f"quadratic, {DIM} log-spaced curvatures; dotted: κ¹ and κ^½", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    image = save(fig, out_dir / f"{NAME}.png")
    agrees = all(abs(slopes[o] - EXPECTED[o]) <= SLOPE_TOLERANCE for o in EXPECTED)
    last = f"{kappas[-1]:g}"
    measured = (
        f"fitted slopes of steps vs κ (κ = {kappas[0]:g} … {last}): gradient descent "
        f"{slopes['sgd']:.3f}, momentum {slopes['momentum']:.3f}, Nesterov "
        f"{slopes['nesterov']:.3f} (expected 1, 0.5, 0.5 ± {SLOPE_TOLERANCE}); at κ = {last} "
        f"they need {steps['sgd'][-1]}, {steps['momentum'][-1]} and {steps['nesterov'][-1]} steps."
    )
    numbers = {
        "kappas": kappas,
        "steps": steps,
        "slopes": slopes,
        "tol": TOL,
    }
    return Figure(NAME, CLAIM, measured, agrees, [image], numbers)
