"""ravine: gradient descent zig-zags across a ravine; momentum rolls along it.

The lecture ("Momentum"): momentum deals with differential curvature by stepping along an
accumulated gradient; a component the gradient keeps in one direction is amplified, while the
components that flip sign from step to step cancel. Measured on the benchmark's 2-D quadratic
``f(x) = ½ (x₁² + κ x₂²)`` with κ = 100 from ``(−1, −0.1)`` — the problem of the quadratic-claims
suite (``examples/suites/quadratic-claims.yaml``) — with the suite's protocol: 100 full-gradient
steps of SGD, Momentum (α = 0.9) and Nesterov (α = 0.9), each at its best learning rate of the
same grid (four points per decade from 10⁻⁴ to 1; best = lowest final loss), run through the
benchmark API (:meth:`ravine.bench.Problem.run`).

Two numbers per method: the *zig-zag*, the fraction of steps at which the steep coordinate x₂
changes sign (the iterate jumps across the ravine), and the *distance left along the floor*,
the largest |x₁| over the last tenth of the steps relative to the start's |x₁| (the largest, since
momentum swings through x₁ = 0 and the last step alone may catch it at a crossing). Criterion
for ``agrees``: SGD's steep coordinate changes sign on at least half of its steps, and momentum's
distance left along the floor is at most a tenth of SGD's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ravine.bench import problems
from ravine.bench.problems import QuadraticSpec
from ravine.gallery import Figure
from ravine.gallery._common import figure, save

NAME = "ravine"
ORDER = 50
CLAIM = (
    "On a narrow ravine gradient descent zig-zags from wall to wall and creeps along the floor, "
    "while momentum rolls along the floor."
)
KAPPA = 100.0
START = [-1.0, -0.1]
STEPS = 100
GRID = [float(v) for v in np.round(np.logspace(-4, 0, 17), 12)]
OPTIMIZERS = {"sgd": {}, "momentum": {"momentum": 0.9}, "nesterov": {"momentum": 0.9}}
MIN_ZIGZAG = 0.5
MAX_FLOOR_RATIO = 0.1


def best_run(
    problem: problems.Problem, optimizer: str, hp: dict
) -> tuple[float, problems.RunResult]:
    """The grid's learning rate with the lowest final loss, and its run."""
    # unfused: on two numbers the fused CPU kernel's per-call cost dominates (see descend)
    runs = {lr: problem.run(optimizer, lr, {"fused": False, **hp}) for lr in GRID}
    lr = min(runs, key=lambda v: runs[v].final["loss"])
    return lr, runs[lr]


def zigzag(path: np.ndarray) -> float:
    """Fraction of steps at which the steep coordinate changes sign."""
    signs = np.sign(path[:, 1])
    return float(np.mean(signs[1:] * signs[:-1] < 0))


def run(out_dir: Path, *, quick: bool = False, seed: int = 0) -> Figure:
    """Tune each method's lr on the grid, draw the iterates over the contours, count zig-zags."""
    # Deterministic (full gradients, fixed start) and cheap: quick mode is the full entry.
    problem = problems.build(
        QuadraticSpec(kind="quadratic", kappa=KAPPA, epochs=STEPS, start=START)
    )
    best = {o: best_run(problem, o, hp) for o, hp in OPTIMIZERS.items()}
    paths = {o: np.asarray(r.trajectory) for o, (_, r) in best.items()}
    zig = {o: zigzag(p) for o, p in paths.items()}
    tail = STEPS - STEPS // 10
    floor = {o: float(np.abs(p[tail:, 0]).max() / abs(p[0, 0])) for o, p in paths.items()}
    finals = {o: r.final["loss"] for o, (_, r) in best.items()}

    points = np.vstack(list(paths.values()))
    lo, hi = points.min(axis=0), points.max(axis=0)
    margin = 0.08 * (hi - lo)
    lo, hi = lo - margin, hi + margin
    gx, gy = np.meshgrid(np.linspace(lo[0], hi[0], 300), np.linspace(lo[1], hi[1], 120))
    z = problem.loss(torch.as_tensor(np.stack([gx, gy], -1), dtype=torch.float64)).numpy()
    levels = np.geomspace(z.max() * 1e-4, z.max(), 12)
    fig, axes = figure(len(paths) + 1, 1, size=(7.5, 9.0))
    colors = {"sgd": "C0", "momentum": "C1", "nesterov": "C2"}
    for ax, (opt, pts) in zip(axes[:, 0], paths.items(), strict=False):
        ax.contour(gx, gy, z, levels=levels, colors="0.7", linewidths=0.6)
        ax.plot(pts[:, 0], pts[:, 1], ".-", color=colors[opt], lw=0.9, ms=3)
        ax.plot(*pts[0], "ko", ms=4)
        ax.plot(0, 0, "k*", ms=9)
        ax.set_aspect("equal")
        ax.set_xlim(lo[0], hi[0])
        ax.set_ylim(lo[1], hi[1])
        ax.set_xlabel("x₁ (along the floor, curvature 1)")
        ax.set_ylabel("x₂ (across, curvature κ)")
        ax.set_title(
            f"{opt} (lr {best[opt][0]:.3g}): x₂ changes sign on {zig[opt]:.0%} of steps; "
            f"|x₁| left {floor[opt]:.2g}",
            fontsize=9,
        )
    ax = axes[-1, 0]
    for opt, pts in paths.items():
        ax.semilogy(np.arange(len(pts)), np.abs(pts[:, 0]), color=colors[opt], label=opt)
    ax.set_xlabel("step")
    ax.set_ylabel("|x₁| (distance along the floor)")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.suptitle(f"2-D quadratic, κ = {KAPPA:g}, {STEPS} steps; ● start, ★ minimum", fontsize=10)
    image = save(fig, out_dir / f"{NAME}.png")
    agrees = zig["sgd"] >= MIN_ZIGZAG and floor["momentum"] <= MAX_FLOOR_RATIO * floor["sgd"]
    measured = (
        f"after {STEPS} steps at each method's best grid lr (SGD {best['sgd'][0]:.3g}, momentum "
        f"{best['momentum'][0]:.3g}, Nesterov {best['nesterov'][0]:.3g}), the steep coordinate "
        f"changes sign on {zig['sgd']:.0%} of SGD's steps, {zig['momentum']:.0%} of momentum's "
        f"and {zig['nesterov']:.0%} of Nesterov's; the distance left along the floor is "
        f"{floor['sgd']:.3g} for SGD, {floor['momentum']:.3g} for momentum and "
        f"{floor['nesterov']:.3g} for Nesterov (final losses {finals['sgd']:.3g}, "
        f"{finals['momentum']:.3g}, {finals['nesterov']:.3g})."
    )
    numbers = {
        "lr": {o: lr for o, (lr, _) in best.items()},
        "zigzag": zig,
        "floor_left": floor,
        "final_loss": finals,
    }
    return Figure(NAME, CLAIM, measured, agrees, [image], numbers)
