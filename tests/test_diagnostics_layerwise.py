"""Per-layer diagnostics and dead units against dense Hessians, autograd and direct counts."""

from __future__ import annotations

import copy
import itertools
import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F
from torch.nn.utils import parametrize

from ravine import optim
from ravine.diagnostics import gradient_statistics
from ravine.diagnostics.layerwise import (
    _bootstrap_components,
    b_simple_interval,
    layerwise,
)
from ravine.diagnostics.units import dead_units

LOSS = nn.CrossEntropyLoss()


class Net(nn.Module):
    """Linear(3, 4) - ReLU - Linear(4, 2): blocks "net.0" (16 parameters) and "net.2" (10)."""

    def __init__(self, activation: type[nn.Module] = nn.ReLU) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3, 4), activation(), nn.Linear(4, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ConvNet(nn.Module):
    """Conv2d(1, 2, 3) - ReLU - Linear(32, 3) on 6x6 images: 20 + 99 parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.act = nn.ReLU()
        self.head = nn.Linear(2 * 4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.conv(x)).flatten(1))


def mlp(seed: int = 0, activation: type[nn.Module] = nn.ReLU) -> Net:
    torch.manual_seed(seed)
    return Net(activation).double()


def convnet(seed: int = 0) -> ConvNet:
    torch.manual_seed(seed)
    return ConvNet().double()


def data(n: int = 40, shape: tuple[int, ...] = (3,), classes: int = 2, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *shape, generator=g, dtype=torch.float64)
    return x, torch.randint(0, classes, (n,), generator=g)


def dense_hessian(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    named = list(model.named_parameters())
    flat = torch.cat([p.detach().reshape(-1) for _, p in named])

    def loss_of(theta: torch.Tensor) -> torch.Tensor:
        pieces = torch.split(theta, [p.numel() for _, p in named])
        params = {n: t.view(p.shape) for (n, p), t in zip(named, pieces, strict=True)}
        return LOSS(functional_call(model, params, (x,)), y)

    return torch.autograd.functional.hessian(loss_of, flat).numpy()


def module_slices(model: nn.Module) -> dict[str, slice]:
    """Flat ranges of each module's parameters, from the parameter names."""
    slices: dict[str, slice] = {}
    start = 0
    for name, p in model.named_parameters():
        module = name.rsplit(".", 1)[0]
        first = slices.get(module, slice(start, start)).start
        slices[module] = slice(first, start + p.numel())
        start += p.numel()
    return slices


def full_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    grads = torch.autograd.grad(LOSS(model(x), y), list(model.parameters()))
    return torch.cat([g.reshape(-1) for g in grads]).numpy()


def loop_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """One autograd.grad per example: the independent per-example reference."""
    rows = []
    for i in range(x.shape[0]):
        grads = torch.autograd.grad(
            LOSS(model(x[i : i + 1]), y[i : i + 1]), list(model.parameters())
        )
        rows.append(torch.cat([g.reshape(-1) for g in grads]).numpy())
    return np.stack(rows)


# --------------------------------------------------------------------------- curvature per block


@pytest.mark.parametrize("case", ["mlp", "conv"])
def test_blocks_match_dense_hessian_blocks(case):
    if case == "mlp":
        model, (x, y) = mlp(), data()
    else:
        model, (x, y) = convnet(), data(30, (1, 6, 6), 3)
    hessian = dense_hessian(model, x, y)
    slices = module_slices(model)
    result = layerwise(model, LOSS, (x, y), tol=1e-8, max_hvps=200, trace_hvps=200)
    assert [row.name for row in result.rows] == list(slices)
    scale = np.abs(np.linalg.eigvalsh(hessian)).max()
    gradient = full_gradient(model, x, y)
    for row in result.rows:
        cut = slices[row.name]
        block = hessian[cut, cut]
        assert row.n_params == block.shape[0]
        top = np.linalg.eigvalsh(block)[-1]
        assert abs(row.lambda_max - top) <= 1e-6 * max(abs(top), 1e-3 * scale)
        assert row.lambda_max_converged
        assert row.trace_exact and row.trace_stderr == 0.0
        assert row.trace == pytest.approx(np.trace(block), rel=1e-10, abs=1e-12 * scale)
        assert row.grad_norm == pytest.approx(np.linalg.norm(gradient[cut]), rel=1e-10)
        weights = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).numpy()
        assert row.weight_norm == pytest.approx(np.linalg.norm(weights[cut]), rel=1e-12)
        assert row.update_ratio is None
    total = sum(np.trace(hessian[cut, cut]) for cut in slices.values())
    assert total == pytest.approx(np.trace(hessian), rel=1e-12)
    shares = [row.trace_share for row in result.rows]
    assert sum(shares) == pytest.approx(1.0, abs=1e-12)
    for row in result.rows:
        assert row.trace_share == pytest.approx(
            np.trace(hessian[slices[row.name]][:, slices[row.name]]) / total, rel=1e-9
        )
    tops = {n: np.linalg.eigvalsh(hessian[c, c])[-1] for n, c in slices.items()}
    assert result.limiting_layer == max(tops, key=tops.__getitem__)
    assert result.loss == pytest.approx(float(LOSS(model(x), y).detach()), rel=1e-12)


def test_by_parameter_blocks_and_lanczos_tolerance():
    model, (x, y) = mlp(seed=3), data(seed=4)
    hessian = dense_hessian(model, x, y)
    result = layerwise(model, LOSS, (x, y), by="parameter", tol=1e-8, trace_hvps=200)
    start = 0
    for (name, p), row in zip(model.named_parameters(), result.rows, strict=True):
        cut = slice(start, start + p.numel())
        start += p.numel()
        assert row.name == name and row.n_params == p.numel()
        top = np.linalg.eigvalsh(hessian[cut, cut])[-1]
        # Blocks no larger than max_hvps are solved exactly by Lanczos.
        assert row.lambda_max == pytest.approx(top, rel=1e-6, abs=1e-12)
        assert row.trace == pytest.approx(np.trace(hessian[cut, cut]), rel=1e-10, abs=1e-14)


def test_hutchinson_trace_for_large_blocks():
    model, (x, y) = convnet(seed=2), data(30, (1, 6, 6), 3, seed=5)
    hessian = dense_hessian(model, x, y)
    slices = module_slices(model)
    result = layerwise(model, LOSS, (x, y), trace_hvps=40, max_hvps=8, tol=1e-12)
    rows = {row.name: row for row in result.rows}
    # conv: 20 parameters <= 40, exact; head: 99 > 40, Hutchinson with 40 probes.
    assert rows["conv"].trace_exact and not rows["head"].trace_exact
    head = hessian[slices["head"], slices["head"]]
    assert rows["head"].trace_stderr > 0
    assert abs(rows["head"].trace - np.trace(head)) <= 4 * rows["head"].trace_stderr
    # Eight Lanczos steps on a 99-dimensional block: a lower bound (interlacing), not converged.
    top = np.linalg.eigvalsh(head)[-1]
    assert rows["head"].lambda_max <= top * (1 + 1e-12)
    assert not rows["head"].lambda_max_converged
    assert rows["head"].hvps == 8 + 40 and rows["conv"].hvps <= 8 + 20
    assert result.hvps == sum(row.hvps for row in result.rows)


def test_loader_of_batches_equals_one_batch():
    model, (x, y) = mlp(seed=1), data(40, seed=2)
    whole = layerwise(model, LOSS, (x, y), trace_hvps=200)
    parts = layerwise(model, LOSS, [(x[:15], y[:15]), (x[15:], y[15:])], trace_hvps=200)
    for a, b in zip(whole.rows, parts.rows, strict=True):
        for key in ("lambda_max", "trace", "grad_norm", "b_simple"):
            assert getattr(b, key) == pytest.approx(getattr(a, key), rel=1e-9)


# --------------------------------------------------------------------------- next step


def _snapshot(model: nn.Module, opt: torch.optim.Optimizer):
    params = [
        (p.detach().clone(), None if p.grad is None else p.grad.clone()) for p in model.parameters()
    ]
    buffers = [b.clone() for b in model.buffers()]
    modes = [m.training for m in model.modules()]
    return params, buffers, modes, copy.deepcopy(opt.state_dict())


def _assert_same(a, b) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for u, v in zip(a, b, strict=True):
            _assert_same(u, v)
    else:
        assert a == b or (isinstance(a, float) and math.isnan(a) and math.isnan(b))


def _true_params(model: nn.Module, opt: torch.optim.Optimizer) -> list[torch.Tensor]:
    with optim.base.true_params(opt):
        return [p.detach().clone() for p in model.parameters()]


OPTIMIZERS = {
    "torch-adam": lambda ps: torch.optim.Adam(ps, lr=0.01),
    "torch-sgd-momentum": lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, weight_decay=1e-3),
    "nesterov": lambda ps: optim.create("nesterov", ps, lr=0.05),
    "rmsprop-nesterov": lambda ps: optim.create("rmsprop-nesterov", ps, lr=0.01, clip_norm=0.5),
}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_update_ratio_equals_a_real_step_and_leaves_the_user_state_alone(name):
    (x, y) = data(32, seed=7)
    model = mlp(seed=5)
    opt = OPTIMIZERS[name](model.parameters())
    # A few steps of history (momentum, second moments, an interim point), then a stale grad.
    for i in range(3):
        opt.zero_grad()
        LOSS(model(x[i::3]), y[i::3]).backward()
        opt.step()
    model.train()
    model.net[0].train(False)
    twin, twin_opt = copy.deepcopy(model), None
    twin_opt = OPTIMIZERS[name](twin.parameters())
    twin_opt.load_state_dict(opt.state_dict())
    before = _snapshot(model, opt)

    result = layerwise(model, LOSS, (x, y), optimizer=opt)

    _assert_same(before, _snapshot(model, opt))
    # The reference: really step the twin with the full-data gradient (eval mode, as measured).
    theta0 = _true_params(twin, twin_opt)
    twin.eval()
    twin_opt.zero_grad()
    LOSS(twin(x), y).backward()
    twin_opt.step()
    theta1 = _true_params(twin, twin_opt)
    slices = module_slices(model)
    flat0 = torch.cat([t.reshape(-1) for t in theta0]).numpy()
    flat1 = torch.cat([t.reshape(-1) for t in theta1]).numpy()
    for row in result.rows:
        cut = slices[row.name]
        expected = np.linalg.norm(flat1[cut] - flat0[cut]) / np.linalg.norm(flat0[cut])
        assert row.update_ratio == pytest.approx(expected, rel=1e-10)
        assert row.weight_norm == pytest.approx(np.linalg.norm(flat0[cut]), rel=1e-12)
        assert row.update_ratio > 0


def test_update_ratio_of_sgd_is_lr_times_gradient_over_weights():
    model, (x, y) = convnet(seed=4), data(20, (1, 6, 6), 3, seed=8)
    lr = 0.3
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    result = layerwise(model, LOSS, (x, y), optimizer=opt, by="parameter")
    gradient = full_gradient(model, x, y)
    start = 0
    for (_, p), row in zip(model.named_parameters(), result.rows, strict=True):
        g = gradient[start : start + p.numel()]
        start += p.numel()
        expected = lr * np.linalg.norm(g) / float(p.detach().norm())
        assert row.update_ratio == pytest.approx(expected, rel=1e-12)
        assert row.update_ratio == pytest.approx(lr * row.grad_norm / row.weight_norm, rel=1e-12)


def test_optimizer_checks():
    model, batch = mlp(), data()
    with pytest.raises(TypeError, match="optimizer must be a torch.optim.Optimizer, got list"):
        layerwise(model, LOSS, batch, optimizer=[])
    other = torch.optim.SGD(mlp().parameters(), lr=0.1)
    with pytest.raises(ValueError, match="holds none of the model's trainable parameters"):
        layerwise(model, LOSS, batch, optimizer=other)
    with pytest.raises(ValueError, match="by must be one of .*did you mean 'module'"):
        layerwise(model, LOSS, batch, by="modules")
    with pytest.raises(ValueError, match="trace_hvps must be an integer >= 2, got 1"):
        layerwise(model, LOSS, batch, trace_hvps=1)


# --------------------------------------------------------------------------- noise per block


def test_block_b_simple_equals_direct_per_example_computation():
    model, (x, y) = mlp(seed=6), data(50, seed=9)
    g = loop_gradients(model, x, y)
    result = layerwise(model, LOSS, (x, y))
    for row in result.rows:
        block = g[:, module_slices(model)[row.name]]
        mean = block.mean(0)
        trace_sigma = ((block - mean) ** 2).sum(1).mean()
        assert row.b_simple == pytest.approx(trace_sigma / (mean @ mean), rel=1e-10)


def test_b_simple_interval_estimate_contains_and_is_deterministic():
    model, (x, y) = mlp(seed=6), data(200, seed=9)
    n = 200
    estimate, low, high = b_simple_interval(model, LOSS, (x, y), n_boot=300, seed=3)
    # The unbiased parts of McCandlish et al. (A.1 with B_small = 1, B_big = N), from the
    # dataset statistics computed by gradient_statistics.
    stats = gradient_statistics(model, LOSS, (x, y))
    unbiased = (stats.trace_sigma * n / (n - 1)) / (
        stats.grad_sq_norm - stats.trace_sigma / (n - 1)
    )
    assert estimate == pytest.approx(unbiased, rel=1e-10)
    assert estimate > stats.b_simple
    assert low < estimate < high < math.inf
    assert b_simple_interval(model, LOSS, (x, y), n_boot=300, seed=3) == (estimate, low, high)
    assert b_simple_interval(model, LOSS, (x, y), n_boot=300, seed=4) != (estimate, low, high)
    _, narrow_low, narrow_high = b_simple_interval(
        model, LOSS, (x, y), n_boot=300, level=0.5, seed=3
    )
    assert low <= narrow_low <= estimate <= narrow_high <= high
    parts = [(x[:70], y[:70]), (x[70:], y[70:])]
    assert b_simple_interval(model, LOSS, parts, n_boot=300, seed=3) == pytest.approx(
        (estimate, low, high), rel=1e-10
    )


def test_b_simple_interval_when_the_mean_gradient_is_unresolved():
    # Two examples whose gradients cancel: |Ĝ|² = 0, the noise scale is unbounded above.
    model = nn.Linear(1, 1, bias=False).double()
    w = float(model.weight.detach())
    x = torch.ones(2, 1, dtype=torch.float64)
    y = torch.tensor([[w + 1.0], [w - 1.0]], dtype=torch.float64)
    estimate, low, high = b_simple_interval(model, nn.MSELoss(), (x, y), n_boot=50)
    assert estimate == math.inf and high == math.inf and low <= high


def test_bootstrap_components_equal_resampled_rows():
    g = torch.randn(7, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64) + 0.5
    picks = torch.randint(0, 7, (4, 7), generator=torch.Generator().manual_seed(1))
    counts = torch.zeros(4, 7, dtype=torch.float64).scatter_add_(
        1, picks, torch.ones(4, 7, dtype=torch.float64)
    )
    grad_sq, trace, s, t = _bootstrap_components(g, counts)
    a = g.numpy()
    assert grad_sq == pytest.approx(a.mean(0) @ a.mean(0), rel=1e-12)
    assert trace == pytest.approx(((a - a.mean(0)) ** 2).sum(1).mean(), rel=1e-12)
    n = 7
    for r, rows in enumerate(picks.numpy()):
        sample = a[rows]
        mean = sample.mean(0)
        tr = ((sample - mean) ** 2).sum(1).mean()
        assert t[r] == pytest.approx(tr * n / (n - 1), rel=1e-12)
        assert s[r] == pytest.approx(mean @ mean - tr / (n - 1), rel=1e-12)


def test_bootstrap_components_are_unbiased_over_all_resamples():
    # Every one of the N^N equally likely index tuples for N = 4: the corrected resample values
    # average exactly the sample's own |G|² and tr Σ.
    n = 4
    g = torch.randn(n, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64) + 1.0
    picks = torch.tensor(list(itertools.product(range(n), repeat=n)))
    counts = torch.zeros(len(picks), n, dtype=torch.float64).scatter_add_(
        1, picks, torch.ones(len(picks), n, dtype=torch.float64)
    )
    grad_sq, trace, s, t = _bootstrap_components(g, counts)
    assert s.mean() == pytest.approx(grad_sq, rel=1e-12)
    assert t.mean() == pytest.approx(trace, rel=1e-12)


def test_b_simple_interval_checks():
    model, (x, y) = mlp(), data()
    with pytest.raises(ValueError, match="level must be a number in \\(0, 1\\), got 1.5"):
        b_simple_interval(model, LOSS, (x, y), level=1.5)
    with pytest.raises(ValueError, match="n_boot must be an integer >= 2, got 1"):
        b_simple_interval(model, LOSS, (x, y), n_boot=1)
    with pytest.raises(ValueError, match="at least 2 examples to resample, got 1"):
        b_simple_interval(model, LOSS, (x[:1], y[:1]))


# --------------------------------------------------------------------------- result object


def test_result_table_dict_repr_and_plot(tmp_path):
    model, (x, y) = mlp(), data()
    result = layerwise(model, LOSS, (x, y), optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    table = result.to_markdown()
    assert table.count("\n| net.") + table.count("\n| **net.") == 2
    assert f"**{result.limiting_layer}**" in table
    as_dict = result.to_dict()
    assert as_dict["limiting_layer"] == result.limiting_layer
    assert [d["name"] for d in as_dict["layers"]] == ["net.0", "net.2"]
    assert as_dict["layers"][0]["lambda_max"] == result.rows[0].lambda_max
    assert "\n" not in repr(result) and len(repr(result)) < 200
    path = result.plot(tmp_path / "sub" / "layers.png")
    assert path.exists() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_same_seed_same_result():
    model, (x, y) = convnet(seed=1), data(20, (1, 6, 6), 3, seed=2)
    first = layerwise(model, LOSS, (x, y), trace_hvps=10, max_hvps=10, seed=5).to_dict()
    again = layerwise(model, LOSS, (x, y), trace_hvps=10, max_hvps=10, seed=5).to_dict()
    other = layerwise(model, LOSS, (x, y), trace_hvps=10, max_hvps=10, seed=6).to_dict()
    assert first == again
    assert first["layers"][1]["trace"] != other["layers"][1]["trace"]


# --------------------------------------------------------------------------- dead units


def test_dead_units_of_a_linear_layer_equal_a_direct_count():
    model, (x, y) = mlp(seed=2), data(60, seed=3)
    with torch.no_grad():
        model.net[0].bias[[1, 3]] = -100.0
    result = dead_units(model, (x, y))
    pre = model.net[0](x)
    dead = (F.relu(pre) == 0).all(0)
    assert dead[1] and dead[3]
    assert result.counts == {"net.1": (int(dead.sum()), 4)}
    assert result.fraction == pytest.approx(float(dead.double().mean()))
    assert result.by_layer == {"net.1": result.fraction}
    assert result.hooked_layers == 1 and result.n_examples == 60
    assert result.to_dict() == {
        "dead_fraction": result.fraction,
        "dead_by_layer": result.by_layer,
        "hooked_layers": 1,
    }


def test_dead_channels_of_a_conv_layer_equal_a_direct_count():
    model, (x, y) = convnet(seed=3), data(25, (1, 6, 6), 3, seed=4)
    with torch.no_grad():
        model.conv.bias[1] = -100.0
    # Channel 1 is pushed far below zero; channel 0 keeps its random bias and fires somewhere.
    result = dead_units(model, [(x, y)])
    out = F.relu(model.conv(x))
    dead = (out == 0).all(dim=(0, 2, 3))
    assert bool(dead[1]) and not bool(dead[0])
    assert result.counts == {"act": (int(dead.sum()), 2)}
    assert result.fraction == pytest.approx(int(dead.sum()) / 2)


def test_a_unit_alive_in_one_batch_is_not_dead():
    model = mlp(seed=2)
    with torch.no_grad():
        model.net[0].bias[:] = -5.0
    x1 = torch.zeros(10, 3, dtype=torch.float64)
    x2 = 1e3 * torch.randn(10, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = torch.zeros(10, dtype=torch.long)
    assert dead_units(model, (x1, y)).counts == {"net.1": (4, 4)}
    both = dead_units(model, [(x1, y), (x2, y)])
    expected = int((F.relu(model.net[0](torch.cat([x1, x2]))) == 0).all(0).sum())
    assert expected < 4
    assert both.counts == {"net.1": (expected, 4)} and both.n_examples == 20


@pytest.mark.parametrize(
    "activation, dead_when",
    [
        (nn.ReLU6, lambda z: torch.clamp(z, 0, 6) == 0),
        (lambda: nn.Threshold(0.5, 0.0), lambda z: z <= 0.5),
    ],
)
def test_relu6_and_threshold_are_hooked(activation, dead_when):
    model, (x, y) = mlp(seed=4, activation=activation), data(30, seed=5)
    with torch.no_grad():
        model.net[0].bias[0] = -50.0
    result = dead_units(model, (x, y))
    dead = dead_when(model.net[0](x)).all(0)
    assert bool(dead[0])
    assert result.counts == {"net.1": (int(dead.sum()), 4)}


def test_a_shared_activation_is_measured_at_each_call():
    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.act = nn.Linear(3, 4), nn.Linear(4, 5), nn.ReLU()

        def forward(self, x):
            return self.act(self.b(self.act(self.a(x))))

    torch.manual_seed(0)
    model = Shared().double()
    with torch.no_grad():
        model.b.bias[[0, 2, 4]] = -100.0
    x, y = data(30)
    result = dead_units(model, (x, y))
    first = (F.relu(model.a(x)) == 0).all(0)
    second = (F.relu(model.b(F.relu(model.a(x)))) == 0).all(0)
    assert result.counts == {"act[0]": (int(first.sum()), 4), "act[1]": (int(second.sum()), 5)}
    assert result.hooked_layers == 2


def test_functional_and_never_dead_activations_are_not_hooked():
    class Functional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 2)

        def forward(self, x):
            return F.relu(self.fc(x))

    x, y = data()
    for model in (Functional().double(), mlp(activation=nn.LeakyReLU), mlp(activation=nn.GELU)):
        with pytest.warns(UserWarning, match="F.relu"):
            result = dead_units(model, (x, y))
        assert result.hooked_layers == 0 and result.counts == {}
        assert math.isnan(result.fraction)
        assert "hooked_layers=0" in repr(result)


def test_hooks_removed_and_mode_restored_also_on_error():
    model = mlp()
    model.train()
    model.net[2].eval()
    modes = [m.training for m in model.modules()]
    x, y = data()
    dead_units(model, (x, y))
    bad = torch.randn(5, 7, dtype=torch.float64)
    with pytest.raises(RuntimeError):
        dead_units(model, [(x, y), (bad, y[:5])])
    assert [m.training for m in model.modules()] == modes
    assert all(not m._forward_hooks for m in model.modules())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert dead_units(model, (x, y), mode="train").hooked_layers == 1


class _WeightNormByHand(nn.Module):
    """w = g v / |v| per output row, from differentiable primitives.

    (torch's own weight_norm parametrization calls ``torch._weight_norm``, whose double backward
    gives an asymmetric, wrong Hessian on torch 2.13 CPU, so it cannot serve as a reference.)
    """

    def forward(self, g: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return g * v / v.norm(dim=1, keepdim=True)

    def right_inverse(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return w.norm(dim=1, keepdim=True), w


def test_parametrized_weights_belong_to_their_layer():
    model = mlp(seed=7)
    for layer in (model.net[0], model.net[2]):
        parametrize.register_parametrization(layer, "weight", _WeightNormByHand(), unsafe=True)
    x, y = data(30, seed=6)
    hessian = dense_hessian(model, x, y)
    owners = np.array(
        [
            name.split(".parametrizations.")[0]
            if ".parametrizations." in name
            else name.rsplit(".", 1)[0]
            for name, p in model.named_parameters()
            for _ in range(p.numel())
        ]
    )
    assert np.abs(hessian - hessian.T).max() < 1e-12
    result = layerwise(model, LOSS, (x, y), tol=1e-8, trace_hvps=100)
    assert [row.name for row in result.rows] == ["net.0", "net.2"]
    for row in result.rows:
        idx = np.flatnonzero(owners == row.name)
        block = hessian[np.ix_(idx, idx)]
        assert row.n_params == len(idx) == block.shape[0]
        assert row.lambda_max == pytest.approx(np.linalg.eigvalsh(block)[-1], rel=1e-6)
        assert row.trace == pytest.approx(np.trace(block), rel=1e-10)
