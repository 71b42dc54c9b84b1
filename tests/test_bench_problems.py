"""Benchmark problems: losses, iterates and wiring checked against independent computations."""

import math

import numpy as np
import pytest
import reference
import torch

from ravine.bench import problems
from ravine.bench.problems import DIVERGENCE_FACTOR


def quadratic_grad(curvature):
    return lambda x: curvature * x


def rosenbrock_grad(a, b):
    def grad(p):
        x, y = p
        return np.array([-2 * (a - x) - 4 * b * x * (y - x * x), 2 * b * (y - x * x)])

    return grad


def test_quadratic_loss_and_curvature():
    p = problems.build({"kind": "quadratic", "kappa": 1000, "dim": 4, "rescale": [1, 2, 3, 4]})
    lam = 1000.0 ** (np.arange(4) / 3)
    np.testing.assert_allclose(p.eigenvalues.numpy(), lam, rtol=1e-14)
    x = np.array([0.3, -1.2, 2.0, 0.7])
    expected = 0.5 * np.sum(lam * np.array([1, 2, 3, 4]) ** 2 * x**2)
    assert float(p.loss(torch.tensor(x))) == pytest.approx(expected, rel=1e-14)
    # default start: the same loss 1/2 in every eigendirection of the unscaled problem
    np.testing.assert_allclose(p.start.numpy(), -1 / np.sqrt(lam), rtol=1e-14)


def test_sgd_on_quadratic_matches_closed_form():
    p = problems.build({"kind": "quadratic", "kappa": 100, "epochs": 50})
    lr = 0.015
    result = p.run("sgd", lr)
    lam = np.array([1.0, 100.0])
    x0 = -1 / np.sqrt(lam)
    for record in result.history:
        k = record["epoch"]
        x_k = (1 - lr * lam) ** k * x0
        assert record["loss"] == pytest.approx(0.5 * np.sum(lam * x_k**2), rel=1e-12)
    np.testing.assert_allclose(result.trajectory[-1], (1 - lr * lam) ** 50 * x0, rtol=1e-12)
    assert result.final["loss"] == result.history[-1]["loss"]
    assert not result.diverged


def test_nesterov_trajectory_is_at_the_true_parameters():
    # ravine's Nesterov keeps θ + αv in the parameters; the recorded path must be θ itself.
    p = problems.build({"kind": "quadratic", "kappa": 50, "epochs": 40})
    result = p.run("nesterov", 0.02, {"momentum": 0.9})
    lam = p.curvature.numpy()
    expected = reference.nesterov(p.start.numpy(), quadratic_grad(lam), [0.02] * 40, alpha=0.9)
    np.testing.assert_allclose(result.trajectory[1:], expected, rtol=1e-12, atol=1e-15)
    losses = [r["loss"] for r in result.history]
    np.testing.assert_allclose(losses, [0.5 * np.sum(lam * x**2) for x in expected], rtol=1e-12)


def test_momentum_on_rosenbrock_matches_reference():
    p = problems.build({"kind": "rosenbrock", "epochs": 300, "a": 1.5, "b": 20})
    result = p.run("momentum", 1e-3, {"momentum": 0.8})
    expected = reference.momentum(np.array([-1.2, 1.0]), rosenbrock_grad(1.5, 20), [1e-3] * 300,
                                  alpha=0.8)
    np.testing.assert_allclose(result.trajectory[1:], expected, rtol=1e-11)
    x, y = expected[-1]
    assert result.final["loss"] == pytest.approx((1.5 - x) ** 2 + 20 * (y - x * x) ** 2, rel=1e-11)
    assert float(p.loss(torch.tensor([1.5, 2.25], dtype=torch.float64))) == 0.0


def test_divergence_stops_the_run():
    # lr above 2 / lambda_max: the steep coordinate is multiplied by |1 - 3| = 2 per step
    p = problems.build({"kind": "quadratic", "kappa": 100, "epochs": 200})
    result = p.run("sgd", 0.03)
    f0 = float(p.loss(p.start))
    losses = [r["loss"] for r in result.history]
    assert result.diverged and result.final["loss"] == math.inf
    assert losses[-1] > DIVERGENCE_FACTOR * f0
    assert all(v <= DIVERGENCE_FACTOR * f0 for v in losses[:-1])
    assert len(losses) < 200


def test_seeded_start_noise():
    spec = {"kind": "rosenbrock", "epochs": 2, "init_std": 0.1}
    p = problems.build(spec)
    first = p.run("sgd", 1e-4, seed=3).trajectory[0]
    noise = torch.randn(2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    np.testing.assert_allclose(first, (torch.tensor([-1.2, 1.0]) + 0.1 * noise).numpy())
    assert p.run("sgd", 1e-4, seed=3).trajectory == p.run("sgd", 1e-4, seed=3).trajectory
    assert p.run("sgd", 1e-4, seed=4).trajectory[0] != first


def test_callbacks_every_report_interval():
    p = problems.build({"kind": "quadratic", "epochs": 45})
    seen = []
    p.run("sgd", 0.01, callbacks=[lambda epoch, record: seen.append((epoch, record["epoch"]))])
    assert p.report_every == 2
    assert seen == [(k, k) for k in [*range(2, 45, 2), 45]]


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"kind": "quadratc"}, "did you mean 'quadratic'"),
        ({"kind": "quadratic", "kapa": 10}, "kapa: unknown key; did you mean 'kappa'"),
        ({"kind": "quadratic", "kappa": 0.5}, "greater than or equal to 1"),
        ({"kind": "quadratic", "dim": 3, "rescale": [1, 2]}, "rescale needs dim=3 entries"),
        ({"kind": "custom", "model": {"kind": "mlp"}}, "needs 'dataset'"),
        ({"kind": "mlp-digits", "dataset": "x.csv"}, "use kind: custom"),
    ],
)
def test_invalid_problem_specs(spec, message):
    with pytest.raises(ValueError, match=message):
        problems.build(spec)


def test_dataset_problem_passes_its_options_to_fit(monkeypatch):
    calls = []

    class Result:
        history = [{"epoch": 1, "val_acc": 0.5, "train_loss": 1.0, "time": 0.1}]
        test = {"test_loss": 1.5, "test_acc": 0.25}

    def fake_fit(model, train, val, **options):
        calls.append((model, train, val, options))
        for callback in options["callbacks"]:
            callback(1, dict(Result.history[0]))
        return Result

    monkeypatch.setattr("ravine.bench.problems.fit", fake_fit)
    p = problems.build({"kind": "mlp-digits", "epochs": 3, "batch_size": 32})
    result = p.run("momentum", 0.05, {"momentum": 0.8, "weight_decay": 1e-3}, seed=7)
    model, train, val, options = calls[0]
    assert options["optimizer"] == {"name": "momentum", "lr": 0.05, "momentum": 0.8}
    # the optimizer's weight decay replaces the problem's 1e-4 and goes through fit
    assert options["weight_decay"] == 1e-3
    assert (options["epochs"], options["batch_size"], options["seed"]) == (3, 32, 7)
    assert options["test"] is p.splits.test and train is p.splits.train and val is p.splits.val
    assert [m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)] == [0.2, 0.2]
    assert model[-1].out_features == 10 and model[1].layer.in_features == 64
    assert result.final == {"test_loss": 1.5, "test_acc": 0.25}
    assert result.history == Result.history
    assert (p.monitor, p.mode, p.final_metric) == ("val_acc", "max", "test_acc")


def test_same_seed_same_initial_model():
    p = problems.build({"kind": "logreg-digits"})
    with torch.random.fork_rng():
        torch.manual_seed(5)
        a = p.build_model()
        torch.manual_seed(5)
        b = p.build_model()
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters(), strict=True))


def test_custom_regression_problem(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 3))
    y = x @ np.array([1.0, -2.0, 0.5]) + 0.1
    lines = ["a,b,c,label"] + [f"{r[0]},{r[1]},{r[2]},{t}" for r, t in zip(x, y, strict=True)]
    (tmp_path / "reg.csv").write_text("\n".join(lines) + "\n")
    p = problems.build({"kind": "custom", "dataset": str(tmp_path / "reg.csv"),
                        "model": {"kind": "mlp", "hidden": [4]}, "epochs": 2, "batch_size": 16})
    assert (p.monitor, p.mode, p.final_metric) == ("val_loss", "min", "test_loss")
    result = p.run("adam", 0.01, seed=0)
    assert [r["epoch"] for r in result.history] == [1, 2]
    assert set(result.final) == {"test_loss"}


def test_a_dataset_problem_takes_any_training_option_of_the_one_schema():
    from ravine.train import FitOptions

    p = problems.build({"kind": "mlp-digits", "epochs": 2, "drop_last": True,
                        "schedule": "cosine", "accumulate": 2})
    assert p.options["drop_last"] is True and p.options["accumulate"] == 2
    assert p.options["schedule"].name == "cosine"
    settable = set(problems.DatasetSpec.model_fields)
    # every training option but those the benchmark decides per run
    assert set(FitOptions.model_fields) - settable == {"optimizer", "lr", "seed"}
    with pytest.raises(ValueError, match="batch_sise: unknown key; did you mean 'batch_size'"):
        problems.build({"kind": "mlp-digits", "batch_sise": 3})
