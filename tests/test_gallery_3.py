"""Gallery entries early-stopping and regularization: quick runs and the claims' directions."""

from __future__ import annotations

import numpy as np
import pytest

from ravine.gallery import early_stopping, entries, regularization


def test_the_entries_are_found_in_the_lectures_order():
    found = list(entries())
    assert found.index("early-stopping") + 1 == found.index("regularization")
    assert early_stopping.ORDER < regularization.ORDER


@pytest.mark.slow
def test_early_stopping_quick_validation_loss_turns_up_and_the_best_epoch_is_restored(tmp_path):
    figure = early_stopping.run(tmp_path, quick=True, seed=0)
    numbers = figure.numbers
    for run in numbers["per_seed"]:
        # the lecture's curves: validation loss turns up, training loss keeps falling
        assert run["last_val_loss"] >= early_stopping.TURN_UP * run["min_val_loss"]
        assert run["last_train_loss"] < 0.1 * run["train_loss_at_best"]
        assert run["best_epoch"] < numbers["epochs"] - early_stopping.PATIENCE
        # ravine's early stopping: patience epochs without improvement, then stop
        assert run["stop_epoch"] == run["best_epoch"] + early_stopping.PATIENCE
        assert run["best_epoch"] == run["full_best_epoch"]
        # the restored weights generalize better in the loss they were chosen by
        assert run["restored_test_loss"] < run["last_test_loss"]
    # same seed, same trajectory; the restored model is the best epoch's
    assert numbers["prefix_identical"]
    assert numbers["restored_val_loss_error"] < 1e-5
    # the verdict is the documented criterion applied to the numbers
    assert figure.agrees == (
        numbers["turns_up"]
        and numbers["keeps_falling"]
        and numbers["restored_test_acc"] >= numbers["last_test_acc"]
    )
    assert figure.files[0].stat().st_size > 0 and figure.measured.endswith(".")


@pytest.mark.slow
def test_regularization_quick_weight_decay_and_dropout_raise_validation_accuracy(tmp_path):
    figure = regularization.run(tmp_path, quick=True, seed=0)
    numbers = figure.numbers
    base_val = np.asarray(numbers["base_val_acc"])
    base_test = np.mean(numbers["base_test_acc"])
    for key, settings, values in (
        ("best_decay", numbers["decays"], numbers["decay_val_acc"]),
        ("best_dropout", numbers["dropouts"], numbers["dropout_val_acc"]),
    ):
        best = numbers[key]
        values = np.asarray(values)
        i = int(values.mean(axis=1).argmax())
        assert best["setting"] == settings[i]
        assert best["gain"] == pytest.approx(float((values[i] - base_val).mean()))
        # the claim's direction, on the validation set and on the held-out test set
        assert best["gain"] > 0
        assert best["test_acc"][0] > base_test
    assert figure.agrees is True
    assert figure.files[0].stat().st_size > 0
