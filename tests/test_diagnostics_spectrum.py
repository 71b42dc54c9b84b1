"""Lanczos extremes, trace estimators and SLQ against exact Hessians and known spectra."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call

from ravine.diagnostics import (
    hessian_extremes,
    hessian_trace,
    operator_density,
    operator_extremes,
    operator_trace,
    spectral_density,
)


def mlp(activation: type[nn.Module] | None, seed: int = 0) -> nn.Module:
    """8 -> 20 -> 4 (264 parameters); without activation, multinomial logistic regression."""
    torch.manual_seed(seed)
    if activation is None:
        return nn.Linear(8, 4).double()
    return nn.Sequential(nn.Linear(8, 20), activation(), nn.Linear(20, 4)).double()


def data(n: int = 64, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 8, generator=g, dtype=torch.float64), torch.randint(
        0, 4, (n,), generator=g
    )


LOSS = nn.CrossEntropyLoss()


def exact_hessian(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    named = list(model.named_parameters())
    flat = torch.cat([p.detach().reshape(-1) for _, p in named])

    def loss_of(theta: torch.Tensor) -> torch.Tensor:
        pieces = torch.split(theta, [p.numel() for _, p in named])
        params = {n: t.view(p.shape) for (n, p), t in zip(named, pieces, strict=True)}
        return LOSS(functional_call(model, params, (x,)), y)

    return torch.autograd.functional.hessian(loss_of, flat)


def symmetric(eigenvalues: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A dense symmetric matrix with the given eigenvalues, and its eigenvectors (columns)."""
    d = eigenvalues.numel()
    q, _ = torch.linalg.qr(
        torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    )
    return q @ torch.diag(eigenvalues) @ q.t(), q


# --------------------------------------------------------------------------- extremes


@pytest.mark.parametrize("activation", [nn.Tanh, nn.ReLU])
def test_extremes_match_exact_spectrum(activation):
    model, (x, y) = mlp(activation), data()
    exact = torch.linalg.eigvalsh(exact_hessian(model, x, y))
    lmax, lmin = float(exact[-1]), float(exact[0])
    # The point has clear negative curvature (a random init), so detection is meaningful.
    assert lmin < -1e-2 * lmax
    result = hessian_extremes(model, LOSS, (x, y), k=3, tol=1e-6, seed=0)
    assert result.lambda_max == pytest.approx(lmax, rel=1e-4)
    assert result.lambda_min == pytest.approx(lmin, rel=1e-4)
    np.testing.assert_allclose(result.top, exact[-3:].flip(0).numpy(), rtol=1e-4)
    np.testing.assert_allclose(result.bottom, exact[:3].numpy(), rtol=1e-4)
    assert result.converged and result.negative_curvature
    assert result.condition_number == pytest.approx(abs(lmax / lmin), rel=2e-4)
    assert result.hvps < exact.numel()


@pytest.mark.parametrize("activation", [nn.Tanh, nn.ReLU])
def test_residuals_bound_the_error_at_default_tolerance(activation):
    """A Ritz value lies within its residual norm of an eigenvalue; Cauchy interlacing puts
    the extreme Ritz values inside [lambda_min, lambda_max]."""
    model, (x, y) = mlp(activation, seed=2), data()
    exact = torch.linalg.eigvalsh(exact_hessian(model, x, y)).numpy()
    result = hessian_extremes(model, LOSS, (x, y))
    assert result.converged
    assert result.residual_max <= 1e-3 * abs(result.lambda_max)
    assert result.residual_min <= 1e-3 * abs(result.lambda_min)
    assert abs(result.lambda_max - exact[-1]) <= result.residual_max + 1e-12
    assert abs(result.lambda_min - exact[0]) <= result.residual_min + 1e-12
    assert exact[0] - 1e-12 <= result.lambda_min and result.lambda_max <= exact[-1] + 1e-12


def test_no_negative_curvature_for_a_convex_loss():
    """Multinomial logistic regression is convex: λmin = 0 (shifting all logits), not < 0."""
    model, (x, y) = mlp(None), data()
    exact = torch.linalg.eigvalsh(exact_hessian(model, x, y))
    assert float(exact[0]) > -1e-12
    result = hessian_extremes(model, LOSS, (x, y), tol=1e-8)
    assert not result.negative_curvature
    assert abs(result.lambda_min) <= result.negative_threshold
    assert result.lambda_max == pytest.approx(float(exact[-1]), rel=1e-8)


def test_eigenvectors_are_the_exact_ones():
    model, (x, y) = mlp(nn.Tanh, seed=3), data()
    h = exact_hessian(model, x, y)
    values, vectors = torch.linalg.eigh(h)
    result = hessian_extremes(model, LOSS, (x, y), tol=1e-8, return_eigenvectors=True)
    for ritz, exact_vector in (
        (result.eigenvectors_max[0], vectors[:, -1]),
        (result.eigenvectors_min[0], vectors[:, 0]),
    ):
        assert float(torch.linalg.vector_norm(ritz)) == pytest.approx(1.0, abs=1e-10)
        assert abs(float(ritz @ exact_vector)) == pytest.approx(1.0, abs=1e-6)
    residual = h @ result.eigenvectors_max[0] - result.lambda_max * result.eigenvectors_max[0]
    assert float(torch.linalg.vector_norm(residual)) <= 1e-8 * result.lambda_max + 1e-12


def test_deterministic_given_seed_and_max_end_stops_no_later():
    model, batch = mlp(nn.Tanh, seed=4), data()
    a = hessian_extremes(model, LOSS, batch, seed=5, backend="double-backward")
    b = hessian_extremes(model, LOSS, batch, seed=5, backend="double-backward")
    assert (a.lambda_max, a.lambda_min, a.hvps) == (b.lambda_max, b.lambda_min, b.hvps)
    # Same start vector, so the same Krylov sequence; "max" only drops a stopping condition.
    top = hessian_extremes(model, LOSS, batch, seed=5, which="max", backend="double-backward")
    assert top.hvps <= a.hvps
    assert top.lambda_max == pytest.approx(a.lambda_max, rel=1e-3)


def test_float32_model_uses_float64_lanczos():
    model64, (x, y) = mlp(nn.Tanh, seed=6), data()
    exact = torch.linalg.eigvalsh(exact_hessian(model64, x, y))
    model32 = mlp(nn.Tanh, seed=6).float()
    result = hessian_extremes(model32, LOSS, (x.float(), y), tol=1e-5)
    assert result.lambda_max == pytest.approx(float(exact[-1]), rel=1e-4)
    assert result.lambda_min == pytest.approx(float(exact[0]), rel=1e-4)
    assert result.negative_curvature


def test_operator_extremes_counts_products_and_respects_budget():
    eigenvalues = torch.cat([torch.linspace(-1.0, 1.0, 117, dtype=torch.float64)])
    eigenvalues = torch.cat([eigenvalues, torch.tensor([9.0, 4.0, -3.0], dtype=torch.float64)])
    a, _ = symmetric(eigenvalues)
    calls = []

    def matvec(v: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return a @ v

    result = operator_extremes(matvec, 120, tol=1e-10)
    assert result.hvps == len(calls) < 120
    assert result.lambda_max == pytest.approx(9.0, rel=1e-10)
    assert result.lambda_min == pytest.approx(-3.0, rel=1e-10)
    short = operator_extremes(lambda v: a @ v, 120, tol=1e-10, max_steps=5)
    assert short.hvps == 5 and not short.converged
    full = operator_extremes(lambda v: a @ v, 120, tol=1e-14, max_steps=500)
    assert full.converged and full.hvps <= 120


# --------------------------------------------------------------------------- trace


@pytest.mark.parametrize("method", ["hutchinson", "hutch++"])
@pytest.mark.parametrize("activation", [nn.Tanh, nn.ReLU])
def test_trace_within_three_standard_errors(method, activation):
    model, (x, y) = mlp(activation, seed=7), data()
    exact = float(torch.trace(exact_hessian(model, x, y)))
    result = hessian_trace(model, LOSS, (x, y), method=method, n_hvps=60, seed=1)
    assert result.hvps == 60
    assert 0 < result.stderr < abs(exact)
    assert abs(result.estimate - exact) <= 3 * result.stderr


def test_hutchinson_standard_error_matches_its_variance():
    """For Rademacher probes Var(zᵀAz) = 2 (||A||_F² - Σ A_ii²), exactly."""
    model, (x, y) = mlp(nn.Tanh, seed=8), data()
    h = exact_hessian(model, x, y)
    variance = 2 * (float((h**2).sum()) - float((torch.diagonal(h) ** 2).sum()))
    result = hessian_trace(model, LOSS, (x, y), method="hutchinson", n_hvps=200, seed=2)
    assert result.stderr == pytest.approx(math.sqrt(variance / 200), rel=0.25)


def test_hutch_plus_plus_is_exact_for_low_rank_and_beats_hutchinson_on_outliers():
    eigenvalues = torch.zeros(100, dtype=torch.float64)
    eigenvalues[:5] = torch.tensor([50.0, 20.0, -10.0, 5.0, 1.0])
    a, _ = symmetric(eigenvalues, seed=3)
    result = operator_trace(lambda v: a @ v, 100, method="hutch++", n_hvps=18)
    assert result.estimate == pytest.approx(float(eigenvalues.sum()), abs=1e-9)
    eigenvalues[5:] = 0.01 * torch.linspace(-1, 1, 95, dtype=torch.float64)
    a, _ = symmetric(eigenvalues, seed=3)
    plus = operator_trace(lambda v: a @ v, 100, method="hutch++", n_hvps=30)
    plain = operator_trace(lambda v: a @ v, 100, method="hutchinson", n_hvps=30)
    assert plus.stderr < 0.1 * plain.stderr
    assert abs(plus.estimate - float(eigenvalues.sum())) <= 3 * plus.stderr


# --------------------------------------------------------------------------- density


def quadratic_form_variance(a: torch.Tensor) -> float:
    """Var(vᵀAv) for v = z/√d with z Rademacher: 2 (||A||_F² - Σ A_ii²) / d²."""
    d = a.shape[0]
    return 2 * (float((a**2).sum()) - float((torch.diagonal(a) ** 2).sum())) / d**2


@pytest.mark.parametrize("activation", [nn.Tanh, nn.ReLU])
def test_slq_moments_match_exact_spectrum(activation):
    model, (x, y) = mlp(activation, seed=9), data()
    h = exact_hessian(model, x, y)
    d, n_probes = h.shape[0], 10
    density = spectral_density(model, LOSS, (x, y), n_probes=n_probes, steps=20, seed=3)
    assert density.hvps == n_probes * 20
    assert density.moment(0) == pytest.approx(1.0, abs=1e-12)
    power = torch.eye(d, dtype=torch.float64)
    for p in (1, 2):
        power = power @ h
        exact = float(torch.trace(power)) / d
        # Quadrature is exact for degree < 2·steps, so the error is the probes' sampling error.
        tolerance = 4 * math.sqrt(quadratic_form_variance(power) / n_probes)
        assert abs(density.moment(p) - exact) <= tolerance
        assert density.moment_stderr(p) == pytest.approx(
            math.sqrt(quadratic_form_variance(power) / n_probes), rel=0.6
        )
    grid_step = density.grid[1] - density.grid[0]
    assert float(density.density.sum() * grid_step) == pytest.approx(1.0, abs=1e-3)


def test_slq_with_full_lanczos_recovers_eigenvalues_and_negative_mass():
    eigenvalues = torch.linspace(-2.0, 5.0, 60, dtype=torch.float64)
    a, q = symmetric(eigenvalues, seed=4)
    density = operator_density(lambda v: a @ v, 60, n_probes=12, steps=60, seed=1)
    for nodes in density.nodes:
        np.testing.assert_allclose(nodes, eigenvalues.numpy(), atol=1e-8)
    negative = q[:, eigenvalues < 0]
    projector = negative @ negative.t()
    fraction = float((eigenvalues < 0).double().mean())
    tolerance = 4 * math.sqrt(quadratic_form_variance(projector) / 12)
    assert abs(density.negative_mass - fraction) <= tolerance
    assert density.lambda_min == pytest.approx(-2.0) and density.lambda_max == pytest.approx(5.0)


def test_density_plot_writes_png(tmp_path):
    a, _ = symmetric(torch.linspace(-1.0, 3.0, 30, dtype=torch.float64))
    density = operator_density(lambda v: a @ v, 30, n_probes=2, steps=10)
    path = density.plot(tmp_path / "plots" / "density.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_invalid_arguments_are_named():
    model, batch = mlp(nn.Tanh), data()
    with pytest.raises(ValueError, match="which must be one of .*did you mean 'max'"):
        hessian_extremes(model, LOSS, batch, which="mx")
    with pytest.raises(ValueError, match="tol must be a finite number > 0, got 0"):
        hessian_extremes(model, LOSS, batch, tol=0)
    with pytest.raises(ValueError, match="max_hvps must be an integer >= 1, got 0"):
        hessian_extremes(model, LOSS, batch, max_hvps=0)
    with pytest.raises(ValueError, match="did you mean 'hutch\\+\\+'"):
        hessian_trace(model, LOSS, batch, method="hutch+")
    with pytest.raises(ValueError, match="n_hvps must be an integer >= 3, got 2"):
        hessian_trace(model, LOSS, batch, method="hutch++", n_hvps=2)
    with pytest.raises(ValueError, match="sigma must be a finite number > 0"):
        spectral_density(model, LOSS, batch, sigma=-1.0)


def test_results_print_in_a_few_lines_with_their_headline_numbers():
    """Reprs leave out the samples, nodes, weights, grid and eigenvectors (hundreds of numbers)."""
    model, (x, y) = mlp(nn.Tanh), data()
    h = exact_hessian(model, x, y)
    eigenvalues = np.linalg.eigvalsh(h.numpy())
    ext = hessian_extremes(model, LOSS, (x, y), k=2, tol=1e-8, return_eigenvectors=True)
    text = repr(ext)
    assert "\n" not in text and len(text) < 300
    assert f"lambda_max={ext.lambda_max:.6g}" in text and f"{eigenvalues[-1]:.6g}" in text
    assert f"lambda_min={ext.lambda_min:.6g}" in text and f"hvps={ext.hvps}" in text
    assert f"condition_number={ext.condition_number:.4g}" in text and "(2, 264)" in text
    trace = hessian_trace(model, LOSS, (x, y), n_hvps=200)
    text = repr(trace)
    assert "\n" not in text and len(text) < 120
    assert f"estimate={trace.estimate:.6g}" in text and "hvps=200" in text
    density = spectral_density(model, LOSS, (x, y), n_probes=3, steps=40)
    text = repr(density)
    assert len(text.splitlines()) == 2 and len(text) < 400
    assert f"negative_mass={density.negative_mass:.3g}" in text
    assert f"lambda_max={density.lambda_max:.4g}" in text and "n_probes=3" in text
    assert "spectral mass below 0" in text
