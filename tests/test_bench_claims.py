"""The lecture's claims on the ill-conditioned quadratic (examples/suites/quadratic-claims.yaml).

1. Momentum and Nesterov beat plain SGD at kappa = 100 (each at its best lr of the grid).
2. RMSProp and Adam are far less sensitive than SGD to an axis-aligned rescaling.
"""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from ravine.bench import compare, problems
from ravine.bench.config import load_suite

EXAMPLE = Path(__file__).parents[1] / "examples" / "suites" / "quadratic-claims.yaml"




@pytest.fixture(scope="module")
def suite_run(tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("claims")
    suite = load_suite(EXAMPLE)
    compare.run_suite(suite, out, quiet=True)
    summary = json.loads((out / "summary.json").read_text())
    return suite, out, summary["problems"]


def sgd_closed_form(curvature, x0, lr, steps):
    """f after `steps` steps of x <- (1 - lr c) x, coordinate by coordinate."""
    with np.errstate(over="ignore"):
        return 0.5 * np.sum(curvature * ((1 - lr * curvature) ** steps * x0) ** 2)


@pytest.mark.slow
def test_runner_reproduces_sgd_closed_form(suite_run):
    suite, out, _ = suite_run
    for spec in suite.problems:
        p = problems.build(spec)
        c, x0 = p.curvature.numpy(), p.start.numpy()
        trials = json.loads((out / "tuning" / spec.label / "sgd.json").read_text())["trials"]
        assert len(trials) == len(suite.tuning.grid)
        for t in trials:
            exact = sgd_closed_form(c, x0, t["params"]["lr"], p.epochs)
            if t["value"] == "inf":  # diverged: the rule is loss > 1e8 x the start's
                assert exact > problems.DIVERGENCE_FACTOR * 0.5 * np.sum(c * x0**2)
            else:
                assert t["value"] == pytest.approx(exact, rel=1e-9)


@pytest.mark.slow
def test_momentum_and_nesterov_beat_sgd_at_kappa_100(suite_run):
    suite, _, results = suite_run
    p = problems.build(suite.problems[0])
    c, x0 = p.curvature.numpy(), p.start.numpy()
    assert float(c.max() / c.min()) == pytest.approx(100)
    # SGD's best over every stable lr, not only the grid: 2 / lambda_max is the stability limit
    lrs = np.geomspace(1e-5, 2 / c.max(), 20000)
    sgd_best = min(sgd_closed_form(c, x0, lr, p.epochs) for lr in lrs)
    assert results["quadratic"]["sgd"]["final_mean"] >= sgd_best
    for name in ("momentum", "nesterov"):
        assert results["quadratic"][name]["final_mean"] < 1e-3 * sgd_best


@pytest.mark.slow
def test_adaptive_methods_barely_notice_an_axis_rescaling(suite_run):
    suite, _, results = suite_run
    base, rescaled = (problems.build(s) for s in suite.problems)
    assert np.array_equal(base.start, rescaled.start)
    # Rescaling multiplies each curvature by s_i^2 <= 1, so at any point the rescaled loss is
    # smaller, by at most the factor max_i 1 / s_i^2: for a method whose iterates do not change,
    # the best final loss changes by between 0 and `bound` decades.
    bound = math.log10(float((base.curvature / rescaled.curvature).max()))
    assert bound == pytest.approx(1.0)

    def change(name):
        a = results["quadratic"][name]["final_mean"]
        b = results["quadratic-rescaled"][name]["final_mean"]
        return math.log10(a / b)

    for name in ("rmsprop", "adam"):
        assert -0.01 <= change(name) <= bound + 0.01
        # the reason: dividing each gradient coordinate by its running magnitude cancels the
        # rescaling, so without the eps added against division by zero the iterates coincide
        lr = results["quadratic"][name]["lr"]
        a = np.array(base.run(name, lr, {"eps": 1e-12}).trajectory)
        b = np.array(rescaled.run(name, lr, {"eps": 1e-12}).trajectory)
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-12)
    # SGD's best final loss moves by more than ten times as many decades
    assert change("sgd") > 10 * bound
