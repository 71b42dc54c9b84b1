"""Performance profiles (Dolan & Moré, *Benchmarking optimization software with performance
profiles*, Math. Programming 91, 2002).

For a cost :math:`t_{p,s} > 0` of solver :math:`s` on problem :math:`p` (here: epochs or
seconds to reach the problem's target; :math:`\\infty` when it never does), the performance
ratio is

.. math:: r_{p,s} = \\frac{t_{p,s}}{\\min_{s'} t_{p,s'}}

and the profile of solver :math:`s` is the fraction of problems on which it is within a factor
:math:`\\tau` of the best solver:

.. math:: \\rho_s(\\tau) = \\frac{1}{n_p}\\, \\bigl|\\{p : r_{p,s} \\le \\tau\\}\\bigr|.

:math:`\\rho_s(1)` is the fraction of problems :math:`s` wins (ties count for every tied solver);
:math:`\\lim_{\\tau\\to\\infty} \\rho_s(\\tau)` the fraction it solves at all. A problem no solver
solves has every ratio infinite and still counts in :math:`n_p`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["performance_ratios", "performance_profile", "plot_performance_profile"]


def performance_ratios(costs: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
    """Ratios :math:`r_{p,s}` of a ``(problems, solvers)`` cost table (``inf`` = failure).

    Raises:
        ValueError: if the table is not 2-D or holds NaN or a cost <= 0.
    """
    t = np.asarray(costs, dtype=float)
    if t.ndim != 2 or t.size == 0:
        raise ValueError(
            f"costs must be a non-empty (problems, solvers) table, got shape {t.shape}"
        )
    if np.isnan(t).any():
        raise ValueError("costs must not be NaN (use inf for a solver that fails a problem)")
    if (t <= 0).any():
        raise ValueError(f"costs must be > 0 (or inf), got minimum {t.min()}")
    best = t.min(axis=1, keepdims=True)
    with np.errstate(invalid="ignore"):
        ratios = t / best
    ratios[~np.isfinite(best[:, 0])] = np.inf
    return ratios


def performance_profile(
    costs: np.ndarray | Sequence[Sequence[float]], taus: np.ndarray | Sequence[float] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The profile :math:`\\rho_s(\\tau)` of every solver at every ``tau``.

    Args:
        costs: ``(problems, solvers)`` table of positive costs, ``inf`` where a solver fails.
        taus: factors ``>= 1`` at which to evaluate (``inf`` gives the fraction of problems
            solved at all); default: 1 and every distinct finite ratio (the points where a
            profile steps up).

    Returns:
        ``(taus, rho)`` with ``rho`` of shape ``(len(taus), solvers)``.
    """
    ratios = performance_ratios(costs)
    if taus is None:
        finite = ratios[np.isfinite(ratios)]
        taus = np.unique(np.concatenate([[1.0], finite]))
    taus = np.asarray(taus, dtype=float)
    if taus.ndim != 1 or (taus < 1).any():
        raise ValueError(f"taus must be a 1-D array of values >= 1, got {taus}")
    # A failure's ratio is infinite and stays outside every profile, even at tau = inf.
    within = np.isfinite(ratios)[None, :, :] & (ratios[None, :, :] <= taus[:, None, None])
    rho = within.mean(axis=1)
    return taus, rho


def plot_performance_profile(
    costs: np.ndarray | Sequence[Sequence[float]],
    solvers: Sequence[str],
    path: str | Path,
    *,
    cost_name: str = "cost",
    colors: Sequence[str] | None = None,
) -> None:
    """Write the profiles as step curves over :math:`\\tau` on a log axis to the PNG ``path``.

    ``colors`` (one per solver) keeps each solver's colour from the other plots of a report.
    """
    from matplotlib.figure import Figure

    taus, rho = performance_profile(costs)
    tau_max = max(2.0, float(taus.max()) * 1.5)
    grid = np.concatenate([taus, [tau_max]])
    rho = np.vstack([rho, rho[-1:]])
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.subplots()
    styles = ("-", "--", "-.", ":")
    for j, solver in enumerate(solvers):
        # line styles keep coinciding profiles apart
        ax.step(grid, rho[:, j], where="post", label=solver, linewidth=1.8,
                linestyle=styles[j % len(styles)], color=None if colors is None else colors[j])
    ax.set_xscale("log", base=2)
    ax.set_xlim(1, tau_max)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel(f"τ (within a factor τ of the best {cost_name})")
    ax.set_ylabel("fraction of problems ρ(τ)")
    ax.set_title("Performance profile")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=110)
