"""Step-size measurements (diagnostics.sharpness) against dense Hessians and real optimizer steps.

Every reference number is computed here: dense Hessians by torch.autograd.functional.hessian on
the flattened parameters (float64), eigenvalues by numpy's eigvalsh, the optimizers' updates by
transcribing their rules, and stability by spectral radii of the iteration matrices.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import Tensor, nn
from torch.func import functional_call

from ravine import optim
from ravine.diagnostics import hessian_extremes
from ravine.diagnostics.sharpness import (
    KINDS,
    OptimizerView,
    curvature_along_gradient,
    optimizer_view,
    preconditioned_extremes,
    stability_bound,
    step_size,
)

LOSS = nn.MSELoss()


def tiny_mlp(seed: int = 0) -> nn.Module:
    """3 -> 4 -> 2 with tanh: 26 parameters, non-quadratic (third derivatives do not vanish)."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()


def batch(n: int = 16, seed: int = 1) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g, dtype=torch.float64)
    return x, torch.randn(n, 2, generator=g, dtype=torch.float64)


def flat_params(model: nn.Module) -> Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def loss_at(model: nn.Module, data: tuple[Tensor, Tensor]) -> Callable[[Tensor], Tensor]:
    """θ (flat) -> loss, through functional_call (the model itself is not changed)."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    sizes = [p.numel() for p in model.parameters()]

    def f(theta: Tensor) -> Tensor:
        pieces = torch.split(theta, sizes)
        params = {n: t.view(s) for n, t, s in zip(names, pieces, shapes, strict=True)}
        return LOSS(functional_call(model, params, (data[0],)), data[1])

    return f


def dense(model: nn.Module, data: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    """Exact gradient and Hessian at the model's current parameters."""
    f = loss_at(model, data)
    theta = flat_params(model).requires_grad_(True)
    (g,) = torch.autograd.grad(f(theta), theta)
    h = torch.autograd.functional.hessian(f, flat_params(model))
    return g, h


def train(opt: torch.optim.Optimizer, model: nn.Module, steps: int, seed: int = 3) -> None:
    """A few real steps on changing minibatches, so the adaptive state is not trivial."""
    for k in range(steps):
        x, y = batch(8, seed + k)
        opt.zero_grad()
        LOSS(model(x), y).backward()
        opt.step()


ADAPTIVE = {
    "ravine-adagrad": lambda p: optim.AdaGrad(p, lr=0.05),
    "ravine-adagrad-foreach-flat": lambda p: optim.AdaGrad(p, lr=0.05, fused=False, flat=True),
    "ravine-rmsprop": lambda p: optim.RMSProp(p, lr=0.01, weight_decay=0.1),
    "ravine-rmsprop-flat": lambda p: optim.RMSProp(p, lr=0.01, flat=True),
    "ravine-rmsprop-nesterov": lambda p: optim.RMSPropNesterov(p, lr=0.01, momentum=0.8),
    "ravine-adam": lambda p: optim.Adam(p, lr=0.01, weight_decay=0.1),
    "ravine-adam-foreach": lambda p: optim.Adam(p, lr=0.01, fused=False),
    "ravine-adamw-flat": lambda p: optim.AdamW(p, lr=0.01, flat=True),
    "torch-adagrad": lambda p: torch.optim.Adagrad(p, lr=0.05, weight_decay=0.1),
    "torch-rmsprop": lambda p: torch.optim.RMSprop(p, lr=0.01),
    "torch-rmsprop-centered-momentum": lambda p: torch.optim.RMSprop(
        p, lr=0.01, centered=True, momentum=0.5
    ),
    "torch-adam": lambda p: torch.optim.Adam(p, lr=0.01, weight_decay=0.1),
    "torch-adam-amsgrad": lambda p: torch.optim.Adam(p, lr=0.01, amsgrad=True),
    "torch-adamw": lambda p: torch.optim.AdamW(p, lr=0.01),
}


# ---------------------------------------------------------------------------- recognition


@pytest.mark.parametrize("name", optim.names())
def test_every_ravine_optimizer_is_recognized(name: str) -> None:
    model = tiny_mlp()
    opt = optim.create(name, model.parameters(), lr=0.03)
    view = optimizer_view(opt)
    assert (view.kind, view.source, view.lr) == (name, "ravine", 0.03)
    assert view.adaptive == (name not in ("sgd", "momentum", "nesterov"))
    group = opt.param_groups[0]
    expected_momentum = group.get("momentum", group.get("betas", (0.0,))[0])
    assert view.momentum == expected_momentum
    if "betas" in group:
        assert (view.beta2, view.eps) == (group["betas"][1], group["eps"])
    if "rho" in group:
        assert view.beta2 == group["rho"]


TORCH_KINDS = [
    (lambda p: torch.optim.SGD(p, lr=0.1), "sgd", 0.0),
    (lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.7), "momentum", 0.7),
    (lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.7, dampening=0.2), "momentum", 0.7),
    (lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.7, nesterov=True), "nesterov", 0.7),
    (lambda p: torch.optim.Adagrad(p, lr=0.1), "adagrad", 0.0),
    (lambda p: torch.optim.RMSprop(p, lr=0.1), "rmsprop", 0.0),
    (lambda p: torch.optim.RMSprop(p, lr=0.1, momentum=0.4, centered=True), "rmsprop", 0.4),
    (lambda p: torch.optim.Adam(p, lr=0.1, betas=(0.8, 0.99)), "adam", 0.8),
    (lambda p: torch.optim.Adam(p, lr=0.1, decoupled_weight_decay=True), "adamw", 0.9),
    (lambda p: torch.optim.AdamW(p, lr=0.1), "adamw", 0.9),
]


@pytest.mark.parametrize(("make", "kind", "momentum"), TORCH_KINDS)
def test_every_torch_optimizer_is_recognized(make, kind: str, momentum: float) -> None:
    opt = make(tiny_mlp().parameters())
    view = optimizer_view(opt)
    assert (view.kind, view.source, view.lr, view.momentum) == (kind, "torch", 0.1, momentum)
    assert view.adaptive == (kind not in ("sgd", "momentum", "nesterov"))
    assert view.dampening == opt.param_groups[0].get("dampening", 0.0)


def test_all_kinds_are_covered_by_both_sources() -> None:
    assert set(optim.names()) == set(KINDS)
    assert {kind for _, kind, _ in TORCH_KINDS} == set(KINDS) - {"rmsprop-nesterov"}


@pytest.mark.parametrize(
    "make",
    [
        lambda p: torch.optim.LBFGS(p),
        lambda p: torch.optim.Adadelta(p),
        lambda p: type("MyOptimizer", (torch.optim.Optimizer,), {})(p, {"lr": 0.1}),
    ],
)
def test_unknown_optimizer_class_is_one_line_naming_it(make) -> None:
    opt = make(tiny_mlp().parameters())
    with pytest.raises(ValueError) as info:
        optimizer_view(opt)
    message = str(info.value)
    assert type(opt).__qualname__ in message and "\n" not in message


def test_view_errors_and_lr_override() -> None:
    model = tiny_mlp()
    groups = [
        {"params": [model[0].weight], "lr": 0.1},
        {"params": [p for n, p in model.named_parameters() if n != "0.weight"], "lr": 0.01},
    ]
    opt = optim.Momentum(groups, momentum=0.9)
    with pytest.raises(ValueError, match=r"param groups differ in lr \(\[0.1, 0.01\]\)"):
        optimizer_view(opt)
    assert optimizer_view(opt, lr=0.05).lr == 0.05
    with pytest.raises(ValueError, match="lr must be a finite number > 0, got -0.1"):
        optimizer_view(optim.SGD(model.parameters()), lr=-0.1)
    with pytest.raises(ValueError, match="maximize=True"):
        optimizer_view(torch.optim.Adam(model.parameters(), maximize=True))


def test_torch_adagrad_lr_decay_is_the_next_steps_rate() -> None:
    model = tiny_mlp()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.1, lr_decay=0.5)
    train(opt, model, 3)
    # The 4th step uses lr / (1 + 3 * lr_decay): check against the step it really takes.
    view = optimizer_view(opt)
    assert view.lr == pytest.approx(0.1 / 2.5, rel=1e-15)
    before = [p.detach().clone() for p in model.parameters()]
    x, y = batch(8, 20)
    opt.zero_grad()
    LOSS(model(x), y).backward()
    grads = [p.grad.clone() for p in model.parameters()]
    p_next = view.preconditioner(list(model.parameters()), grads)
    opt.step()
    for p, b, g, d in zip(model.parameters(), before, grads, p_next, strict=True):
        torch.testing.assert_close(p.detach() - b, -view.lr * g / d, rtol=1e-12, atol=1e-15)


# ---------------------------------------------------------------------------- preconditioner


def test_non_adaptive_or_fresh_optimizers_have_no_preconditioner() -> None:
    model = tiny_mlp()
    params = list(model.parameters())
    assert optimizer_view(optim.Nesterov(params, lr=0.1)).preconditioner(params) is None
    assert optimizer_view(optim.Adam(params)).preconditioner(params) is None
    # torch's Adagrad creates its state (step 0) at construction: still no adaptive state.
    assert optimizer_view(torch.optim.Adagrad(params)).preconditioner(params) is None
    other = nn.Parameter(torch.ones(2, dtype=torch.float64))
    opt = optim.RMSProp(params)
    train(opt, model, 1)
    with pytest.raises(ValueError, match=r"parameter 0 \(shape \(2,\)\) is not in"):
        optimizer_view(opt).preconditioner([other])


def _state(opt: torch.optim.Optimizer, p: Tensor, *names: str) -> list[Tensor]:
    return [opt.state[p][n].detach().clone() for n in names]


def _predicted_step(
    view: OptimizerView,
    opt: torch.optim.Optimizer,
    p: Tensor,
    before: Tensor,
    g: Tensor,
    pre: Tensor,
    saved: dict[str, Tensor],
) -> tuple[Tensor, Tensor]:
    """(what the step changed, what dividing by P predicts it changed): each rule transcribed."""
    group = next(gr for gr in opt.param_groups if any(q is p for q in gr["params"]))
    lr, decay = group["lr"], group["weight_decay"]
    if view.kind == "rmsprop-nesterov":
        # v ← αv - ε g / P  (g at the interim point the parameters held)
        (v,) = _state(opt, p, "velocity")
        return v - view.momentum * saved.get("velocity", 0 * v), -lr * (g + decay * before) / pre
    if view.kind == "rmsprop" and view.momentum:
        (b,) = _state(opt, p, "momentum_buffer")
        return b - view.momentum * saved.get("momentum_buffer", 0 * b), (g + decay * before) / pre
    if view.kind in ("adagrad", "rmsprop"):
        return p.detach() - before, -lr * (g + decay * before) / pre
    (m,) = _state(opt, p, "exp_avg")
    t = float(opt.state[p]["step"])
    m_hat = m / (1 - view.momentum**t)
    if view.kind == "adamw":
        return p.detach() - before, -lr * decay * before - lr * m_hat / pre
    return p.detach() - before, -lr * m_hat / pre


@pytest.mark.parametrize("name", list(ADAPTIVE))
def test_preconditioner_is_what_the_optimizer_divides_by(name: str) -> None:
    model = tiny_mlp()
    params = list(model.parameters())
    opt = ADAPTIVE[name](params)
    view = optimizer_view(opt)
    for step in range(4):
        x, y = batch(8, 10 + step)
        opt.zero_grad()
        LOSS(model(x), y).backward()
        grads = [p.grad.detach().clone() for p in params]
        before = [p.detach().clone() for p in params]
        saved = [
            {k: v.detach().clone() for k, v in opt.state[p].items() if isinstance(v, Tensor)}
            for p in params
        ]
        predicted_next = view.preconditioner(params, grads)
        if step == 0:
            assert view.preconditioner(params) is None
        opt.step()
        pre = view.preconditioner(params)
        for i, p in enumerate(params):
            # The denominator predicted before the step (folding in its gradient) is the one the
            # state holds after it ...
            torch.testing.assert_close(predicted_next[i], pre[i], rtol=1e-13, atol=0)
            # ... and it is what the step divided by.
            actual, predicted = _predicted_step(view, opt, p, before[i], grads[i], pre[i], saved[i])
            torch.testing.assert_close(actual, predicted, rtol=1e-10, atol=1e-16)


def _dense_preconditioned_top(h: Tensor, pre: list[Tensor]) -> float:
    s = torch.cat([p.reshape(-1) for p in pre]).rsqrt()
    return float(np.linalg.eigvalsh((s[:, None] * h * s[None, :]).numpy())[-1])


@pytest.mark.parametrize("name", list(ADAPTIVE))
def test_preconditioned_sharpness_equals_dense_eigenvalue(name: str) -> None:
    model = tiny_mlp()
    opt = ADAPTIVE[name](model.parameters())
    train(opt, model, 3)
    data = batch()
    pre = optimizer_view(opt).preconditioner(list(model.parameters()))
    _, h = dense(model, data)
    expected = _dense_preconditioned_top(h, pre)
    ext = preconditioned_extremes(model, LOSS, data, pre, tol=1e-10, max_hvps=26)
    assert ext.lambda_max == pytest.approx(expected, rel=1e-6)
    # Without preconditioning the top eigenvalue is different: the test can tell them apart.
    assert abs(float(np.linalg.eigvalsh(h.numpy())[-1]) - expected) > 1e-3 * abs(expected)


def test_preconditioned_extremes_rejects_bad_preconditioners() -> None:
    model, data = tiny_mlp(), batch()
    ones = [torch.ones_like(p) for p in model.parameters()]
    with pytest.raises(ValueError, match="one tensor per trainable parameter \\(4\\), got 3"):
        preconditioned_extremes(model, LOSS, data, ones[:3])
    ones[1] = -ones[1]
    with pytest.raises(ValueError, match="finite and > 0"):
        preconditioned_extremes(model, LOSS, data, ones)
    with pytest.raises(ValueError, match="1-D with 26 entries"):
        preconditioned_extremes(model, LOSS, data, torch.ones(25))


# ---------------------------------------------------------------------------- stability bounds


def iteration_matrix(kind: str, h: float, a: float) -> np.ndarray:
    """The linear map of one step on one eigen-direction (curvature·lr = h), built by applying
    the rule, transcribed from its algorithm box, to the basis vectors of its state."""

    def step(theta: float, v: float) -> tuple[float, float]:
        if kind == "momentum":  # Alg 8.2: v ← αv - εg; θ ← θ + v
            v = a * v - h * theta
            return theta + v, v
        if kind == "nesterov":  # Alg 8.3: g at θ + αv
            v = a * v - h * (theta + a * v)
            return theta + v, v
        if kind == "torch-nesterov":  # b ← αb + g; θ ← θ - ε(g + αb)   (state: εb)
            g = h * theta
            v = a * v + g
            return theta - (g + a * v), v
        if kind == "ema":  # Adam's first moment / dampened SGD: m ← βm + (1-β)g; θ ← θ - εm
            v = a * v + (1 - a) * h * theta
            return theta - v, v
        raise AssertionError(kind)

    columns = [step(1.0, 0.0), step(0.0, 1.0)]
    return np.array(columns).T


def spectral_radius(m: np.ndarray) -> float:
    return float(np.abs(np.linalg.eigvals(m)).max())


@pytest.mark.parametrize(
    ("make", "rule"),
    [
        (lambda p: optim.Momentum(p, lr=0.1, momentum=0.9), "momentum"),
        (lambda p: optim.Nesterov(p, lr=0.1, momentum=0.9), "nesterov"),
        (lambda p: optim.Nesterov(p, lr=0.1, momentum=0.5), "nesterov"),
        (lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True), "torch-nesterov"),
        (lambda p: optim.RMSPropNesterov(p, lr=0.1, momentum=0.7), "nesterov"),
        (lambda p: optim.Adam(p, lr=0.1), "ema"),
        (lambda p: torch.optim.AdamW(p, lr=0.1, betas=(0.5, 0.9)), "ema"),
    ],
)
def test_bound_is_where_the_iteration_matrix_becomes_unstable(make, rule: str) -> None:
    view = optimizer_view(make(tiny_mlp().parameters()))
    # λ is the (preconditioned) curvature of one direction; the bound is in lr, h = lr·λ.
    lam = 3.0
    h_bound = stability_bound(view, lam) * lam
    assert spectral_radius(iteration_matrix(rule, h_bound, view.momentum)) == pytest.approx(
        1.0, abs=1e-9
    )
    assert spectral_radius(iteration_matrix(rule, h_bound * (1 - 1e-6), view.momentum)) < 1
    assert spectral_radius(iteration_matrix(rule, h_bound * (1 + 1e-6), view.momentum)) > 1


def test_adam_bound_is_38_over_lr_at_beta1_0_9() -> None:
    view = optimizer_view(optim.Adam(tiny_mlp().parameters(), lr=0.1, betas=(0.9, 0.999)))
    # Cohen et al. (2022): preconditioned sharpness 38/ε; (2 + 2β₁)/(1 - β₁) at β₁ = 0.9.
    assert stability_bound(view, 38 / 0.1) == pytest.approx(0.1, rel=1e-12)
    assert stability_bound(view, -1.0) == math.inf
    assert stability_bound(None, 4.0) == 0.5
    with pytest.raises(ValueError, match="sharpness must be a finite number, got nan"):
        stability_bound(view, float("nan"))


def quadratic(seed: int = 0) -> tuple[Tensor, Tensor, float]:
    """A, θ* and λmax(A) for f(θ) = ½ (θ-θ*)ᵀ A (θ-θ*), A = Q diag(λ) Qᵀ."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(4, 4, generator=g, dtype=torch.float64))
    a = q @ torch.diag(torch.tensor([0.3, 1.0, 2.5, 4.0], dtype=torch.float64)) @ q.T
    return a, torch.randn(4, generator=g, dtype=torch.float64), float(np.linalg.eigvalsh(a)[-1])


@pytest.mark.parametrize(
    "make",
    [
        lambda p, lr: optim.SGD(p, lr=lr),
        lambda p, lr: optim.Momentum(p, lr=lr, momentum=0.9),
        lambda p, lr: optim.Nesterov(p, lr=lr, momentum=0.9),
        lambda p, lr: optim.Nesterov(p, lr=lr, momentum=0.6, fused=False),
        lambda p, lr: torch.optim.SGD(p, lr=lr, momentum=0.8, dampening=0.3),
        lambda p, lr: torch.optim.SGD(p, lr=lr, momentum=0.8, nesterov=True),
    ],
)
def test_optimizer_is_stable_just_below_the_bound_and_diverges_just_above(make) -> None:
    a, target, lam = quadratic()
    view = optimizer_view(make([nn.Parameter(torch.zeros(4, dtype=torch.float64))], 1.0))
    bound = stability_bound(view, lam)
    start = torch.zeros(4, dtype=torch.float64)
    distance0 = float(torch.linalg.vector_norm(start - target))
    final = {}
    for factor in (0.99, 1.01):
        theta = nn.Parameter(start.clone())
        opt = make([theta], factor * bound)
        for _ in range(1500):
            # The exact gradient at the parameters (the interim point for Nesterov).
            theta.grad = a @ (theta.detach() - target)
            opt.step()
        with optim.true_params(opt):
            final[factor] = float(torch.linalg.vector_norm(theta.detach() - target))
    assert final[0.99] < 1e-3 * distance0
    assert final[1.01] > 1e3 * distance0


# ---------------------------------------------------------------------------- along the gradient


def test_curvature_along_gradient_is_exact() -> None:
    model, data = tiny_mlp(), batch()
    g, h = dense(model, data)
    lr = 0.3
    along = curvature_along_gradient(model, LOSS, data, lr)
    gtg, ghg = float(g @ g), float(g @ h @ g)
    assert along.gTg == pytest.approx(gtg, rel=1e-12)
    assert along.gHg == pytest.approx(ghg, rel=1e-10)
    assert (along.gTd, along.dHd) == (along.gTg, along.gHg)
    assert along.first_order == pytest.approx(-lr * gtg, rel=1e-12)
    assert along.second_order == pytest.approx(0.5 * lr**2 * ghg, rel=1e-10)
    assert along.predicted_change == along.first_order + along.second_order
    assert along.lr_star == pytest.approx(gtg / ghg, rel=1e-10)
    assert along.loss == pytest.approx(float(loss_at(model, data)(flat_params(model))), rel=1e-14)
    assert along.to_dict()["along"] == "gradient" and along.hvps == 1

    d = torch.linspace(-1, 1, 26, dtype=torch.float64)
    pieces = list(torch.split(d, [p.numel() for p in model.parameters()]))
    shaped = [t.view_as(p) for t, p in zip(pieces, model.parameters(), strict=True)]
    for direction in (d, shaped):
        along_d = curvature_along_gradient(model, LOSS, data, lr, direction=direction)
        assert along_d.gTd == pytest.approx(float(g @ d), rel=1e-12)
        assert along_d.dHd == pytest.approx(float(d @ h @ d), rel=1e-10)
        assert along_d.lr_star == pytest.approx(float(g @ d) / float(d @ h @ d), rel=1e-10)
        assert along_d.second_order == pytest.approx(0.5 * lr**2 * float(d @ h @ d), rel=1e-10)
        assert (along_d.gTg, along_d.along) == (along.gTg, "direction")


def test_second_order_prediction_error_is_third_order() -> None:
    model, data = tiny_mlp(), batch()
    f = loss_at(model, data)
    theta = flat_params(model)
    g, _ = dense(model, data)
    base = curvature_along_gradient(model, LOSS, data, 1.0)
    errors = []
    for eps in (0.1 * base.lr_star, 0.05 * base.lr_star, 0.025 * base.lr_star):
        predicted = curvature_along_gradient(model, LOSS, data, eps).predicted_change
        actual = float(f(theta - eps * g) - f(theta))
        errors.append(abs(actual - predicted))
        assert abs(actual - predicted) < 0.05 * abs(actual)
    # Halving ε divides an O(ε³) error by 8.
    for big, small in zip(errors, errors[1:], strict=False):
        assert 6.0 < big / small < 10.0


def test_no_upward_curvature_along_the_gradient_means_infinite_lr_star() -> None:
    model, data = tiny_mlp(), batch()
    concave = lambda out, y: -((out - y) ** 2).mean()  # noqa: E731
    along = curvature_along_gradient(model, concave, data, 0.1)
    assert along.gHg < 0 and along.lr_star == math.inf


def test_curvature_along_gradient_errors() -> None:
    model, data = tiny_mlp(), batch()
    with pytest.raises(ValueError, match="lr must be a finite number > 0, got 0"):
        curvature_along_gradient(model, LOSS, data, 0)
    with pytest.raises(ValueError, match="direction must be 1-D with 26 entries"):
        curvature_along_gradient(model, LOSS, data, 0.1, direction=torch.ones(3))


# ---------------------------------------------------------------------------- step_size

CORE = {
    "optimizer",
    "adaptive",
    "sharpness",
    "sharpness_kind",
    "lanczos_converged",
    "lr_bound",
    "gTg",
    "gHg",
    "lr_star",
    "loss",
    "hvps",
}
WITH_LR = CORE | {"lr", "momentum", "lr_ratio", "first_order", "second_order", "predicted_change"}


def test_step_size_without_optimizer_has_only_curvature_keys() -> None:
    model, data = tiny_mlp(), batch()
    g, h = dense(model, data)
    out = step_size(model, LOSS, data, tol=1e-10, max_hvps=26)
    assert set(out) == CORE
    lam = float(np.linalg.eigvalsh(h.numpy())[-1])
    assert out["sharpness"] == pytest.approx(lam, rel=1e-8)
    assert out["lr_bound"] == pytest.approx(2 / lam, rel=1e-8)
    assert (out["optimizer"], out["sharpness_kind"], out["adaptive"]) == ("none", "hessian", False)
    assert out["lr_star"] == pytest.approx(float(g @ g) / float(g @ h @ g), rel=1e-10)
    with_lr = step_size(model, LOSS, data, lr=0.2, tol=1e-10, max_hvps=26)
    assert set(with_lr) == WITH_LR
    assert with_lr["lr_ratio"] == pytest.approx(0.2 * lam / 2, rel=1e-8)
    with pytest.raises(ValueError, match="lr must be a finite number > 0, got -1"):
        step_size(model, LOSS, data, lr=-1)


def test_step_size_for_nesterov_uses_its_bound() -> None:
    model, data = tiny_mlp(), batch()
    opt = optim.Nesterov(model.parameters(), lr=0.1, momentum=0.9)
    train(opt, model, 2)
    g, h = dense(model, data)
    out = step_size(model, LOSS, data, opt, tol=1e-10, max_hvps=26)
    assert set(out) == WITH_LR
    lam = float(np.linalg.eigvalsh(h.numpy())[-1])
    assert (out["optimizer"], out["lr"], out["momentum"]) == ("nesterov", 0.1, 0.9)
    assert out["sharpness"] == pytest.approx(lam, rel=1e-8)
    assert out["lr_bound"] == pytest.approx(2 * 1.9 / (2.8 * lam), rel=1e-8)
    assert out["lr_ratio"] == pytest.approx(0.1 / out["lr_bound"], rel=1e-14)
    assert out["first_order"] == pytest.approx(-0.1 * float(g @ g), rel=1e-12)
    assert out["second_order"] == pytest.approx(0.005 * float(g @ h @ g), rel=1e-10)
    # Lanczos (the same run as hessian_extremes with this seed) plus one product for Hg.
    lanczos = hessian_extremes(model, LOSS, data, tol=1e-10, max_hvps=26, which="max")
    assert out["hvps"] == lanczos.hvps + 1
    assert step_size(model, LOSS, data, opt, lr=0.3)["lr"] == 0.3


@pytest.mark.parametrize("stepped", [True, False])
def test_step_size_for_adam_is_preconditioned(stepped: bool) -> None:
    model, data = tiny_mlp(), batch()
    opt = optim.Adam(model.parameters(), lr=0.01)
    if stepped:
        train(opt, model, 3)
    g, h = dense(model, data)
    out = step_size(model, LOSS, data, opt, tol=1e-10, max_hvps=26)
    assert set(out) == WITH_LR | {"preconditioner", "gTd", "dHd"}
    if stepped:
        pre = torch.cat(
            [p.reshape(-1) for p in optimizer_view(opt).preconditioner(list(model.parameters()))]
        )
    else:
        # No state yet: Adam's first step divides by |g| + δ (v̂ = g⊙g after bias correction).
        pre = g.abs() + 1e-8
    assert out["preconditioner"] == ("state" if stepped else "first-step")
    assert out["sharpness_kind"] == "preconditioned" and out["adaptive"]
    assert out["sharpness"] == pytest.approx(_dense_preconditioned_top(h, [pre]), rel=1e-6)
    assert out["lr_bound"] == pytest.approx(3.8 / (0.1 * out["sharpness"]), rel=1e-12)
    d = g / pre
    assert out["gTd"] == pytest.approx(float(g @ d), rel=1e-12)
    assert out["dHd"] == pytest.approx(float(d @ h @ d), rel=1e-8)
    assert out["first_order"] == pytest.approx(-0.01 * float(g @ d), rel=1e-12)
    assert out["lr_star"] == pytest.approx(float(g @ d) / float(d @ h @ d), rel=1e-8)
    assert out["gHg"] == pytest.approx(float(g @ h @ g), rel=1e-10)


def test_step_size_is_reproducible_and_refuses_foreign_parameters() -> None:
    model, data = tiny_mlp(), batch(64)
    opt = torch.optim.RMSprop(model.parameters(), lr=0.01)
    train(opt, model, 2)
    first = step_size(model, LOSS, data, opt, seed=5, max_hvps=8)
    assert first == step_size(model, LOSS, data, opt, seed=5, max_hvps=8)
    for make in (optim.Adam, optim.SGD):
        partial = make(list(model.parameters())[1:])
        with pytest.raises(ValueError, match="parameter '0.weight' of the model is not in the o"):
            step_size(model, LOSS, data, partial)
