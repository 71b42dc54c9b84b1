"""adaptive-scaling: AdaGrad, RMSProp and Adam adapt a step per parameter.

The lecture ("Adaptive step sizes"): re-scaling each gradient component by its accumulated
magnitude amplifies persistently small components and damps persistently large ones, so these
methods are insensitive to how each axis is scaled. Two problems, each solved as given and
after an axis-aligned rescaling, every optimizer at its best learning rate of the same grid
(an equal tuning budget):

1. **The quadratic** f(x) = ½ Σ c_i x_i², κ = 100 (the ``quadratic-claims`` benchmark suite's
   problems, built with :func:`ravine.bench.build`): rescaling the second axis by 1/√10 gives
   Hessian diag(1, 10), same start. The problem is separable and homogeneous, so the rescaled
   gradient is the original one times a constant per coordinate, which RMSProp/Adam/AdaGrad
   divide out: their iterates do not change (up to their ε), and the best final loss changes by
   at most the factor 10 (one decade) that the rescaling puts on the loss itself.
2. **Logistic regression** (a linear softmax model, :func:`ravine.models.mlp` with no hidden
   layer, zero initial weights) on the standardized digits, trained with :func:`ravine.fit`, and
   on the same data with every feature multiplied by its own factor s_i = 10^u, u ~ U(−1, 1)
   (seeded). The rescaled problem is the original in the coordinates w_i/s_i, so its Hessian is
   S H S: SGD must take a step small enough for the largest s_i² and then crawls along the
   smallest. Adaptive methods divide each coordinate's gradient (∝ s_i) by its magnitude; the
   curvature left over (∝ s_i, not s_i²) is only partly removed, so the lecture's
   insensitivity is not exact here.

The sensitivity of an optimizer is the change of its best final training loss in decades,
log10(rescaled / original). Agreement: on the quadratic every adaptive method changes by
between −1.01 and +0.01 decades (the rescaled loss is at most 10x smaller at the same iterate)
while SGD changes by more than 10 decades either way; on logistic regression every adaptive
method changes by less than SGD.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ravine import bench, data, fit, models
from ravine.gallery import Figure
from ravine.gallery._common import figure, save

NAME = "adaptive-scaling"
ORDER = 90
CLAIM = (
    "AdaGrad, RMSProp and Adam adapt a step size per parameter, so they are insensitive to how "
    "each axis of the problem is scaled."
)
QUADRATICS = [
    {"kind": "quadratic", "name": "quadratic", "kappa": 100, "epochs": 100, "start": [-1.0, -0.1]},
    {
        "kind": "quadratic",
        "name": "quadratic-rescaled",
        "kappa": 100,
        "rescale": [1.0, 1 / math.sqrt(10)],
        "epochs": 100,
        "start": [-1.0, -0.1],
    },
]
"""The problems of ``examples/suites/quadratic-claims.yaml``."""
QUADRATIC_GRID = [float(v) for v in np.logspace(-4, 0, 17)]
"""Four points per decade, as in the suite."""
OPTIMIZERS = ["sgd", "adagrad", "rmsprop", "adam"]


def _best(results: dict[float, float]) -> tuple[float, float]:
    """The (lr, loss) with the smallest finite loss ((nan, inf) if every run diverged)."""
    finite = {lr: v for lr, v in results.items() if math.isfinite(v)}
    if not finite:
        return math.nan, math.inf
    lr = min(finite, key=finite.__getitem__)
    return lr, finite[lr]


def _decades(original: float, rescaled: float) -> float:
    return math.log10(max(rescaled, 1e-300) / max(original, 1e-300))


def _quadratic_sweep() -> dict[str, dict[str, dict[float, float]]]:
    """Final loss by problem, optimizer and lr (quick or not: these runs are cheap)."""
    out: dict[str, dict[str, dict[float, float]]] = {}
    for spec in QUADRATICS:
        problem = bench.build(spec)
        out[spec["name"]] = {
            name: {lr: problem.run(name, lr).final["loss"] for lr in QUADRATIC_GRID}
            for name in OPTIMIZERS
        }
    return out


def _logistic_sweep(
    quick: bool, seed: int
) -> tuple[dict[str, dict[str, dict[float, float]]], np.ndarray]:
    splits = data.load("digits", seed=seed, standardize=True)
    x, y = splits.train.x.double(), splits.train.y
    generator = torch.Generator().manual_seed(seed)
    scales = 10 ** (2 * torch.rand(x.shape[1], generator=generator, dtype=torch.float64) - 1)
    grid = [float(v) for v in np.logspace(-3, 0.5, 5 if quick else 11)]
    epochs = 3 if quick else 10
    out: dict[str, dict[str, dict[float, float]]] = {}
    for label, features in (("original", x), ("rescaled", x * scales)):
        out[label] = {}
        for name in OPTIMIZERS:
            out[label][name] = {}
            for lr in grid:
                net = models.mlp(64, [], 10).double()
                with torch.no_grad():
                    for param in net.parameters():
                        param.zero_()
                try:
                    fit(
                        net,
                        (features, y),
                        optimizer=name,
                        lr=lr,
                        epochs=epochs,
                        batch_size=128,
                        seed=seed,
                        quiet=True,
                    )
                    loss = float(nn.functional.cross_entropy(net(features), y).detach())
                except RuntimeError:  # a non-finite loss: diverged
                    loss = math.inf
                out[label][name][lr] = loss if math.isfinite(loss) else math.inf
    return out, scales.numpy()


def run(out_dir: Path, *, quick: bool = False, seed: int = 0) -> Figure:
    """Sweep the learning rate of each optimizer on both problems, original and rescaled."""
    quadratic = _quadratic_sweep()
    logistic, scales = _logistic_sweep(quick, seed)
    problems = {
        "quadratic": (quadratic["quadratic"], quadratic["quadratic-rescaled"]),
        "logistic": (logistic["original"], logistic["rescaled"]),
    }
    best = {
        key: {name: (_best(original[name]), _best(rescaled[name])) for name in OPTIMIZERS}
        for key, (original, rescaled) in problems.items()
    }
    change = {
        key: {name: _decades(o[1], r[1]) for name, (o, r) in by_name.items()}
        for key, by_name in best.items()
    }

    fig, axes = figure(1, 3, size=(15.0, 4.4))
    titles = {
        "quadratic": "quadratic κ = 100; dashed: axis 2 rescaled by 1/√10",
        "logistic": "logistic regression (digits); dashed: features × 10^U(−1,1)",
    }
    for ax, (key, (original, rescaled)) in zip(axes[0][:2], problems.items(), strict=True):
        for i, name in enumerate(OPTIMIZERS):
            lrs = sorted(original[name])
            color = f"C{i}"
            ax.loglog(lrs, [original[name][lr] for lr in lrs], "o-", ms=3, color=color, label=name)
            ax.loglog(lrs, [rescaled[name][lr] for lr in lrs], "s--", ms=3, color=color)
        if key == "quadratic":  # AdaGrad reaches 1e-198; the differences that matter are above
            ax.set_ylim(1e-20, 1e8)
        ax.set_xlabel("learning rate")
        ax.set_ylabel("final training loss (diverged: not drawn)")
        ax.set_title(titles[key], fontsize=9)
        ax.legend(fontsize=8)
    ax = axes[0][2]
    positions = np.arange(len(OPTIMIZERS))
    for offset, key in ((-0.2, "quadratic"), (0.2, "logistic")):
        ax.bar(positions + offset, [change[key][n] for n in OPTIMIZERS], width=0.4, label=key)
    ax.axhline(0.0, color="k", lw=0.6)
    ax.set_xticks(positions, OPTIMIZERS)
    ax.set_xlabel("optimizer (each at its best lr)")
    ax.set_ylabel("change of the best final loss (decades)")
    ax.set_title("sensitivity to the rescaling: log10(rescaled / original)", fontsize=9)
    ax.legend(fontsize=8)
    image = save(fig, out_dir / f"{NAME}.png")

    adaptive = OPTIMIZERS[1:]
    agrees = bool(
        all(-1.01 <= change["quadratic"][n] <= 0.01 for n in adaptive)
        and abs(change["quadratic"]["sgd"]) > 10
        and all(change["logistic"][n] < change["logistic"]["sgd"] for n in adaptive)
    )

    def sentence(key: str) -> str:
        return ", ".join(f"{n} {change[key][n]:+.2f}" for n in OPTIMIZERS)

    measured = (
        "change of the best final loss under the rescaling, in decades: quadratic "
        f"{sentence('quadratic')}; "
        f"logistic regression {sentence('logistic')} (feature scales "
        f"{scales.min():.2g} to {scales.max():.2g})."
    )
    numbers = {
        "change_decades": change,
        "best": {
            key: {n: {"original": list(o), "rescaled": list(r)} for n, (o, r) in by_name.items()}
            for key, by_name in best.items()
        },
    }
    return Figure(NAME, CLAIM, measured, agrees, [image], numbers)
