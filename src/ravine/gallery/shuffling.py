r"""shuffling: shuffle once, then walk contiguous blocks — or draw a fresh sample every step.

The lecture ("Forming Mini-Batches"): SGD works when every step draws a fresh random minibatch, but
it is more common to shuffle the data once and cut it into N/m contiguous blocks; "this version of
the algorithm has identical properties", and an epoch then uses every example exactly once. A fresh
sample at every step draws examples *with replacement across steps*, so in one epoch's worth of
steps it sees only a fraction 1 − (1 − m/N)^⌈N/m⌉ ≈ 1 − 1/e ≈ 63 % of the examples.

Measured with :class:`ravine.data.EpochBatches` and :class:`ravine.data.RandomBatches` (fit's
``batching="epoch"`` and ``"random"``):

* coverage: distinct examples seen against the step, for both samplers, next to the expectation
  N(1 − (1 − m/N)^k) of the fresh sample (each batch is m distinct examples, so an example misses
  a batch with probability 1 − m/N);
* training: an MLP 100-100 on MNIST-1D trained by :func:`ravine.fit` (momentum 0.9, ε = 0.05,
  m = 64) with each sampler from the same initialization, several seeds: the validation loss per
  epoch (mean ± std) and, at the end, the loss over the whole training set.

Criterion for ``agrees``: the epoch sampler covers every example exactly once per epoch, the fresh
sample's coverage after one epoch is within 0.02 of its expectation, and the two samplers' final
whole-training-set losses differ by at most twice the standard error of the difference,
2·√((s₁² + s₂²)/n) over n seeds (the "identical properties").
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from ravine import data, fit, models
from ravine.gallery import Figure
from ravine.gallery._common import band, figure, mean_std, pm, save, seeds

NAME = "shuffling"
ORDER = 20
CLAIM = (
    "Shuffling once per epoch and taking contiguous blocks trains like drawing a fresh random "
    "minibatch every step, but uses every example exactly once per epoch, where fresh samples "
    "see only about 1 − 1/e of them."
)
BATCH = 64
LR = 0.05
COVERAGE_TOLERANCE = 0.02
SAMPLERS = {"epoch": "EpochBatches (shuffle, blocks)", "random": "RandomBatches (fresh sample)"}


def coverage(sampler: data.EpochBatches | data.RandomBatches, epochs: int) -> list[int]:
    """Distinct examples seen after each step of ``epochs`` epochs of ``sampler``."""
    seen = torch.zeros(sampler.n, dtype=torch.bool)
    counts = []
    for _ in range(epochs):
        for idx in sampler:
            seen[idx] = True
            counts.append(int(seen.sum()))
    return counts


def run(out_dir: Path, *, quick: bool = False, seed: int = 0) -> Figure:
    """Coverage of both samplers and training curves with each (mean ± std over seeds)."""
    splits = data.load("mnist1d", seed=seed)
    n = 640 if quick else len(splits.train)
    train = (splits.train.x[:n], splits.train.y[:n])
    epochs = 3 if quick else 12
    run_seeds = seeds(quick, full=3, seed=seed) if not quick else [seed, seed + 1]
    val: dict[str, list[list[float]]] = {k: [] for k in SAMPLERS}
    final: dict[str, list[float]] = {k: [] for k in SAMPLERS}
    for s in run_seeds:
        for batching in SAMPLERS:
            torch.manual_seed(s)
            net = models.mlp(40, [100, 100], 10)
            result = fit(
                net,
                train,
                splits.val,
                test=train,
                optimizer={"name": "momentum", "momentum": 0.9},
                lr=LR,
                epochs=epochs,
                batch_size=BATCH,
                batching=batching,
                seed=s,
                quiet=True,
            )
            val[batching].append([r["val_loss"] for r in result.history])
            final[batching].append(result.test["test_loss"])

    per_epoch = math.ceil(n / BATCH)
    cover = {
        "epoch": coverage(data.EpochBatches(n, BATCH, seed=seed), 3),
        "random": coverage(data.RandomBatches(n, BATCH, seed=seed), 3),
    }
    expected_one = 1 - (1 - BATCH / n) ** per_epoch
    one_epoch = {k: c[per_epoch - 1] / n for k, c in cover.items()}

    fig, axes = figure(1, 2, size=(12.0, 4.2))
    ax = axes[0][0]
    steps = np.arange(1, len(cover["epoch"]) + 1)
    for kind, label in SAMPLERS.items():
        ax.plot(steps, np.asarray(cover[kind]) / n, label=label)
    ax.plot(steps, 1 - (1 - BATCH / n) ** steps, "k:", lw=1, label="expected, fresh sample")
    for e in range(1, 4):
        ax.axvline(e * per_epoch, color="0.8", lw=0.8)
    ax.set_xlabel(f"step (one epoch = ⌈N/m⌉ = {per_epoch} steps)")
    ax.set_ylabel("fraction of examples seen")
    ax.set_title(f"coverage, N = {n}, m = {BATCH}", fontsize=9)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax = axes[0][1]
    x = np.arange(1, epochs + 1)
    for kind, label in SAMPLERS.items():
        band(ax, x, val[kind], label, marker="o", ms=3)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation loss")
    ax.set_title(
        f"MNIST-1D MLP, momentum 0.9, ε = {LR} ({len(run_seeds)} seeds, band ±1 std)", fontsize=9
    )
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    image = save(fig, out_dir / f"{NAME}.png")

    stats = {k: mean_std(v) for k, v in final.items()}
    difference = stats["epoch"][0] - stats["random"][0]
    standard_error = math.sqrt((stats["epoch"][1] ** 2 + stats["random"][1] ** 2) / len(run_seeds))
    agrees = (
        one_epoch["epoch"] == 1.0
        and abs(one_epoch["random"] - expected_one) <= COVERAGE_TOLERANCE
        and abs(difference) <= 2 * standard_error
    )
    measured = (
        f"after one epoch EpochBatches has seen {one_epoch['epoch']:.0%} of the examples and "
        f"RandomBatches {one_epoch['random']:.1%} (expected {expected_one:.1%}); final loss over "
        f"the training set {pm(stats['epoch'], len(run_seeds), '.4f')} (epoch) vs "
        f"{pm(stats['random'], len(run_seeds), '.4f')} (random), "
        "difference "
        f"{difference:+.4f} against 2 standard errors {2 * standard_error:.4f} "
        f"({len(run_seeds)} seeds, {epochs} epochs)."
    )
    numbers = {
        "coverage_one_epoch": one_epoch,
        "coverage_expected": expected_one,
        "final_train_loss": {k: list(v) for k, v in stats.items()},
        "difference": difference,
        "standard_error": standard_error,
        "seeds": len(run_seeds),
    }
    return Figure(NAME, CLAIM, measured, agrees, [image], numbers)
