"""Per-example gradients, gradient noise and the noise scale against loops over examples."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from ravine.diagnostics import (
    DiagnosticsWarning,
    NoiseScaleEstimator,
    gradient_noise,
    gradient_statistics,
    noise_scale_two_batch,
    per_example_gradients,
)

LOSS = nn.CrossEntropyLoss()


def mlp(activation: type[nn.Module], seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 12), activation(), nn.Linear(12, 3)).double()


def data(n: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 5, generator=g, dtype=torch.float64), torch.randint(
        0, 3, (n,), generator=g
    )


def loop_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """One autograd.grad per example, in eval mode: the independent reference."""
    model.eval()
    rows = []
    for i in range(x.shape[0]):
        loss = LOSS(model(x[i : i + 1]), y[i : i + 1])
        grads = torch.autograd.grad(loss, list(model.parameters()))
        rows.append(torch.cat([g.reshape(-1) for g in grads]).numpy())
    return np.stack(rows)


@pytest.mark.parametrize("activation", [nn.Tanh, nn.ReLU])
@pytest.mark.parametrize("method", ["vmap", "loop"])
def test_per_example_gradients_equal_loop(activation, method):
    model, (x, y) = mlp(activation), data(50)
    got = per_example_gradients(model, LOSS, x, y, method=method, chunk_size=16)
    np.testing.assert_allclose(got.numpy(), loop_gradients(model, x, y), rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("activation", [nn.Tanh, nn.ReLU])
def test_statistics_equal_exact_covariance(activation):
    model, (x, y) = mlp(activation, seed=2), data(50)
    g = loop_gradients(model, x, y)
    mean = g.mean(0)
    trace_sigma = float(np.trace(np.cov(g.T, bias=True)))
    grad_sq = float(mean @ mean)
    # Chunks of 7 do not divide 50: the chunk merging is exercised with unequal parts.
    stats = gradient_statistics(model, LOSS, (x, y), chunk_size=7)
    assert stats.n_examples == 50 and stats.method == "vmap"
    np.testing.assert_allclose(stats.mean_gradient.numpy(), mean, rtol=1e-10, atol=1e-14)
    assert stats.trace_sigma == pytest.approx(trace_sigma, rel=1e-10)
    assert stats.grad_sq_norm == pytest.approx(grad_sq, rel=1e-10)
    assert stats.b_simple == pytest.approx(trace_sigma / grad_sq, rel=1e-9)
    loader = [(x[:20], y[:20]), (x[20:], y[20:])]
    assert gradient_statistics(model, LOSS, loader).trace_sigma == pytest.approx(trace_sigma)


def test_gradient_noise_follows_inverse_square_root_law():
    model, (x, y) = mlp(nn.Tanh, seed=3), data(512)
    g = loop_gradients(model, x, y)
    trace_sigma = float(np.trace(np.cov(g.T, bias=True)))
    mean = g.mean(0)
    sizes = [2, 4, 8, 16, 32, 64]
    result = gradient_noise(model, LOSS, (x, y), sizes, seed=0, n_batches=200)
    assert abs(result.exponent + 0.5) <= 0.05
    assert result.trace_sigma == pytest.approx(trace_sigma, rel=1e-10)
    assert result.grad_sq_norm == pytest.approx(float(mean @ mean), rel=1e-10)
    assert result.b_simple == pytest.approx(trace_sigma / float(mean @ mean), rel=1e-9)
    assert sorted(result.std_by_m) == sizes
    for m in sizes:
        assert result.predicted_std_by_m[m] == pytest.approx(math.sqrt(trace_sigma / m))
    again = gradient_noise(model, LOSS, (x, y), sizes, seed=0, n_batches=200)
    assert again.std_by_m == result.std_by_m


def batch_norm_mlp() -> nn.Module:
    torch.manual_seed(4)
    return nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 3)).double()


def test_batch_norm_in_train_mode_falls_back_to_loop_and_warns():
    model, (x, y) = batch_norm_mlp(), data(40)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.warns(
        DiagnosticsWarning, match="batch norm in train mode couples the examples"
    ) as w:
        got = per_example_gradients(model, LOSS, x, y, mode="train", chunk_size=40)
    assert {r.filename for r in w} == {__file__}  # the caller's line, not ravine's
    # The examples' loss terms within the chunk average to the chunk's train-mode gradient.
    model.train()
    reference = batch_norm_mlp()
    reference.load_state_dict(before)
    reference.train()
    loss = LOSS(reference(x), y)
    expected = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, reference.parameters())])
    torch.testing.assert_close(got.mean(0), expected)
    assert not torch.allclose(got[0], got[1])
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    with pytest.raises(ValueError, match="method='vmap' is not possible here"):
        per_example_gradients(model, LOSS, x, y, mode="train", method="vmap")


class DataDependentBranch(nn.Module):
    """Python control flow on tensor values, which vmap cannot trace."""

    def __init__(self) -> None:
        super().__init__()
        self.net = mlp(nn.Tanh, seed=5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        return out if float(out.sum()) > -1e9 else -out


def test_vmap_failure_falls_back_with_one_line_warning():
    model, (x, y) = DataDependentBranch(), data(30)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = per_example_gradients(model, LOSS, x, y)
    messages = [str(w.message) for w in caught if "per-example gradients" in str(w.message)]
    assert len(messages) == 1 and "vmap failed" in messages[0] and "\n" not in messages[0]
    np.testing.assert_allclose(got.numpy(), loop_gradients(model.net, x, y), rtol=1e-10)


def test_two_batch_estimator_is_exact_in_expectation_and_unbiased_by_sampling():
    g = np.random.default_rng(0).normal(size=(300, 7)) + np.linspace(-0.3, 0.5, 7)
    mean = g.mean(0)
    grad_sq = float(mean @ mean)
    trace = float(((g - mean) ** 2).sum(1).mean())

    def expected_sq_norm(b: int) -> float:
        return grad_sq + trace / b

    exact = noise_scale_two_batch(expected_sq_norm(4), expected_sq_norm(32), 4, 32)
    assert exact == pytest.approx((grad_sq, trace), rel=1e-12)

    rng = np.random.default_rng(1)
    estimates = []
    for _ in range(4000):
        small = g[rng.integers(0, 300, 4)].mean(0)
        big = g[rng.integers(0, 300, 32)].mean(0)
        estimates.append(noise_scale_two_batch(small @ small, big @ big, 4, 32))
    estimates = np.array(estimates)
    stderr = estimates.std(0, ddof=1) / math.sqrt(len(estimates))
    assert np.all(np.abs(estimates.mean(0) - [grad_sq, trace]) <= 4 * stderr)


def test_streaming_estimator_is_a_bias_corrected_moving_average():
    pairs = [(3.0, 1.2), (2.5, 1.0), (4.0, 1.5), (2.0, 0.9)]
    estimator = NoiseScaleEstimator(8, 64, beta=0.8)
    assert estimator.b_simple is None and estimator.grad_sq_norm is None
    grad_avg = trace_avg = 0.0
    for t, (small, big) in enumerate(pairs, start=1):
        estimator.update(small, big)
        grad_sq, trace = noise_scale_two_batch(small, big, 8, 64)
        grad_avg = 0.8 * grad_avg + 0.2 * grad_sq
        trace_avg = 0.8 * trace_avg + 0.2 * trace
        assert estimator.grad_sq_norm == pytest.approx(grad_avg / (1 - 0.8**t))
        assert estimator.trace_sigma == pytest.approx(trace_avg / (1 - 0.8**t))
        assert estimator.b_simple == pytest.approx(trace_avg / grad_avg)
    resumed = NoiseScaleEstimator(8, 64, beta=0.8)
    resumed.load_state_dict(estimator.state_dict())
    estimator.update(3.0, 1.1)
    resumed.update(3.0, 1.1)
    assert resumed.b_simple == estimator.b_simple
    latest = NoiseScaleEstimator(8, 64, beta=0.0)
    latest.update(3.0, 1.2)
    assert latest.grad_sq_norm == pytest.approx(noise_scale_two_batch(3.0, 1.2, 8, 64)[0])


def test_invalid_arguments_are_named():
    model, batch = mlp(nn.Tanh), data(20)
    with pytest.raises(ValueError, match="at least 2 distinct sizes"):
        gradient_noise(model, LOSS, batch, [4, 4])
    with pytest.raises(ValueError, match="batch_sizes entries must be <= 20"):
        gradient_noise(model, LOSS, batch, [4, 64])
    with pytest.raises(ValueError, match="n_batches must be an integer >= 2, got 1"):
        gradient_noise(model, LOSS, batch, [2, 4], n_batches=1)
    with pytest.raises(ValueError, match="did you mean 'loop'"):
        per_example_gradients(model, LOSS, *batch, method="lop")
    with pytest.raises(ValueError, match="b_big must be > b_small"):
        noise_scale_two_batch(1.0, 1.0, 32, 8)
    with pytest.raises(ValueError, match="beta must be in \\[0, 1\\), got 1.0"):
        NoiseScaleEstimator(8, 32, beta=1.0)


def test_results_print_in_a_few_lines_with_their_headline_numbers():
    model, (x, y) = mlp(nn.Tanh), data(300)
    stats = gradient_statistics(model, LOSS, (x, y))
    text = repr(stats)
    assert "\n" not in text and len(text) < 200
    for value in (stats.grad_sq_norm, stats.trace_sigma, stats.b_simple):
        assert f"{value:.4g}" in text
    assert str(stats.n_examples) in text and "'vmap'" in text
    sizes = [2, 4, 8, 16, 32, 64, 128, 256]
    result = gradient_noise(model, LOSS, (x, y), sizes, n_batches=2)
    text = repr(result)
    assert len(text.splitlines()) <= 3 and len(text) < 400
    for value in (result.b_simple, result.trace_sigma):
        assert f"{value:.4g}" in text
    assert f"exponent={result.exponent:.3f}" in text
    assert f"2: {result.std_by_m[2]:.3g}" in text and "(8 sizes)" in text
    assert f"{result.std_by_m[256]:.3g}" not in text  # the first six sizes only
