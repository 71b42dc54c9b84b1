"""Advice from numbers, point classification on constructed losses, measure() and report()."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from ravine.diagnostics import (
    ClassifyThresholds,
    advice,
    advice_markdown,
    classify,
    classify_numbers,
    gradient_statistics,
    hessian_extremes,
    hessian_trace,
    measure,
    plot_history,
    report,
)
from ravine.diagnostics.findings import find


def joined(sentences: list[str]) -> str:
    return " ".join(sentences)


# --------------------------------------------------------------------------- advice


@pytest.mark.parametrize("lmax", [0.5, 40.0])
def test_step_size_bound(lmax):
    diverging = advice({"lr": 3 / lmax, "lambda_max": lmax})
    assert len(diverging) == 1 and "diverges" in diverging[0]
    assert f"{2 / lmax:.3g}" in diverging[0]
    assert "diverges" not in joined(advice({"lr": 0.5 / lmax, "lambda_max": lmax}))
    assert "Raise it" in joined(advice({"lr": 0.001 / lmax, "lambda_max": lmax}))
    # Heavy-ball momentum α = 0.9 moves the bound to 2(1 + α)/λmax = 3.8/λmax.
    with_momentum = advice({"lr": 3 / lmax, "lambda_max": lmax, "momentum": 0.9})
    assert "diverges" not in joined(with_momentum)
    momentum = joined(advice({"lr": 4 / lmax, "lambda_max": lmax, "momentum": 0.9}))
    assert "diverges" in momentum and "2(1+α)/λmax" in momentum
    # The value follows its formula; α stands in brackets (no "α = 0.9 = 2.18").
    assert f"2(1+α)/λmax = {3.8 / lmax:.3g} (heavy-ball momentum, α = 0.9)" in momentum
    assert advice({"lr": 3 / lmax, "lambda_max": lmax, "adaptive": True}) == []


def test_adam_lr_is_not_judged_by_the_sgd_bound():
    # The reported bug: advice(measure(..., lr=adam_lr)) said "try a larger learning rate".
    assert advice({"lr": 1e-3, "lambda_max": 50.0, "optimizer": "adam"}) == []


def test_no_contradictory_sentences():
    # Far below the bound (raise lr) at a minimum-like point used to add "needs a smaller lr".
    numbers = {"lr": 1e-4, "lambda_max": 2.0, "lambda_min": 0.5, "label": "minimum-like"}
    text = joined(advice(numbers))
    assert "Raise it" in text and "smaller learning rate" not in text


def test_unknown_keys_raise():
    with pytest.raises(ValueError, match="unknown diagnostics key 'batchsize'; did you mean"):
        advice({"batchsize": 8, "b_simple": 1000.0})


def test_batch_size_against_noise_scale():
    assert "far below" in joined(advice({"batch_size": 8, "b_simple": 1000.0}))
    assert "far above" in joined(advice({"batch_size": 4096, "b_simple": 10.0}))
    middle = joined(advice({"batch_size": 100, "b_simple": 200.0}))
    assert "far" not in middle and "Nothing to change" in middle
    assert advice({"batch_size": 100, "b_simple": math.inf}) == []


def test_clipping_fraction():
    assert "Raise clip_norm" in joined(advice({"clip_fraction": 0.7}))
    assert "70%" in joined(advice({"clip_fraction": 0.7}))
    assert "clipping" not in joined(advice({"clip_fraction": 0.2}))
    with pytest.raises(ValueError, match="clip_fraction must be in \\[0, 1\\], got 1.5"):
        advice({"clip_fraction": 1.5})


def test_conditioning_and_negative_curvature():
    ill = joined(advice({"lambda_max": 10.0, "lambda_min": 1e-3, "condition_number": 1e4}))
    assert "ill-conditioned" in ill and "momentum" in ill and "O(√κ)" in ill
    well = advice({"lambda_max": 3.0, "lambda_min": 1.0, "condition_number": 3.0})
    assert "ill-conditioned" not in joined(well)
    saddle = joined(
        advice({"lambda_max": 3.0, "lambda_min": -0.6, "condition_number": 5.0, "label": "saddle"})
    )
    assert "negative curvature" in saddle and "conditioned" not in saddle and "saddle" in saddle
    assert advice({}) == []
    markdown = advice_markdown({"lr": 3.0, "lambda_max": 1.0}, title="Advice")
    assert markdown.startswith("## Advice\n\n- ") and markdown.count("\n- ") == 1
    assert find({"lr": 3.0, "lambda_max": 1.0})[0].message in markdown


# --------------------------------------------------------------------------- classify


class Quadratic(nn.Module):
    """Per-example loss 1 + s·(a_n d0² + c_n d1² + e_n d0) with d = w - 1, at w = 1.

    Gradient g_n = s·(e_n, 0), so G = 0 when the e_n are centered and tr Σ = s² mean(e²);
    Hessian diag(2 s mean(a), 2 s mean(c)).
    """

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = scale
        self.w = nn.Parameter(torch.ones(2, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = self.w - 1
        return 1 + self.scale * (x[:, 0] * d[0] ** 2 + x[:, 1] * d[1] ** 2 + x[:, 2] * d[0])


def mean_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return out.mean()


def quadratic_data(c_sign: float) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    a = 1 + torch.rand(64, generator=g, dtype=torch.float64)
    c = c_sign * (0.5 + torch.rand(64, generator=g, dtype=torch.float64))
    e = torch.randn(64, generator=g, dtype=torch.float64)
    return torch.stack([a, c, e - e.mean()], dim=1), torch.zeros(64)


@pytest.mark.parametrize(("c_sign", "label"), [(-1.0, "saddle"), (1.0, "minimum-like")])
def test_classify_stationary_points(c_sign, label):
    x, y = quadratic_data(c_sign)
    result = classify(Quadratic(1.0), mean_loss, (x, y), batch_size=16, tol=1e-10)
    assert result.label == label
    curvatures = sorted([2 * float(x[:, 0].mean()), 2 * float(x[:, 1].mean())])
    assert result.numbers["lambda_min"] == pytest.approx(curvatures[0], rel=1e-10)
    assert result.numbers["lambda_max"] == pytest.approx(curvatures[1], rel=1e-10)
    assert result.numbers["trace_sigma"] == pytest.approx(float((x[:, 2] ** 2).mean()), rel=1e-10)
    assert result.numbers["grad_sq_norm"] <= 1e-28
    assert result.numbers["param_norm"] == pytest.approx(math.sqrt(2))
    assert result.thresholds == {
        "flat": 1e-3,
        "negative": 0.1,
        "gradient": 1e-3,
        "ill_conditioned": 1e3,
        "param_scale": 1.0,
    }


def test_classify_flat_region():
    x, y = quadratic_data(-1.0)
    result = classify(Quadratic(1e-6), mean_loss, (x, y), batch_size=16, tol=1e-10)
    assert result.label == "flat"
    worst = max(result.numbers[k] for k in ("noise_sensitivity", "curvature_sensitivity"))
    assert worst <= 1e-3
    # The same numbers with a stricter flat threshold are a saddle again.
    assert classify_numbers(result.numbers, ClassifyThresholds(flat=1e-7)).label == "saddle"


@pytest.mark.parametrize(
    ("column_scale", "label"), [(100.0, "ill-conditioned"), (1.0, "descending")]
)
def test_classify_away_from_stationary_points(column_scale, label):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(128, 2, generator=g, dtype=torch.float64) * torch.tensor([1.0, column_scale])
    y = x @ torch.tensor([3.0, -2.0 / column_scale], dtype=torch.float64)
    model = nn.Linear(2, 1, bias=False).double()
    with torch.no_grad():
        model.weight.fill_(0.5)

    def mse(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return ((out[:, 0] - target) ** 2).mean()

    result = classify(model, mse, (x, y), batch_size=128, tol=1e-10)
    eigenvalues = torch.linalg.eigvalsh(2 * x.t() @ x / 128)
    assert result.label == label
    assert result.numbers["condition_number"] == pytest.approx(
        float(eigenvalues[1] / eigenvalues[0]), rel=1e-8
    )


def test_classify_numbers_needs_its_inputs():
    with pytest.raises(ValueError, match="numbers is missing trace_sigma, param_norm"):
        classify_numbers(
            {
                "loss": 1.0,
                "grad_sq_norm": 1.0,
                "lambda_max": 1.0,
                "lambda_min": 0.1,
                "batch_size": 8,
            }
        )
    with pytest.raises(ValueError, match="negative must be a finite number > 0, got -1"):
        ClassifyThresholds(negative=-1)


# --------------------------------------------------------------------------- measure, report


def mlp_and_data(n: int = 200) -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3)).double()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 6, generator=g, dtype=torch.float64)
    return model, (x, torch.randint(0, 3, (n,), generator=g))


LOSS = nn.CrossEntropyLoss()


def test_measure_reports_the_same_numbers_as_the_functions():
    model, batch = mlp_and_data()
    out = measure(
        model,
        LOSS,
        batch,
        ["loss", "grad_norm", "lambda_max", "lambda_min", "trace", "noise"],
        lr=0.1,
        batch_size=32,
        backend="double-backward",
    )
    ext = hessian_extremes(model, LOSS, batch, max_hvps=100, backend="double-backward")
    tr = hessian_trace(model, LOSS, batch, n_hvps=30, backend="double-backward")
    stats = gradient_statistics(model, LOSS, batch)
    loss = LOSS(model(batch[0]), batch[1])
    grad = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, model.parameters())])
    assert out["loss"] == pytest.approx(float(loss.detach()), rel=1e-12)
    assert out["grad_norm"] == pytest.approx(float(grad.norm()), rel=1e-10)
    assert (out["lambda_max"], out["lambda_min"]) == (ext.lambda_max, ext.lambda_min)
    assert out["condition_number"] == ext.condition_number
    assert out["negative_curvature"] == ext.negative_curvature
    assert out["lanczos_converged"] == ext.converged
    assert out["lr_bound"] == pytest.approx(2 / ext.lambda_max)
    assert out["lr_times_lambda_max"] == pytest.approx(0.1 * ext.lambda_max)
    assert (out["trace"], out["trace_stderr"]) == (tr.estimate, tr.stderr)
    assert out["b_simple"] == pytest.approx(stats.b_simple, rel=1e-12)
    assert out["noise_std"] == pytest.approx(math.sqrt(stats.trace_sigma / 32))
    assert out["hvps"] == ext.hvps + tr.hvps
    assert json.loads(json.dumps(out)) == out
    only_max = measure(model, LOSS, batch, "lambda_max", backend="double-backward")
    assert set(only_max) == {
        "lambda_max",
        "lambda_max_residual",
        "lr_bound",
        "lanczos_converged",
        "hvps",
        "seconds",
    }
    with pytest.raises(ValueError, match="what entries must be among .*did you mean 'lambda_max'"):
        measure(model, LOSS, batch, ["lambda_mx"])


def test_report_writes_json_plots_and_advice(tmp_path):
    model, batch = mlp_and_data()
    result = report(
        model,
        LOSS,
        batch,
        tmp_path,
        lr=0.5,
        batch_size=16,
        clip_fraction=0.6,
        n_batches=20,
        max_hvps=60,
        trace_hvps=30,
        density_probes=2,
        density_steps=16,
    )
    expected = {"diagnostics.json", "diagnostics.md", "gradient_noise.png", "hessian_spectrum.png"}
    assert {p.name for p in result.files} == expected and all(p.exists() for p in result.files)
    saved = json.loads((tmp_path / "diagnostics.json").read_text())
    ext = hessian_extremes(model, LOSS, batch, max_hvps=60)
    assert saved["numbers"]["lambda_max"] == pytest.approx(ext.lambda_max, rel=1e-10)
    assert saved["numbers"]["label"] == result.classification.label
    assert saved["advice"] == advice(result.numbers) == result.advice
    assert "Gradient clipping fired on 60%" in result.markdown
    assert (tmp_path / "diagnostics.md").read_text() == result.markdown


def test_plot_history(tmp_path):
    rows = [
        {"step": s, "lambda_max": 2.0 + s / 10, "lr": 0.5, "b_simple": 30.0 + s, "grad_norm": 1.0}
        for s in range(0, 100, 10)
    ]
    path = plot_history(rows, tmp_path / "history.png")
    assert path.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="rows must contain at least one of"):
        plot_history([{"step": 0, "loss": 1.0}], tmp_path / "none.png")
