"""Helpers the gallery entries share: figures, seeds, bands over seeds and fitted slopes."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["figure", "save", "seeds", "band", "loglog_slope", "mean_std"]


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
