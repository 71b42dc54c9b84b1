"""diagnostics.diagnose: the one call, checked against dense Hessians on small problems."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ravine import optim
from ravine.diagnostics import Budget, diagnose

F = nn.functional


def _problem(seed: int = 0, n: int = 96):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g, dtype=torch.float64)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).double()
    return net, x, y


def _dense(net: nn.Module, x: torch.Tensor, y: torch.Tensor):
    params = [p for p in net.parameters()]
    shapes = [p.shape for p in params]
    flat = torch.cat([p.detach().reshape(-1) for p in params])

    def loss_of(theta):
        out, i = [], 0
        for s in shapes:
            k = int(np.prod(s))
            out.append(theta[i : i + k].reshape(s))
            i += k
        names = [n for n, _ in net.named_parameters()]
        result = torch.func.functional_call(net, dict(zip(names, out, strict=True)), (x,))
        return F.cross_entropy(result, y)

    h = torch.autograd.functional.hessian(loss_of, flat).numpy()
    g = torch.autograd.functional.jacobian(loss_of, flat).numpy()
    return h, g


def test_lr_above_the_sgd_bound_is_the_top_finding_with_exact_numbers():
    net, x, y = _problem()
    h, g = _dense(net, x, y)
    eig = np.linalg.eigvalsh(h)
    bound = 2 / eig[-1]
    opt = optim.SGD(net.parameters(), lr=3 * bound)
    d = diagnose(net, F.cross_entropy, (x, y), optimizer=opt, batch_size=32, seed=1)
    assert d.top.code == "lr-too-high"
    assert d.numbers["sharpness"] == pytest.approx(eig[-1], rel=1e-4)
    assert d.numbers["lambda_min"] == pytest.approx(eig[0], rel=1e-2, abs=1e-6)
    assert d.numbers["lr_bound"] == pytest.approx(bound, rel=1e-4)
    assert d.numbers["gHg"] == pytest.approx(g @ h @ g, rel=1e-8)
    assert d.numbers["lr_star"] == pytest.approx((g @ g) / (g @ h @ g), rel=1e-8)
    assert 0 < d.top.fix["lr"] < bound
    # the same point with a safe learning rate: no step-size finding at all
    safe = diagnose(
        net, F.cross_entropy, (x, y), optimizer=optim.SGD(net.parameters(), lr=0.5 * bound)
    )
    assert "lr-too-high" not in safe.codes and "lr-too-low" not in safe.codes


def test_limiting_layer_is_the_block_holding_the_sharpest_direction():
    net, x, y = _problem(seed=3)
    with torch.no_grad():
        net[2].weight.mul_(6.0)  # the output layer's curvature dominates the first layer's
    h, _ = _dense(net, x, y)
    top = np.linalg.eigh(h)[1][:, -1]
    sizes = [p.numel() for p in net.parameters()]
    owners = ["0", "0", "2", "2"]
    mass: dict[str, float] = {}
    start = 0
    for owner, k in zip(owners, sizes, strict=True):
        mass[owner] = mass.get(owner, 0.0) + float(np.sum(top[start : start + k] ** 2))
        start += k
    d = diagnose(net, F.cross_entropy, (x, y), lr=0.1)
    assert d.numbers["limiting_layer"] == max(mass, key=mass.__getitem__)


def test_adam_is_judged_by_the_preconditioned_sharpness():
    net, x, y = _problem(seed=2)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()
    d = diagnose(net, F.cross_entropy, (x, y), optimizer=opt)
    assert d.numbers["sharpness_kind"] == "preconditioned"
    assert d.numbers["optimizer"] == "adam"
    # the preconditioned operator, densely: P^-1/2 H P^-1/2 with P = sqrt(v̂) + eps
    h, _ = _dense(net, x, y)
    state = [opt.state[p] for p in net.parameters()]
    bc = 1 - 0.999 ** float(state[0]["step"])
    p = torch.cat([(s["exp_avg_sq"] / bc).sqrt().add(1e-8).reshape(-1) for s in state]).numpy()
    scaled = h / np.sqrt(np.outer(p, p))
    assert d.numbers["sharpness"] == pytest.approx(np.linalg.eigvalsh(scaled)[-1], rel=1e-3)
    assert d.numbers["lr_bound"] == pytest.approx(38 / d.numbers["sharpness"], rel=1e-12)


def test_training_state_is_untouched():
    net, x, y = _problem()
    net.train()
    opt = optim.Nesterov(net.parameters(), lr=0.05, momentum=0.9)
    for _ in range(2):
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()
    params = [p.detach().clone() for p in net.parameters()]
    state = {k: v.clone() if torch.is_tensor(v) else v for k, v in opt.state_dict().items()}
    rng = torch.get_rng_state()
    diagnose(net, F.cross_entropy, (x, y), optimizer=opt, layers=True)
    assert all(torch.equal(a, p) for a, p in zip(params, net.parameters(), strict=True))
    assert torch.equal(rng, torch.get_rng_state())
    assert net.training
    assert str(state) == str(opt.state_dict())


def test_same_numbers_from_tensors_dataset_and_loader():
    net, x, y = _problem()
    a = diagnose(net, F.cross_entropy, (x, y), lr=0.1, batch_size=16)
    b = diagnose(net, F.cross_entropy, TensorDataset(x, y), lr=0.1, batch_size=16)
    c = diagnose(net, F.cross_entropy, DataLoader(TensorDataset(x, y), batch_size=16), lr=0.1)
    for key in ("loss", "sharpness", "b_simple", "lr_ratio"):
        assert a.numbers[key] == pytest.approx(b.numbers[key], rel=1e-12)
        assert a.numbers[key] == pytest.approx(c.numbers[key], rel=1e-10)
    assert c.numbers["batch_size"] == 16  # read from the loader


def test_budget_skips_stages_and_says_so():
    net, x, y = _problem()
    d = diagnose(net, F.cross_entropy, (x, y), lr=0.1, budget=2)
    assert "lambda_max" not in d.numbers
    assert any("Hessian-vector products" in s for s in d.skipped)
    assert d.numbers["hvps"] <= 2
    assert Budget.of({"hvps": 5, "seconds": 1.5}) == Budget(hvps=5, seconds=1.5)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"budget": 0}, "budget must be"),
        ({"budget": {"hvp": 3}}, "budget keys"),
        ({"history": {"loss_histroy": [1.0]}}, "history keys"),
        ({"mode": "training"}, "mode"),
        ({"examples": 1}, "examples"),
    ],
)
def test_bad_arguments_are_one_line_errors(kwargs, message):
    net, x, y = _problem()
    with pytest.raises(ValueError, match=message) as info:
        diagnose(net, F.cross_entropy, (x, y), **kwargs)
    assert "\n" not in str(info.value)


def test_history_feeds_the_clipping_rule_and_json_round_trips():
    net, x, y = _problem()
    d = diagnose(
        net,
        F.cross_entropy,
        (x, y),
        optimizer=optim.SGD(net.parameters(), lr=1e-3),
        history={"clip_fraction": 0.9, "clip_norm": 1.0, "grad_norm_history": [5.0] * 10},
    )
    assert "clipping-always" in d.codes
    text = json.dumps(d.to_dict(), allow_nan=False)
    assert "clipping-always" in text
    assert math.isfinite(d.numbers["seconds"])
