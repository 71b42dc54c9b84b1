"""Hessian-vector products against the exact Hessian of torch.autograd.functional.hessian."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.func import functional_call

from ravine.diagnostics import DiagnosticsWarning, HessianOperator, hessian_extremes, hvp

BACKENDS = ["double-backward", "forward-over-reverse"]


def mlp(activation: type[nn.Module], seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 14), activation(), nn.Linear(14, 4)).double()


def data(n: int = 40, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 6, generator=g, dtype=torch.float64), torch.randint(
        0, 4, (n,), generator=g
    )


def exact_hessian(model: nn.Module, loss_fn, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The Hessian of the loss as a function of the flat vector of trainable parameters."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    flat = torch.cat([p.detach().reshape(-1) for _, p in named])
    sizes = [p.numel() for _, p in named]

    def loss_of(theta: torch.Tensor) -> torch.Tensor:
        pieces = torch.split(theta, sizes)
        params = {n: t.view(p.shape) for (n, p), t in zip(named, pieces, strict=True)}
        return loss_fn(functional_call(model, params, (x,)), y)

    return torch.autograd.functional.hessian(loss_of, flat)


def random_vector(dim: int, seed: int = 2) -> torch.Tensor:
    return torch.randn(dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("activation", [nn.Tanh, nn.ReLU])
@pytest.mark.parametrize("backend", BACKENDS)
def test_hvp_equals_exact_hessian_times_vector(activation, backend):
    model, (x, y), loss_fn = mlp(activation), data(), nn.CrossEntropyLoss()
    h = exact_hessian(model, loss_fn, x, y)
    op = HessianOperator(model, loss_fn, (x, y), backend=backend)
    assert op.dim == h.shape[0]
    for seed in range(3):
        v = random_vector(op.dim, seed)
        torch.testing.assert_close(op(v), h @ v, rtol=1e-10, atol=1e-12)
    assert op.hvps == 3


@pytest.mark.parametrize("activation", [nn.Tanh, nn.ReLU])
def test_backends_agree(activation):
    model, batch, loss_fn = mlp(activation, seed=3), data(), nn.CrossEntropyLoss()
    v = random_vector(sum(p.numel() for p in model.parameters()))
    a, b = (hvp(model, loss_fn, batch, v, backend=backend) for backend in BACKENDS)
    assert torch.linalg.vector_norm(a - b) <= 1e-6 * torch.linalg.vector_norm(a)


@pytest.mark.parametrize("backend", BACKENDS)
def test_loader_average_equals_full_batch(backend):
    """Unequal batches that partition the data, weighted by size, give the full-batch HVP."""
    model, (x, y), loss_fn = mlp(nn.Tanh), data(), nn.CrossEntropyLoss()
    v = random_vector(sum(p.numel() for p in model.parameters()))
    full = hvp(model, loss_fn, (x, y), v, backend=backend)
    cuts = [0, 7, 27, 40]
    loader = [(x[a:b], y[a:b]) for a, b in zip(cuts[:-1], cuts[1:], strict=True)]
    torch.testing.assert_close(hvp(model, loss_fn, loader, v, backend=backend), full)
    generator = ((x[a:b], y[a:b]) for a, b in zip(cuts[:-1], cuts[1:], strict=True))
    op = HessianOperator(model, loss_fn, generator, backend=backend)
    torch.testing.assert_close(op(v), full)
    torch.testing.assert_close(op(v), full)  # a generator is materialized: a second pass works


class WithUnusedAndLinear(nn.Module):
    """An unused layer (gradient None) and an offset entering the loss linearly (gradient
    constant, without a graph)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = mlp(nn.Tanh)
        self.unused = nn.Linear(3, 3).double()
        self.offset = nn.Parameter(torch.tensor([0.3], dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.net(x), self.offset.expand(x.shape[0], 1)], dim=1)


def loss_with_linear_offset(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(out[:, :4], y) + out[:, 4].mean()


@pytest.mark.parametrize("backend", BACKENDS)
def test_unused_and_linear_parameters_have_zero_blocks(backend):
    model, (x, y) = WithUnusedAndLinear(), data()
    h = exact_hessian(model, loss_with_linear_offset, x, y)
    op = HessianOperator(model, loss_with_linear_offset, (x, y), backend=backend)
    v = random_vector(op.dim)
    hv = op(v)
    torch.testing.assert_close(hv, h @ v, rtol=1e-10, atol=1e-12)
    # named_parameters() lists the module's own parameter (offset) before the submodules'.
    names = [n for n, p in model.named_parameters() for _ in range(p.numel())]
    zero = torch.tensor([n == "offset" or n.startswith("unused.") for n in names])
    assert zero.sum() == 13
    assert torch.all(hv[zero] == 0) and torch.all(h[zero] == 0)
    assert torch.all(hv[~zero] != 0)


def test_loss_and_gradient_matches_autograd():
    model, (x, y), loss_fn = mlp(nn.ReLU), data(), nn.CrossEntropyLoss()
    loader = [(x[:25], y[:25]), (x[25:], y[25:])]
    loss, gradient = HessianOperator(model, loss_fn, loader).loss_and_gradient()
    full = loss_fn(model(x), y)
    expected = torch.cat([g.reshape(-1) for g in torch.autograd.grad(full, model.parameters())])
    assert loss == pytest.approx(float(full.detach()), rel=1e-12)
    torch.testing.assert_close(gradient, expected)


def normalized_mlp(dropout: float) -> nn.Module:
    torch.manual_seed(4)
    return nn.Sequential(
        nn.Linear(6, 10), nn.BatchNorm1d(10), nn.Tanh(), nn.Dropout(dropout), nn.Linear(10, 4)
    ).double()


@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_norm_mode_is_explicit_and_model_is_restored(mode, backend):
    model, (x, y), loss_fn = normalized_mlp(0.0), data(), nn.CrossEntropyLoss()
    with torch.no_grad():
        model[1].running_mean.uniform_(-1, 1)
        model[1].running_var.uniform_(0.5, 2)
    model.train()
    model[4].eval()  # a mixed-mode model must come back exactly as it was
    before = {k: v.clone() for k, v in model.state_dict().items()}
    # The exact Hessian of the operator's function: the network in `mode`, BN not updating.
    reference = normalized_mlp(0.0)
    reference.load_state_dict(before)
    reference.train(mode == "train")
    reference[1].track_running_stats = mode == "eval"
    h = exact_hessian(reference, loss_fn, x, y)
    with pytest.warns(UserWarning, match=f"mode={mode!r}"):
        op = HessianOperator(model, loss_fn, (x, y), mode=mode, backend=backend)
    v = random_vector(op.dim)
    torch.testing.assert_close(op(v), h @ v, rtol=1e-9, atol=1e-12)
    assert [m.training for m in model.modules()] == [True] * 5 + [False]
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


@pytest.mark.parametrize("backend", BACKENDS)
def test_train_mode_dropout_operator_is_fixed_and_symmetric(backend):
    """Dropout masks come from a fixed seed per batch: the operator is one symmetric matrix."""
    model, (x, y), loss_fn = normalized_mlp(0.3), data(), nn.CrossEntropyLoss()
    loader = [(x[:20], y[:20]), (x[20:], y[20:])]
    with pytest.warns(UserWarning, match="dropout"):
        op = HessianOperator(model, loss_fn, loader, mode="train", backend=backend)
    u, v = random_vector(op.dim, 5), random_vector(op.dim, 6)
    hv = op(v)
    torch.testing.assert_close(op(v), hv, rtol=0, atol=0)
    torch.testing.assert_close(torch.dot(u, hv), torch.dot(v, op(u)), rtol=1e-10, atol=1e-12)
    with pytest.warns(UserWarning):
        eval_op = HessianOperator(model, loss_fn, loader, mode="eval", backend=backend)
    assert not torch.allclose(eval_op(v), hv)


def test_no_warning_without_mode_dependent_modules():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        HessianOperator(mlp(nn.Tanh), nn.CrossEntropyLoss(), data(), backend="double-backward")


def test_auto_backend_is_timed_once_and_cached():
    model, batch, loss_fn = mlp(nn.Tanh, seed=7), data(), nn.CrossEntropyLoss()
    first = HessianOperator(model, loss_fn, batch)
    assert first.backend in BACKENDS
    assert set(first.backend_timings) == set(BACKENDS)
    second = HessianOperator(model, loss_fn, batch)
    assert second.backend == first.backend
    assert second.backend_timings == {}
    v = random_vector(first.dim)
    torch.testing.assert_close(first(v), exact_hessian(model, loss_fn, *batch) @ v)


def test_float32_model_returns_float64_for_float64_vector():
    model = mlp(nn.Tanh).float()
    x, y = data()
    op = HessianOperator(model, nn.CrossEntropyLoss(), (x.float(), y), backend="double-backward")
    v = random_vector(op.dim)
    h = exact_hessian(mlp(nn.Tanh), nn.CrossEntropyLoss(), x, y)
    result = op(v)
    assert result.dtype == torch.float64
    assert torch.linalg.vector_norm(result - h @ v) <= 1e-5 * torch.linalg.vector_norm(h @ v)


def test_invalid_arguments_are_named():
    model, batch, loss_fn = mlp(nn.Tanh), data(), nn.CrossEntropyLoss()
    with pytest.raises(ValueError, match="mode must be one of .*got 'evl'; did you mean 'eval'"):
        HessianOperator(model, loss_fn, batch, mode="evl")
    with pytest.raises(ValueError, match="did you mean 'double-backward'"):
        HessianOperator(model, loss_fn, batch, backend="double_backward")
    op = HessianOperator(model, loss_fn, batch, backend="double-backward")
    with pytest.raises(ValueError, match=f"vector must be 1-D with {op.dim} entries"):
        op(torch.zeros(op.dim + 1, dtype=torch.float64))
    with pytest.raises(TypeError, match="data must be a batch"):
        HessianOperator(model, loss_fn, torch.zeros(3))
    with pytest.raises(ValueError, match="loss_fn must return a scalar"):
        HessianOperator(
            model, nn.CrossEntropyLoss(reduction="none"), batch, backend="double-backward"
        )(torch.zeros(op.dim, dtype=torch.float64))


def test_warnings_have_their_own_category_and_the_callers_line():
    """A program can catch DiagnosticsWarning; users still get a UserWarning at their own line."""
    assert issubclass(DiagnosticsWarning, UserWarning)
    model, batch, loss_fn = normalized_mlp(0.3), data(), nn.CrossEntropyLoss()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        HessianOperator(model, loss_fn, batch, backend="double-backward")  # direct call
        hessian_extremes(model, loss_fn, batch, max_hvps=3, backend="double-backward")  # nested
    assert [w.category for w in caught] == [DiagnosticsWarning] * 2
    assert {w.filename for w in caught} == {__file__}
    assert all("dropout" in str(w.message) for w in caught)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", category=DiagnosticsWarning)
        HessianOperator(model, loss_fn, batch, backend="double-backward")
