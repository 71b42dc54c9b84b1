"""regularization: weight decay and dropout reduce overfitting.

The lecture ("Regularization"): weight decay is the squared two-norm penalty on the weights and
dropout zeroes a random set of hidden units at each iteration; both regularize, and "dropout
seems to give a consistent improvement". Measured on the setting of the early-stopping entry —
an MLP (40 → 256 → 256 → 10) trained with momentum on the first ``N_TRAIN`` MNIST-1D training
examples, which overfits within a few epochs — for a sweep of the weight decay λ (``fit``'s
``weight_decay=``: λθ added to the gradient of every weight, biases excluded) at p = 0, and of
the dropout probability p (``models.mlp(dropout=p)``) at λ = 0. Each point is the validation
accuracy after the last epoch (no early stopping), mean ± std over seeds (the seed sets the
initial weights, the batch order and the dropout masks; the data are the same).

Agreement criterion, for weight decay and for dropout alike: take the setting with the best mean
validation accuracy; over seeds (paired: same seed, with and without) its gain over no
regularization has a mean above twice its standard error (with one seed: above 0), and its mean
*test* accuracy is above the unregularized one (the best setting was chosen on validation
accuracy, so the test set checks that the gain is not a selection effect).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from ravine import data, fit, models
from ravine.gallery import Figure
from ravine.gallery._common import band, figure, mean_std, pm, save, seeds

NAME = "regularization"
ORDER = 110
CLAIM = "Weight decay and dropout reduce overfitting: both raise the validation accuracy."
N_TRAIN = 500
HIDDEN = [256, 256]
LR = 0.05
BATCH_SIZE = 50


def _train(splits: data.Splits, seed: int, epochs: int, weight_decay: float, dropout: float):
    train = (splits.train.x[:N_TRAIN], splits.train.y[:N_TRAIN])
    torch.manual_seed(seed)
    net = models.mlp(splits.num_features, HIDDEN, splits.num_classes, dropout=dropout)
    result = fit(
        net,
        train,
        splits.val,
        test=splits.test,
        optimizer="momentum",
        lr=LR,
        epochs=epochs,
        batch_size=BATCH_SIZE,
        weight_decay=weight_decay,
        seed=seed,
        quiet=True,
    )
    return result.history[-1]["val_acc"], result.test["test_acc"]


def _best(
    settings: list[float],
    val: np.ndarray,
    test: np.ndarray,
    base_val: np.ndarray,
    base_test: np.ndarray,
) -> dict:
    """The setting with the best mean validation accuracy and its paired gain over none."""
    i = int(val.mean(axis=1).argmax())
    gain = val[i] - base_val
    k = gain.size
    se = float(gain.std(ddof=1) / math.sqrt(k)) if k > 1 else 0.0
    return {
        "setting": settings[i],
        "val_acc": mean_std(val[i]),
        "test_acc": mean_std(test[i]),
        "gain": float(gain.mean()),
        "gain_se": se,
        "agrees": bool(gain.mean() > 2 * se and test[i].mean() > base_test.mean()),
    }


def run(out_dir: Path, *, quick: bool = False, seed: int = 0) -> Figure:
    """Sweep λ and p; draw validation accuracy against each with bands over seeds."""
    splits = data.load("mnist1d", seed=seed)
    epochs = 30 if quick else 40
    decays = [1e-2, 3e-2] if quick else [1e-3, 3e-3, 1e-2, 3e-2, 1e-1]
    dropouts = [0.1, 0.2] if quick else [0.1, 0.2, 0.3, 0.5, 0.7]
    runs = seeds(quick, seed=seed)

    def sweep(weight_decays: list[float], ps: list[float]) -> tuple[np.ndarray, np.ndarray]:
        scores = np.array(
            [
                [_train(splits, s, epochs, wd, p) for s in runs]
                for wd, p in zip(weight_decays, ps, strict=True)
            ]
        )
        return scores[..., 0], scores[..., 1]  # (settings, seeds) each

    base_val, base_test = (a[0] for a in sweep([0.0], [0.0]))
    decay_val, decay_test = sweep(decays, [0.0] * len(decays))
    drop_val, drop_test = sweep([0.0] * len(dropouts), dropouts)
    decay = _best(decays, decay_val, decay_test, base_val, base_test)
    drop = _best(dropouts, drop_val, drop_test, base_val, base_test)

    fig, axes = figure(1, 2, size=(11.0, 4.2))
    axes[0][1].sharey(axes[0][0])
    # p = 0 belongs on dropout's linear axis; λ = 0 has no place on a log axis: a dashed line
    for ax, xs, val, label in (
        (axes[0][0], decays, decay_val, "weight decay"),
        (axes[0][1], [0.0, *dropouts], np.vstack([base_val, drop_val]), "dropout"),
    ):
        band(ax, xs, val.T, label, marker="o")
        band(
            ax,
            [min(xs), max(xs)],
            [[v, v] for v in base_val],
            "no regularization",
            color="0.4",
            ls="--",
        )
        ax.set_ylabel(f"validation accuracy after {epochs} epochs")
        ax.legend(fontsize=8)
    axes[0][0].set_xscale("log")
    axes[0][0].set_xlabel("weight decay λ (dropout 0)")
    axes[0][1].set_xlabel("dropout probability p (weight decay 0)")
    axes[0][0].set_title(f"MNIST-1D, {N_TRAIN} training examples, MLP {HIDDEN}")
    axes[0][1].set_title(f"bands: ±1 std over {len(runs)} seed{'s' if len(runs) > 1 else ''}")
    image = save(fig, out_dir / f"{NAME}.png")

    base = mean_std(base_val)
    base_t = mean_std(base_test)

    def say(name: str, symbol: str, best: dict) -> str:
        return (
            f"{name} {symbol} = {best['setting']:g} gives {pm(best['val_acc'], len(runs))} "
            f"(gain {best['gain']:+.3f} ± {best['gain_se']:.3f} s.e.; "
            f"test {pm(best['test_acc'], len(runs))})"
        )

    too_much = (
        ""
        if quick
        else f"at the largest values λ = {decays[-1]:g} gives {decay_val[-1].mean():.3f} and "
        f"p = {dropouts[-1]:g} gives {drop_val[-1].mean():.3f}; "
    )
    measured = (
        f"Validation accuracy without regularization {pm(base, len(runs))} "
        f"(test {pm(base_t, len(runs))}); the best "
        f"{say('weight decay', 'λ', decay)}; the best {say('dropout', 'p', drop)}; "
        f"{too_much}{len(runs)} seed{'s' if len(runs) > 1 else ''}, {epochs} epochs."
    )
    failed = [
        name for name, best in (("weight decay", decay), ("dropout", drop)) if not best["agrees"]
    ]
    if failed:
        measured += (
            f" For {' and '.join(failed)} the gain is within twice its standard error or does "
            "not carry over to the test set: this measurement does not support the claim."
        )
    numbers = {
        "decays": decays,
        "dropouts": dropouts,
        "base_val_acc": base_val.tolist(),
        "base_test_acc": base_test.tolist(),
        "decay_val_acc": decay_val.tolist(),
        "dropout_val_acc": drop_val.tolist(),
        "best_decay": decay,
        "best_dropout": drop,
        "epochs": epochs,
        "n_train": N_TRAIN,
    }
    return Figure(NAME, CLAIM, measured, decay["agrees"] and drop["agrees"], [image], numbers)
