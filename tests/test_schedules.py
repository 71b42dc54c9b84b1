"""Tests for ravine.schedules: exact rates, warmup composition, resume, validation, plots."""

from __future__ import annotations

import copy
import io
import math
import struct
import warnings
from fractions import Fraction

import pytest
import torch
from torch.optim.lr_scheduler import (
    ConstantLR,
    CosineAnnealingLR,
    ExponentialLR,
    LambdaLR,
    MultiplicativeLR,
    ReduceLROnPlateau,
    StepLR,
)

from ravine import optim, schedules
from ravine.schedules import (
    InverseTime,
    LinearDecay,
    LinearWarmup,
    inverse_time,
    linear_decay,
    linear_warmup,
)

BASE_LRS = (0.1, 0.03)


def make_optimizer(lrs=BASE_LRS, cls=torch.optim.SGD, **hp) -> torch.optim.Optimizer:
    groups = [{"params": [torch.zeros(3, requires_grad=True)], "lr": lr} for lr in lrs]
    return cls(groups, **hp)


def run(opt: torch.optim.Optimizer, sched, steps: int) -> list[list[float]]:
    """Rates in force at steps 0..steps-1 of an ordinary opt.step(); sched.step() loop."""
    rates = []
    for _ in range(steps):
        rates.append([group["lr"] for group in opt.param_groups])
        opt.step()
        sched.step()
    return rates


def frac(x: float) -> Fraction:
    return Fraction(x)


def close(a: float, b: Fraction) -> bool:
    return math.isclose(a, float(b), rel_tol=1e-14, abs_tol=0.0)


# ---------------------------------------------------------------------------------------
# Exact values of the lecture's rules


def linear_closed_form(k: int, alpha: float, t: int, beta: float) -> Fraction:
    if k > t:
        return frac(beta)
    return (1 - Fraction(k, t)) * frac(alpha) + Fraction(k, t) * frac(beta)


@pytest.mark.parametrize("final_lr", [None, 0.002, 0.0])
def test_linear_decay_exact_values(final_lr):
    t = 10
    opt = make_optimizer()
    sched = LinearDecay(opt, decay_steps=t, final_lr=final_lr)
    rates = run(opt, sched, 2 * t + 1)
    for k in (0, 1, t // 2, t, 2 * t):
        for g, alpha in enumerate(BASE_LRS):
            beta = 0.01 * alpha if final_lr is None else final_lr
            pure = linear_decay(k, lr=alpha, decay_steps=t, final_lr=final_lr)
            assert rates[k][g] == pure
            assert close(pure, linear_closed_form(k, alpha, t, beta))
    for g, alpha in enumerate(BASE_LRS):
        beta = 0.01 * alpha if final_lr is None else final_lr
        assert rates[0][g] == alpha
        assert rates[t][g] == beta
        assert rates[2 * t][g] == beta


def test_linear_decay_pure_function_matches_closed_form_everywhere():
    alpha, beta, t = 0.37, 0.011, 7
    for k in range(3 * t):
        assert close(
            linear_decay(k, lr=alpha, decay_steps=t, final_lr=beta),
            linear_closed_form(k, alpha, t, beta),
        )


def test_linear_decay_lecture_defaults():
    opt = make_optimizer()
    sched = LinearDecay(opt, steps_per_epoch=3)
    assert sched.decay_steps == 100 * 3
    assert sched.final_lrs == [0.01 * lr for lr in BASE_LRS]
    # An explicit t wins over the steps_per_epoch default.
    assert LinearDecay(make_optimizer(), 17, steps_per_epoch=3).decay_steps == 17


@pytest.mark.parametrize("tau", [4, 2.5])
def test_inverse_time_exact_values(tau):
    opt = make_optimizer()
    sched = InverseTime(opt, decay_steps=tau)
    rates = run(opt, sched, 9)
    for k in (0, 1, 2, 4, 8):
        for g, alpha in enumerate(BASE_LRS):
            pure = inverse_time(k, lr=alpha, decay_steps=tau)
            assert rates[k][g] == pure
            assert close(pure, frac(alpha) / (1 + Fraction(k) / frac(tau)))
    if tau == 4:  # k = tau, 2 tau: the rate has halved, then dropped to a third
        for g, alpha in enumerate(BASE_LRS):
            assert close(rates[4][g], frac(alpha) / 2)
            assert close(rates[8][g], frac(alpha) / 3)


def test_linear_warmup_pure_function():
    alpha, w = 0.3, 4
    for k in range(w):
        expected = frac(alpha) * Fraction(k + 1, w + 1)
        assert close(linear_warmup(k, lr=alpha, warmup_steps=w), expected)
    assert linear_warmup(w, lr=alpha, warmup_steps=w) == alpha
    assert linear_warmup(3 * w, lr=alpha, warmup_steps=w) == alpha


def test_schedules_drive_ravine_optimizers():
    """The scheduled rate is the rate SGD actually uses: theta_{k+1} = theta_k - eps_k g."""
    param = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    grad = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64)
    opt = optim.SGD([param], lr=0.2)
    sched = schedules.create("linear-decay", opt, warmup_steps=3, decay_steps=10)
    expected = torch.zeros(4, dtype=torch.float64)
    for _ in range(14):
        eps = opt.param_groups[0]["lr"]
        opt.zero_grad()
        (param * grad).sum().backward()
        opt.step()
        sched.step()
        expected -= eps * grad
        torch.testing.assert_close(param.detach(), expected, rtol=0, atol=1e-15)


@pytest.mark.parametrize("opt_name", optim.names())
def test_every_ravine_optimizer_follows_the_schedule(opt_name):
    model = torch.nn.Linear(3, 2)
    opt = optim.create(opt_name, model.parameters(), lr=0.05)
    sched = schedules.create("inverse-time", opt, warmup_steps=2, decay_steps=5)
    rates = []
    for _ in range(8):
        rates.append(opt.param_groups[0]["lr"])
        opt.zero_grad()
        model(torch.ones(4, 3)).sum().backward()
        opt.step()
        sched.step()
    expected = [linear_warmup(k, lr=0.05, warmup_steps=2) for k in range(2)]
    expected += [inverse_time(k, lr=0.05, decay_steps=5) for k in range(6)]
    assert rates == expected


# ---------------------------------------------------------------------------------------
# Warmup composition


def standalone(name: str, opt, warmup: int):
    """The schedule create(name, warmup_steps=warmup, ...) should run after its warmup."""
    return {
        "constant": lambda: LambdaLR(opt, lambda k: 1.0),
        "linear-decay": lambda: LinearDecay(opt, 20 - warmup),
        "inverse-time": lambda: InverseTime(opt, 3),
        "step": lambda: StepLR(opt, 4, 0.5),
        "cosine": lambda: CosineAnnealingLR(opt, 30 - warmup, 0.004),
        # per-step calls alone never reduce the rate: constant after the warmup
        "reduce-on-plateau": lambda: schedules.EpochStepped(ReduceLROnPlateau(opt, patience=2)),
    }[name]()


CREATE_KW = {
    "constant": {},
    "linear-decay": {"decay_steps": 20},
    "inverse-time": {"decay_steps": 3},
    "step": {"step_size": 4, "gamma": 0.5},
    "cosine": {"eta_min": 0.004},
    "reduce-on-plateau": {"patience": 2},
}


@pytest.mark.parametrize("name", schedules.names())
@pytest.mark.parametrize("warmup", [1, 5])
def test_warmup_then_schedule_is_exact(name, warmup):
    steps = 40
    opt = make_optimizer()
    sched = schedules.create(name, opt, warmup_steps=warmup, total_steps=30, **CREATE_KW[name])
    rates = run(opt, sched, steps)
    ref_opt = make_optimizer()
    reference = run(ref_opt, standalone(name, ref_opt, warmup), steps - warmup)
    for k in range(warmup):
        for g, alpha in enumerate(BASE_LRS):
            assert close(rates[k][g], frac(alpha) * Fraction(k + 1, warmup + 1))
    assert rates[warmup:] == reference


@pytest.mark.parametrize(
    "make_inner",
    [
        lambda opt: ExponentialLR(opt, 0.9),
        lambda opt: MultiplicativeLR(opt, lambda k: 0.8),
        lambda opt: ConstantLR(opt, factor=0.5, total_iters=3),
        lambda opt: CosineAnnealingLR(opt, 6, 0.001),
    ],
    ids=["exponential", "multiplicative", "constant-factor", "cosine"],
)
def test_linear_warmup_wraps_any_torch_schedule(make_inner):
    """Recursive schedules too; SequentialLR restarts MultiplicativeLR from the wrong rate."""
    warmup, steps = 4, 20
    opt = make_optimizer()
    sched = LinearWarmup(make_inner(opt), warmup)
    rates = run(opt, sched, steps)
    ref_opt = make_optimizer()
    ref_sched = make_inner(ref_opt)
    start = [group["lr"] for group in ref_opt.param_groups]
    reference = run(ref_opt, ref_sched, steps - warmup)
    for k in range(warmup):
        for g in range(len(BASE_LRS)):
            assert close(rates[k][g], frac(start[g]) * Fraction(k + 1, warmup + 1))
    assert rates[warmup:] == reference


def test_create_linear_decay_counts_t_from_the_first_step():
    opt = make_optimizer()
    sched = schedules.create("linear-decay", opt, warmup_steps=4, decay_steps=12, final_lr=0.001)
    rates = run(opt, sched, 14)
    assert [r[0] for r in rates[4:]] == [
        linear_decay(k, lr=0.1, decay_steps=8, final_lr=0.001) for k in range(10)
    ]
    assert rates[12] == [0.001, 0.001]


def test_create_defaults_from_steps_per_epoch_and_total_steps():
    lecture = schedules.create("linear-decay", make_optimizer(), steps_per_epoch=5, total_steps=50)
    assert lecture.decay_steps == 500
    assert schedules.create("linear-decay", make_optimizer(), total_steps=50).decay_steps == 50
    assert schedules.create("inverse-time", make_optimizer(), steps_per_epoch=7).decay_steps == 7
    cosine = schedules.create("cosine", make_optimizer(), warmup_steps=10, total_steps=50)
    assert cosine.schedule.T_max == 40


# ---------------------------------------------------------------------------------------
# Resume


def roundtrip(obj_state: dict) -> dict:
    """Through torch.save / torch.load(weights_only=True), as a checkpoint would go."""
    buffer = io.BytesIO()
    torch.save(obj_state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("name", schedules.names())
@pytest.mark.parametrize("warmup", [0, 6])
@pytest.mark.parametrize("stop", [3, 11])
def test_state_dict_resume_gives_identical_rates(name, warmup, stop):
    kw = dict(warmup_steps=warmup, total_steps=30, **CREATE_KW[name])
    steps = 40

    def fresh():
        model = torch.nn.Linear(3, 2)
        opt = optim.create("momentum", model.parameters(), lr=0.1)
        return model, opt, schedules.create(name, opt, **kw)

    def train(model, opt, sched, n):
        rates = []
        for _ in range(n):
            rates.append(opt.param_groups[0]["lr"])
            opt.zero_grad()
            model(torch.ones(2, 3)).square().sum().backward()
            opt.step()
            sched.step()
        return rates

    torch.manual_seed(0)
    model, opt, sched = fresh()
    uninterrupted = train(model, opt, sched, steps)

    torch.manual_seed(0)
    model, opt, sched = fresh()
    first = train(model, opt, sched, stop)
    saved = roundtrip(
        {"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()}
    )
    model, opt, sched = fresh()
    model.load_state_dict(saved["model"])
    opt.load_state_dict(saved["opt"])
    sched.load_state_dict(saved["sched"])
    assert first + train(model, opt, sched, steps - stop) == uninterrupted


# ---------------------------------------------------------------------------------------
# Validation


def two_group_opt():
    return make_optimizer((0.1, 0.01))


BAD = [
    (lambda: LinearDecay(make_optimizer(), 0), "decay_steps must be an integer >= 1, got 0"),
    (lambda: LinearDecay(make_optimizer(), -5), "decay_steps"),
    (lambda: LinearDecay(make_optimizer(), 2.5), "decay_steps"),
    (lambda: LinearDecay(make_optimizer(), True), "decay_steps"),
    (lambda: LinearDecay(make_optimizer()), "decay_steps .*steps_per_epoch"),
    (lambda: LinearDecay(make_optimizer(), steps_per_epoch=0), "steps_per_epoch"),
    (lambda: LinearDecay(make_optimizer(), 10, final_lr=-0.001), "final_lr must be >= 0"),
    (lambda: LinearDecay(make_optimizer(), 10, final_lr=math.nan), "final_lr"),
    (lambda: LinearDecay(make_optimizer(), 10, final_lr=0.5), "final_lr must be <= the base lr"),
    (lambda: LinearDecay(two_group_opt(), 10, final_lr=0.05), "final_lr.*param group 1"),
    (lambda: InverseTime(make_optimizer(), 0), "decay_steps must be > 0"),
    (lambda: InverseTime(make_optimizer(), -2.0), "decay_steps"),
    (lambda: InverseTime(make_optimizer(), math.inf), "decay_steps"),
    (lambda: LinearWarmup(LambdaLR(make_optimizer(), lambda k: 1.0), 0), "warmup_steps"),
    (lambda: linear_decay(-1, lr=0.1, decay_steps=5), "step must be an integer >= 0"),
    (lambda: linear_decay(0, lr=-0.1, decay_steps=5), "lr must be >= 0"),
    (lambda: linear_decay(0, lr=0.1, decay_steps=0), "decay_steps"),
    (lambda: linear_decay(0, lr=0.1, decay_steps=5, final_lr=0.2), "final_lr must be in"),
    (lambda: inverse_time(0, lr=0.1, decay_steps=0.0), "decay_steps"),
    (lambda: linear_warmup(0, lr=0.1, warmup_steps=0), "warmup_steps"),
    (lambda: schedules.create("cosin", make_optimizer(), total_steps=9), "did you mean 'cosine'"),
    (lambda: schedules.create("step", make_optimizer(), step_sise=3), "did you mean 'step_size'"),
    (lambda: schedules.create("cosine", make_optimizer(), T_mx=3), "did you mean 'T_max'"),
    (lambda: schedules.create("constant", make_optimizer(), decay_steps=3), "unknown option"),
    (
        lambda: schedules.create("linear-decay", make_optimizer(), warmup_steps=10, decay_steps=10),
        "warmup_steps must be < decay_steps=10",
    ),
    (
        lambda: schedules.create("cosine", make_optimizer(), warmup_steps=10, total_steps=10),
        "warmup_steps must be < total_steps=10",
    ),
    (lambda: schedules.create("constant", make_optimizer(), warmup_steps=-1), "warmup_steps"),
    (lambda: schedules.create("constant", make_optimizer(), total_steps=0), "total_steps"),
    (lambda: schedules.create("constant", make_optimizer(), steps_per_epoch=0), "steps_per_epoch"),
    (lambda: schedules.create("linear-decay", make_optimizer()), "linear-decay needs"),
    (lambda: schedules.create("inverse-time", make_optimizer()), "inverse-time needs"),
    (lambda: schedules.create("step", make_optimizer()), "step needs step_size"),
    (lambda: schedules.create("step", make_optimizer(), step_size=0), "step_size"),
    (lambda: schedules.create("step", make_optimizer(), step_size=3, gamma=0), "gamma"),
    (lambda: schedules.create("step", make_optimizer(), step_size=3, gamma=1.5), "gamma"),
    (lambda: schedules.create("cosine", make_optimizer()), "cosine needs T_max"),
    (lambda: schedules.create("cosine", make_optimizer(), T_max=0), "T_max"),
    (lambda: schedules.create("cosine", make_optimizer(), T_max=5, eta_min=-1e-3), "eta_min"),
    (
        lambda: schedules.create("cosine", two_group_opt(), T_max=5, eta_min=0.05),
        "eta_min.*param group 1",
    ),
    (lambda: schedules.plot("constant", 0, "unused.png"), "steps"),
    (lambda: schedules.plot([], 5, "unused.png"), "at least one"),
    (lambda: schedules.trace(LambdaLR(make_optimizer(), lambda k: 1.0), 0), "steps"),
]


@pytest.mark.parametrize(("build", "message"), BAD, ids=[m for _, m in BAD])
def test_bad_values_raise_with_their_name(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_non_schedules_are_rejected():
    opt = make_optimizer()
    with pytest.raises(TypeError, match="ReduceLROnPlateau"):
        LinearWarmup(ReduceLROnPlateau(opt), 3)
    with pytest.raises(TypeError, match="not a torch.optim.Optimizer"):
        LinearDecay("sgd", 10)


# ---------------------------------------------------------------------------------------
# Inspection: trace and plot


def hyperparameters(opt):
    return [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]


def test_trace_predicts_the_live_run_and_touches_nothing():
    opt = make_optimizer(cls=torch.optim.Adam)
    sched = schedules.create("cosine", opt, warmup_steps=3, total_steps=12, eta_min=0.001)
    run(opt, sched, 5)
    before_state = copy.deepcopy(sched.state_dict())
    before_groups = copy.deepcopy(hyperparameters(opt))
    predicted = schedules.trace(sched, 10)
    assert sched.state_dict() == before_state
    assert hyperparameters(opt) == before_groups
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert run(opt, sched, 10) == predicted


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_plot_writes_a_png_without_changing_a_live_schedule(tmp_path):
    opt = make_optimizer()
    sched = schedules.create("linear-decay", opt, warmup_steps=2, decay_steps=20)
    run(opt, sched, 4)
    state = copy.deepcopy(sched.state_dict())
    lrs = [g["lr"] for g in opt.param_groups]
    path = schedules.plot(
        [sched, "cosine", "inverse-time"], 50, tmp_path / "sub" / "lr.png",
        total_steps=50, warmup_steps=5, steps_per_epoch=5,
    )
    assert path == tmp_path / "sub" / "lr.png"
    width, height = png_size(path)
    assert width > 100 and height > 100
    assert sched.state_dict() == state
    assert [g["lr"] for g in opt.param_groups] == lrs

    import matplotlib.image

    pixels = matplotlib.image.imread(path)
    assert pixels.shape[:2] == (height, width)
    assert pixels.std() > 0  # something was drawn


def test_plot_options_need_a_name(tmp_path):
    sched = LambdaLR(make_optimizer(), lambda k: 1.0)
    with pytest.raises(ValueError, match="only apply to schedules given by name"):
        schedules.plot(sched, 5, tmp_path / "x.png", total_steps=5)
