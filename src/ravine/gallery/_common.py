"""Helpers the gallery entries share: figures, seeds, bands over seeds, fitted slopes and
full-gradient descent on a small problem."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ravine import optim

__all__ = ["figure", "save", "seeds", "band", "loglog_slope", "mean_std", "descend"]


def figure(rows: int = 1, cols: int = 1, size: tuple[float, float] = (6.0, 4.0)) -> tuple[Any, Any]:
    """A matplotlib figure and its axes (the Agg backend; imported only when drawing)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(rows, cols, figsize=size, squeeze=False)
    return fig, axes


def save(fig: Any, path: Path) -> Path:
    """Save ``fig`` to ``path`` (PNG, tight layout) and close it."""
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def seeds(quick: bool, full: int = 3, seed: int = 0) -> list[int]:
    """The seeds of an entry: one in quick mode, ``full`` otherwise."""
    return [seed + i for i in range(1 if quick else full)]


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    array = np.asarray(values, dtype=float)
    return float(array.mean()), float(array.std(ddof=1)) if array.size > 1 else 0.0


def pm(stats: tuple[float, float], n: int, fmt: str = ".3f") -> str:
    """``mean ± std`` of a :func:`mean_std` pair over ``n`` seeds; the plain mean for one seed
    (a spread of one value says nothing)."""
    mean, std = stats
    return f"{mean:{fmt}} ± {std:{fmt}}" if n > 1 else f"{mean:{fmt}}"


def band(
    ax: Any, x: Sequence[float], runs: Sequence[Sequence[float]], label: str, **kw: Any
) -> None:
    """The mean over seeds as a line and ±1 standard deviation as a shaded band."""
    array = np.asarray(runs, dtype=float)
    mean = array.mean(axis=0)
    (line,) = ax.plot(x, mean, label=label, **kw)
    if array.shape[0] > 1:
        std = array.std(axis=0, ddof=1)
        ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.2, lw=0)


def loglog_slope(x: Sequence[float], y: Sequence[float]) -> float:
    """The least-squares slope of log y against log x."""
    return float(np.polyfit(np.log(np.asarray(x, float)), np.log(np.asarray(y, float)), 1)[0])


def descend(
    loss_fn: Callable[[torch.Tensor], torch.Tensor],
    start: torch.Tensor,
    optimizer: str,
    lr: float,
    *,
    steps: int,
    tol: float | None = None,
    **hp: Any,
) -> tuple[list[float], list[list[float]]]:
    """Full-gradient steps of a ravine optimizer on ``loss_fn`` from ``start``.

    The plain loop of the lecture's algorithm boxes (``backward(); step()``) over
    :func:`ravine.optim.create`; the loss and the iterate are read at the true θ
    (:func:`ravine.optim.true_params`), so Nesterov's interim point is never mistaken for it.
    Stops after ``steps`` steps, or as soon as ``f(θ_k) <= tol · f(θ_0)``. Unless ``hp`` says
    otherwise the optimizer runs unfused (``fused=False``): on a vector of a few numbers torch's
    fused CPU kernel costs milliseconds of CPU a call (its thread pool spins on a busy machine),
    the multi-tensor path about a tenth of a millisecond; both compute the same update.

    Returns:
        the losses ``f(θ_0), f(θ_1), ...`` and the iterates ``θ_0, θ_1, ...``.
    """
    theta = torch.nn.Parameter(start.detach().clone())
    opt = optim.create(optimizer, [theta], lr=lr, **{"fused": False, **hp})
    losses = [float(loss_fn(theta.detach()))]
    path = [theta.detach().tolist()]
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss_fn(theta).backward()
        opt.step()
        with optim.true_params(opt), torch.no_grad():
            losses.append(float(loss_fn(theta)))
            path.append(theta.detach().tolist())
        if tol is not None and losses[-1] <= tol * losses[0]:
            break
    return losses, path
