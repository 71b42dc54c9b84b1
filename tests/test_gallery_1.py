"""Gallery entries shuffling, step-size-rules, conditioning, ravine and momentum-nesterov.

Each test runs an entry's quick version and checks its numbers against an independent computation
(NumPy transcriptions of the algorithm boxes in tests/reference.py, closed forms, least squares)
and the claim's direction, so a regression in ravine shows up as a failing claim.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import reference
import torch

from ravine import data
from ravine.bench import problems
from ravine.bench.problems import QuadraticSpec
from ravine.gallery import (
    conditioning,
    entries,
    momentum_nesterov,
    ravine_trajectories,
    shuffling,
    step_size_rules,
)

MINE = ("shuffling", "step-size-rules", "conditioning", "ravine", "momentum-nesterov")


def reference_steps(optimizer, curvature, x0, tol, max_steps, **hp):
    """First k with f(x_k) <= tol f(x_0) for the NumPy algorithm box on f = ½ Σ c x²."""
    lr = hp.pop("lr")
    path = reference.run(optimizer, x0, lambda x: curvature * x, [lr] * max_steps, **hp)
    f0 = 0.5 * np.sum(curvature * x0**2)
    losses = np.array([0.5 * np.sum(curvature * x**2) for x in path])
    hits = np.nonzero(losses <= tol * f0)[0]
    return int(hits[0]) + 1 if hits.size else None


def test_entries_are_registered_in_the_lectures_order():
    found = entries()
    for name in MINE:
        assert name in found and found[name].CLAIM.endswith(".")
    order = [n for n in found if n in MINE]
    assert order == ["shuffling", "step-size-rules", "conditioning", "ravine", "momentum-nesterov"]


def test_conditioning_best_steps_match_the_algorithm_boxes():
    # the closed-form step sizes are the classical optimal ones: GD's contraction (κ-1)/(κ+1)
    mu, big_l = 1.0, 100.0
    lr = conditioning.best_step("sgd", mu, big_l)["lr"]
    assert max(abs(1 - lr * mu), abs(1 - lr * big_l)) == pytest.approx(99 / 101)
    problem = problems.build(QuadraticSpec(kind="quadratic", kappa=100.0, dim=conditioning.DIM))
    c, x0 = problem.curvature.numpy(), problem.start.numpy()
    for optimizer in conditioning.EXPECTED:
        hp = conditioning.best_step(optimizer, float(c.min()), float(c.max()))
        expected = reference_steps(optimizer, c, x0, conditioning.TOL, 2000, **hp)
        assert conditioning.steps_to_tolerance(100.0, optimizer) == expected


@pytest.mark.slow
def test_conditioning_quick_slopes(tmp_path):
    figure = conditioning.run(tmp_path, quick=True)
    slopes = figure.numbers["slopes"]
    # the claim's numbers: steps ∝ κ for GD, ∝ √κ with momentum
    assert slopes["sgd"] == pytest.approx(1.0, abs=0.1)
    assert slopes["momentum"] == pytest.approx(0.5, abs=0.1)
    assert slopes["nesterov"] == pytest.approx(0.5, abs=0.1)
    assert figure.agrees is True
    assert (tmp_path / "conditioning.png").stat().st_size > 0


@pytest.mark.slow
def test_ravine_quick_zigzag_and_rolling(tmp_path):
    figure = ravine_trajectories.run(tmp_path, quick=True)
    numbers = figure.numbers
    # SGD's best grid lr and its zig-zag from the closed form x_k = (1 - εc)^k x_0
    c = np.array([1.0, ravine_trajectories.KAPPA])
    x0 = np.array(ravine_trajectories.START)
    steps = ravine_trajectories.STEPS

    def final(lr):
        with np.errstate(over="ignore", invalid="ignore"):
            value = 0.5 * np.sum(c * ((1 - lr * c) ** steps * x0) ** 2)
        return value if np.isfinite(value) else math.inf

    best = min(ravine_trajectories.GRID, key=final)
    assert numbers["lr"]["sgd"] == best
    assert numbers["final_loss"]["sgd"] == pytest.approx(final(best), rel=1e-9)
    flips = 1.0 if 1 - best * c[1] < 0 else 0.0
    assert numbers["zigzag"]["sgd"] == flips
    # the claim: SGD zig-zags, momentum gets much further along the floor
    assert numbers["zigzag"]["sgd"] >= 0.5
    assert numbers["floor_left"]["momentum"] <= 0.1 * numbers["floor_left"]["sgd"]
    assert figure.agrees is True


@pytest.mark.slow
def test_momentum_nesterov_quick_accelerate(tmp_path):
    figure = momentum_nesterov.run(tmp_path, quick=True)
    steps = figure.numbers["quadratic_steps"]
    problem = problems.build(
        QuadraticSpec(kind="quadratic", kappa=momentum_nesterov.KAPPA, dim=momentum_nesterov.DIM)
    )
    c, x0 = problem.curvature.numpy(), problem.start.numpy()
    for optimizer, hp in momentum_nesterov.OPTIMIZERS.items():
        expected = reference_steps(
            optimizer,
            c,
            x0,
            momentum_nesterov.TOL,
            momentum_nesterov.QUAD_STEPS,
            lr=1 / c.max(),
            **hp,
        )
        assert steps[optimizer] == expected
    assert steps["momentum"] < steps["sgd"] and steps["nesterov"] <= steps["momentum"]
    final = figure.numbers["cnn_final_train_loss"]
    assert final["momentum"][0] < final["sgd"][0]
    assert final["nesterov"][0] < final["sgd"][0]


@pytest.mark.slow
def test_step_size_rules_quick_decays_go_below_the_floor(tmp_path):
    # the excess loss is measured against the true least-squares minimum: never negative
    n = 32
    x, y, info = data.quadratic_problem(
        n, step_size_rules.DIM, step_size_rules.KAPPA, noise=step_size_rules.NOISE, seed=0
    )
    w, *_ = np.linalg.lstsq(x, y, rcond=None)
    np.testing.assert_allclose(info["w_opt"], w, atol=1e-10)
    excess, lrs = step_size_rules.one_run("linear-decay", n, 0)
    assert min(excess) >= -1e-12
    # the lecture's rule with t = 100 N/m: the last of the t steps is k = t - 1
    t = 100 * math.ceil(n / step_size_rules.BATCH)
    alpha = step_size_rules.ALPHA
    assert lrs[-1] == pytest.approx((1 / t) * alpha + (1 - 1 / t) * 0.01 * alpha)
    figure = step_size_rules.run(tmp_path, quick=True)
    final = figure.numbers["final_excess"]
    assert final["inverse-time"][0] < final["constant"][0]
    assert final["linear-decay"][0] < final["constant"][0]
    assert figure.agrees is True


@pytest.mark.slow
def test_shuffling_quick_coverage_and_training(tmp_path):
    figure = shuffling.run(tmp_path, quick=True)
    numbers = figure.numbers
    n, m = 640, shuffling.BATCH
    assert numbers["coverage_one_epoch"]["epoch"] == 1.0
    expected = 1 - (1 - m / n) ** math.ceil(n / m)
    assert numbers["coverage_expected"] == pytest.approx(expected)
    assert numbers["coverage_one_epoch"]["random"] == pytest.approx(expected, abs=0.05)
    # both samplers train: the final training-set losses agree to within 10 %
    (a, _), (b, _) = numbers["final_train_loss"]["epoch"], numbers["final_train_loss"]["random"]
    assert math.isfinite(a) and math.isfinite(b)
    assert abs(a - b) <= 0.1 * max(a, b)


def test_coverage_counts_distinct_examples():
    # EpochBatches: exactly m new examples a step until the epoch ends
    counts = shuffling.coverage(data.EpochBatches(10, 4, seed=0), 2)
    assert counts[:3] == [4, 8, 10] and counts[3:] == [10, 10, 10]
    sampler = data.RandomBatches(50, 5, seed=3)
    seen = set()
    expected = []
    for idx in data.RandomBatches(50, 5, seed=3):
        seen.update(idx.tolist())
        expected.append(len(seen))
    assert shuffling.coverage(sampler, 1) == expected
    assert torch.is_tensor(next(iter(data.RandomBatches(50, 5, seed=3))))
