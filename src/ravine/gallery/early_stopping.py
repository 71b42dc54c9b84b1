"""early-stopping: validation error turns up while training error keeps falling; stop at its best.

The lecture ("Regularization"): early stopping uses a validation set to halt learning when
overfitting is detected. Measured on an MLP (40 → 256 → 256 → 10) trained with momentum on the
first ``N_TRAIN`` MNIST-1D training examples (the full validation and test splits), so that it
overfits within a few epochs. Two runs per seed, same seed and so the same trajectory:

* the *full* run trains all ``epochs`` and tracks the best epoch of the validation loss
  (``early_stopping=dict(patience=None, restore_best=False)``) — the curves and the *last*
  weights;
* the *stopped* run uses ``early_stopping=dict(monitor="val_loss", patience=PATIENCE,
  restore_best=True)`` — where it stops and the *restored* (best-epoch) weights.

Agreement criterion (every part must hold):

1. the validation loss turns up: for every seed the last epoch's validation loss is at least
   ``TURN_UP`` times its minimum;
2. the training loss keeps falling: for every seed the last epoch's training loss is below the
   training loss at the best epoch;
3. stopping pays on held-out data: the restored weights' mean test accuracy (over seeds) is at
   least the last weights' mean test accuracy.

The entry also checks ravine itself: the stopped run's history must equal the first epochs of
the full run (same seed), and the restored model's validation loss must equal the best epoch's
(``restored_val_loss_error``, the largest difference over seeds).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ravine import data, fit, models
from ravine.gallery import Figure
from ravine.gallery._common import band, figure, mean_std, pm, save, seeds

NAME = "early-stopping"
ORDER = 100
CLAIM = (
    "Validation error turns up while training error keeps falling, so training should stop at "
    "the epoch with the best validation error and keep its weights."
)
N_TRAIN = 500
HIDDEN = [256, 256]
LR = 0.05
BATCH_SIZE = 50
PATIENCE = 10
TURN_UP = 1.1


def _train(splits: data.Splits, seed: int, epochs: int, early_stopping: dict) -> object:
    train = (splits.train.x[:N_TRAIN], splits.train.y[:N_TRAIN])
    torch.manual_seed(seed)
    net = models.mlp(splits.num_features, HIDDEN, splits.num_classes)
    return fit(
        net,
        train,
        splits.val,
        test=splits.test,
        optimizer="momentum",
        lr=LR,
        epochs=epochs,
        batch_size=BATCH_SIZE,
        early_stopping=early_stopping,
        seed=seed,
        quiet=True,
    )


def _val_loss(model: nn.Module, splits: data.Splits) -> float:
    model.eval()
    with torch.no_grad():
        return float(nn.functional.cross_entropy(model(splits.val.x), splits.val.y))


def run(out_dir: Path, *, quick: bool = False, seed: int = 0) -> Figure:
    """Train past the best epoch and with early stopping; draw the curves and the test scores."""
    splits = data.load("mnist1d", seed=seed)
    epochs = 40 if quick else 80
    per_seed = []
    for s in seeds(quick, seed=seed):
        full = _train(
            splits, s, epochs, dict(monitor="val_loss", patience=None, restore_best=False)
        )
        stopped = _train(
            splits, s, epochs, dict(monitor="val_loss", patience=PATIENCE, restore_best=True)
        )
        history = full.history
        best = stopped.best_epoch
        keys = ("train_loss", "val_loss", "val_acc")
        prefix = all(
            a[k] == b[k] for a, b in zip(stopped.history, history, strict=False) for k in keys
        )
        per_seed.append(
            {
                "seed": s,
                "train_loss": [h["train_loss"] for h in history],
                "val_loss": [h["val_loss"] for h in history],
                "val_acc": [h["val_acc"] for h in history],
                "best_epoch": best,
                "stop_epoch": len(stopped.history),
                "full_best_epoch": full.best_epoch,
                "min_val_loss": min(h["val_loss"] for h in history),
                "last_val_loss": history[-1]["val_loss"],
                "train_loss_at_best": history[best - 1]["train_loss"],
                "last_train_loss": history[-1]["train_loss"],
                "restored_test_acc": stopped.test["test_acc"],
                "restored_test_loss": stopped.test["test_loss"],
                "last_test_acc": full.test["test_acc"],
                "last_test_loss": full.test["test_loss"],
                "restored_val_loss": _val_loss(stopped.model, splits),
                "best_val_loss": history[best - 1]["val_loss"],
                "prefix_identical": prefix,
            }
        )
    return _figure(out_dir, per_seed, epochs)


def _figure(out_dir: Path, per_seed: list[dict], epochs: int) -> Figure:
    from matplotlib.ticker import MaxNLocator

    x = list(range(1, epochs + 1))
    fig, axes = figure(1, 2, size=(11.0, 4.2))
    left, right = axes[0]
    band(left, x, [r["train_loss"] for r in per_seed], "training loss")
    band(left, x, [r["val_loss"] for r in per_seed], "validation loss")
    band(right, x, [r["val_acc"] for r in per_seed], "validation accuracy", color="C1")
    for i, r in enumerate(per_seed):
        for ax in (left, right):
            ax.axvline(
                r["best_epoch"],
                color="k",
                ls=":",
                lw=1,
                label="best epoch (restored)" if i == 0 else None,
            )
            ax.axvline(
                r["stop_epoch"],
                color="0.5",
                ls="--",
                lw=1,
                label=f"stopped (patience {PATIENCE})" if i == 0 else None,
            )
    restored = mean_std([r["restored_test_acc"] for r in per_seed])
    last = mean_std([r["last_test_acc"] for r in per_seed])
    best_x = sum(r["best_epoch"] for r in per_seed) / len(per_seed)
    right.errorbar(
        [best_x],
        [restored[0]],
        yerr=[restored[1]],
        fmt="*",
        ms=12,
        color="C3",
        capsize=3,
        label=f"test acc, restored: {restored[0]:.3f}",
    )
    right.errorbar(
        [epochs],
        [last[0]],
        yerr=[last[1]],
        fmt="s",
        ms=7,
        color="C4",
        capsize=3,
        label=f"test acc, last: {last[0]:.3f}",
    )
    left.set_yscale("log")
    left.set_ylabel("cross-entropy loss")
    right.set_ylabel("accuracy")
    n = len(per_seed)
    left.set_title(
        f"MNIST-1D, {N_TRAIN} training examples, MLP {HIDDEN}, {n} seed{'s' if n > 1 else ''}"
    )
    right.set_title("validation accuracy and the test accuracy of each choice")
    for ax in (left, right):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=8)
    image = save(fig, out_dir / f"{NAME}.png")

    turns_up = all(r["last_val_loss"] >= TURN_UP * r["min_val_loss"] for r in per_seed)
    keeps_falling = all(r["last_train_loss"] < r["train_loss_at_best"] for r in per_seed)
    pays = restored[0] >= last[0]
    agrees = turns_up and keeps_falling and pays

    def spread(key: str, fmt: str = ".3f") -> str:
        return pm(mean_std([r[key] for r in per_seed]), len(per_seed), fmt)

    measured = (
        f"Over {n} seed{'s' if n > 1 else ''}, the validation loss is lowest at epoch "
        f"{spread('best_epoch', '.1f')} ({spread('min_val_loss')}) and rises to "
        f"{spread('last_val_loss')} by epoch {epochs} while the training loss falls from "
        f"{spread('train_loss_at_best')} to {spread('last_train_loss', '.4f')}; early stopping "
        f"(patience {PATIENCE}) halts at epoch {spread('stop_epoch', '.1f')}. Test accuracy of "
        f"the restored weights {spread('restored_test_acc')} vs the last weights "
        f"{spread('last_test_acc')} (test loss {spread('restored_test_loss')} vs "
        f"{spread('last_test_loss')})."
    )
    if turns_up and keeps_falling and not pays:
        measured += (
            " The loss curves agree with the lecture, but the test accuracy does not: accuracy "
            "keeps improving after the validation loss turns up, so the weights restored by "
            "stopping on the validation loss classify worse than the last ones."
        )
    numbers = {
        "per_seed": [{k: v for k, v in r.items() if not isinstance(v, list)} for r in per_seed],
        "restored_test_acc": restored[0],
        "last_test_acc": last[0],
        "turns_up": turns_up,
        "keeps_falling": keeps_falling,
        "stopping_pays": pays,
        "prefix_identical": all(r["prefix_identical"] for r in per_seed),
        "restored_val_loss_error": max(
            abs(r["restored_val_loss"] - r["best_val_loss"]) for r in per_seed
        ),
        "epochs": epochs,
        "patience": PATIENCE,
        "n_train": N_TRAIN,
    }
    return Figure(NAME, CLAIM, measured, agrees, [image], numbers)
