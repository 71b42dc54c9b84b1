"""A reduced diagnosis-accuracy suite: planted pathologies must come out as the top finding.

The full suite is ``benchmarks/diagnosis_accuracy.py`` (several seeds, two architectures,
MNIST-1D, probes of every fix); this runs its planting code on 256 examples, one seed,
the MLP, so that a regression in a rule or a measurement of ``diagnose`` fails here.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ravine.diagnostics import diagnose, find

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "diagnosis_accuracy.py"
_spec = importlib.util.spec_from_file_location("diagnosis_accuracy", _PATH)
bench = importlib.util.module_from_spec(_spec)
# dataclasses look their module up in sys.modules while the file executes
sys.modules.setdefault(_spec.name, bench)
_spec.loader.exec_module(bench)

PLANTS = {name: (code, plant) for name, code, plant in bench.CASES}


@functools.cache
def small_data(n: int = 256, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded MNIST-1D subset, as in the benchmark but smaller."""
    return bench.mnist1d_subset(n, seed)


def diagnosed(name: str, seed: int = 0):
    code, plant = PLANTS[name]
    x, y = small_data(seed=seed)
    torch.manual_seed(seed)
    s = plant("mlp", x, y, seed)
    d = diagnose(
        s.model,
        F.cross_entropy,
        (s.x, s.y),
        optimizer=s.optimizer,
        batch_size=s.batch_size,
        seed=seed,
        history=s.history,
    )
    return code, s, d


@pytest.mark.parametrize(
    "name",
    [
        "lr-too-high (sgd)",
        "lr-too-high (momentum)",
        "lr-too-high (adam)",
        "lr-too-low",
        "saddle",
        "dead-units",
        "clipping-always",
    ],
)
def test_planted_code_is_the_top_finding(name):
    code, _, d = diagnosed(name)
    assert d.codes[0] == code, d.codes


@pytest.mark.slow
@pytest.mark.parametrize("name", ["batch-too-small", "exploding-gradients"])
def test_planted_code_is_the_top_finding_slow_cases(name):
    code, _, d = diagnosed(name)
    assert d.codes[0] == code, d.codes


def test_plants_are_what_they_say():
    # Counted directly, not through the rules: half the hidden units are zero on every example,
    # the lr sits at 4x and 1e-3/2 of the measured bound, and clipping fires on every step.
    _, s, _ = diagnosed("dead-units")
    with torch.no_grad():
        h = s.x
        dead = total = 0
        for layer in bench.hidden_layers(s.model):
            h = torch.relu(layer(h))
            dead += int((h == 0).all(0).sum())
            total += h.shape[1]
    assert dead / total == pytest.approx(0.5)
    _, s, _ = diagnosed("lr-too-high (sgd)")
    assert s.optimizer.param_groups[0]["lr"] == pytest.approx(4 * s.planted["lr_bound"])
    _, s, d = diagnosed("lr-too-low")
    assert s.optimizer.param_groups[0]["lr"] / s.planted["lr_bound"] == pytest.approx(5e-4)
    _, s, _ = diagnosed("clipping-always")
    norms = s.history["grad_norm_history"]
    assert s.history["clip_fraction"] == 1.0 and min(norms) > s.optimizer.clip_norm


def test_following_the_lr_fix_beats_the_diverging_baseline():
    _, s, d = diagnosed("lr-too-high (sgd)")
    outcome = bench.run_case(
        "lr-too-high (sgd)",
        "lr-too-high",
        PLANTS["lr-too-high (sgd)"][1],
        "mlp",
        0,
        s.x,
        s.y,
        steps=20,
    )
    assert outcome.codes == d.codes and outcome.probe == "helped"
    base, fork = outcome.losses
    assert fork < base or not math.isfinite(base)


def test_report_counts_hits_confusions_and_misses():
    make = bench.Outcome
    outcomes = [
        make("a", "lr-too-high", "mlp", 0, ["lr-too-high"], 0.1, {"lr": 0.5}, "helped"),
        make("a", "lr-too-high", "mlp", 1, ["saddle", "lr-too-high"], 0.2, {}, "no fix"),
        make("b", "saddle", "mlp", 0, ["healthy"], 0.3, {}, "no fix"),
        make("c", "dead-units", "cnn", 0, ["dead-units"], 0.4, {"x": 1}, "not probe-able"),
    ]
    text = bench.report(outcomes, header="h")
    top1 = sum(o.codes[0] == o.planted for o in outcomes)
    top2 = sum(o.planted in o.codes[:2] for o in outcomes)
    assert f"| {top1}/4 ({100 * top1 / 4:.0f}%) |" in text
    assert f"| {top2}/4 ({100 * top2 / 4:.0f}%) |" in text
    assert "| 1/1 (100%) of the probed |" in text
    assert "| 1 / 2 of 4 |" in text
    assert "- a, mlp, seed 1: ranked saddle, lr-too-high" in text
    assert "- b, mlp, seed 0: ranked healthy" in text
    # confusion rows: lr-too-high planted -> once itself, once saddle
    row = next(line for line in text.splitlines() if line.startswith("| lr-too-high |"))
    header = next(line for line in text.splitlines() if line.startswith("| planted \\ top |"))
    columns = [c.strip() for c in header.split("|")[2:-1]]
    cells = [c.strip() for c in row.split("|")[2:-1]]
    assert dict(zip(columns, cells, strict=True)) == {
        "lr-too-high": "1",
        "saddle": "1",
        "dead-units": "·",
        "healthy": "·",
    }


def test_unresolved_mean_gradient_is_judged_by_the_lower_bound():
    # noise_interval returns B = inf with a finite bootstrap lower bound when the unbiased |G|²
    # is <= 0; the batch rule compares m with that bound (batch_factor 10) and never calls the
    # batch too large.
    low = 250.0
    numbers = {"batch_size": 1, "b_simple": math.inf, "b_simple_low": low, "n_examples": 256}
    (finding,) = find(numbers)
    assert finding.code == "batch-too-small" and finding.fix["batch_size"] == round(low)
    assert finding.score == pytest.approx(low / 10)
    assert find({**numbers, "batch_size": math.floor(low / 10) + 1})[0].code == "healthy"
    assert find({"batch_size": 1, "b_simple": math.inf}) == []  # no lower bound: skipped
