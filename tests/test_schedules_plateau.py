"""reduce-on-plateau and epoch-stepped schedules: against torch stepped by hand, resume, errors."""

from __future__ import annotations

import io
import random
from fractions import Fraction

import pytest
import torch
from torch.optim.lr_scheduler import LambdaLR, ReduceLROnPlateau, StepLR

from ravine import schedules
from ravine.schedules import EpochStepped, LinearWarmup, is_epoch_driven, wrap_user_scheduler

BASE_LRS = (0.1, 0.03)
STEPS_PER_EPOCH = 3


def make_optimizer(lrs=BASE_LRS) -> torch.optim.Optimizer:
    groups = [{"params": [torch.zeros(3, requires_grad=True)], "lr": lr} for lr in lrs]
    return torch.optim.SGD(groups)


def metric_sequence(epochs: int, seed: int = 0) -> list[float]:
    """A validation loss that improves at times, stalls, and moves within the threshold."""
    rng = random.Random(seed)
    value, values = 1.0, []
    for _ in range(epochs):
        if rng.random() < 0.3:
            value *= 0.9
        else:
            value *= 1 + rng.uniform(-2e-5, 1e-3)
        values.append(value)
    return values


def lrs(opt) -> list[float]:
    return [group["lr"] for group in opt.param_groups]


def run_epochs(opt, sched, values, steps_per_epoch=STEPS_PER_EPOCH) -> list[list[float]]:
    """Rates in force at every optimizer step of a loop that calls epoch_end after each epoch."""
    rates = []
    for value in values:
        for _ in range(steps_per_epoch):
            rates.append(lrs(opt))
            opt.step()
            sched.step()
        sched.epoch_end(value)
    return rates


def by_hand(values, steps_per_epoch=STEPS_PER_EPOCH, feed_from=0, **torch_kw):
    """torch's ReduceLROnPlateau alone, stepped with the epochs' values from epoch feed_from."""
    opt = make_optimizer()
    plateau = ReduceLROnPlateau(opt, **torch_kw)
    rates = []
    for epoch, value in enumerate(values):
        rates += [lrs(opt)] * steps_per_epoch
        if epoch >= feed_from:
            plateau.step(value)
    return rates


OPTIONS = [
    {},
    {"factor": 0.5, "patience": 2},
    {"factor": 0.5, "patience": 1, "cooldown": 2, "min_lr": 0.01},
    {"factor": 0.3, "patience": 0, "threshold": 0.0},
    {"factor": 0.5, "patience": 3, "threshold": 1e-2},
]


@pytest.mark.parametrize("options", OPTIONS, ids=str)
def test_rates_equal_torch_reduce_lr_on_plateau_stepped_by_hand(options):
    values = metric_sequence(60)
    opt = make_optimizer()
    sched = schedules.create("reduce-on-plateau", opt, **options)
    got = run_epochs(opt, sched, values)
    assert got == by_hand(values, **options)
    assert got[-1] != got[0] or options == {}  # the sequence does trigger reductions


def test_mode_max_follows_an_accuracy():
    accuracies = [-v for v in metric_sequence(40, seed=3)]
    opt = make_optimizer()
    sched = schedules.create("reduce-on-plateau", opt, mode="max", patience=1, factor=0.5)
    got = run_epochs(opt, sched, accuracies)
    assert got == by_hand(accuracies, mode="max", patience=1, factor=0.5)
    assert got[-1] < got[0]


def test_step_alone_never_changes_the_rate():
    opt = make_optimizer()
    sched = schedules.create("reduce-on-plateau", opt, patience=0)
    for _ in range(50):
        opt.step()
        sched.step()
    assert lrs(opt) == list(BASE_LRS)
    assert schedules.trace(sched, 5) == [list(BASE_LRS)] * 5


def test_warmup_then_plateau():
    warmup, values = 7, metric_sequence(40, seed=1)
    opt = make_optimizer()
    sched = schedules.create("reduce-on-plateau", opt, warmup_steps=warmup, patience=1)
    assert isinstance(sched, EpochStepped) and is_epoch_driven(sched)
    got = run_epochs(opt, sched, values)
    for k in range(warmup):
        for g, alpha in enumerate(BASE_LRS):
            assert Fraction(got[k][g]) == Fraction(
                schedules.linear_warmup(k, lr=alpha, warmup_steps=warmup)
            )
    # Epochs 1 and 2 end at steps 3 and 6 < 7: still warming up, their values are ignored.
    feed_from = -(-warmup // STEPS_PER_EPOCH) - 1
    reference = by_hand(values, feed_from=feed_from, patience=1)
    assert got[warmup:] == reference[warmup:]
    assert schedules.trace(schedules.create("reduce-on-plateau", make_optimizer(),
                                            warmup_steps=3), 5) == [
        [schedules.linear_warmup(k, lr=lr, warmup_steps=3) for lr in BASE_LRS] for k in range(3)
    ] + [list(BASE_LRS)] * 2


def roundtrip(state: dict) -> dict:
    """Through torch.save / torch.load(weights_only=True), as a checkpoint would go."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("stop", [4, 9, 13])
@pytest.mark.parametrize("warmup", [0, 5])
def test_state_dict_resume_mid_run_gives_identical_rates(stop, warmup):
    values = metric_sequence(30, seed=2)
    kw = dict(warmup_steps=warmup, factor=0.5, patience=1, cooldown=2)

    def fresh():
        opt = make_optimizer()
        return opt, schedules.create("reduce-on-plateau", opt, **kw)

    opt, sched = fresh()
    uninterrupted = run_epochs(opt, sched, values)

    opt, sched = fresh()
    first = run_epochs(opt, sched, values[:stop])
    saved = roundtrip({"opt": opt.state_dict(), "sched": sched.state_dict()})
    assert saved["sched"]["schedule"]["num_bad_epochs"] == sched.schedule.num_bad_epochs
    opt, sched = fresh()
    opt.load_state_dict(saved["opt"])
    sched.load_state_dict(saved["sched"])
    assert first + run_epochs(opt, sched, values[stop:]) == uninterrupted


def test_other_named_schedules_are_step_driven():
    for name, kw in [("constant", {}), ("cosine", {"total_steps": 10}),
                     ("step", {"step_size": 2}), ("inverse-time", {"decay_steps": 3})]:
        assert not is_epoch_driven(schedules.create(name, make_optimizer(), **kw))
        assert not is_epoch_driven(schedules.create(name, make_optimizer(), warmup_steps=2, **kw))
    assert is_epoch_driven(schedules.create("reduce-on-plateau", make_optimizer()))
    assert "reduce-on-plateau" in schedules.names()


# ---------------------------------------------------------------------------------------
# A user's own scheduler


def test_user_scheduler_stepped_per_step_is_returned_as_it_is():
    opt = make_optimizer()
    user = StepLR(opt, step_size=2, gamma=0.5)
    assert wrap_user_scheduler(user) is user
    assert wrap_user_scheduler(user, "step") is user
    assert not is_epoch_driven(user)


def test_user_scheduler_stepped_per_epoch_equals_stepping_it_by_hand():
    values = metric_sequence(8)
    opt = make_optimizer()
    sched = wrap_user_scheduler(StepLR(opt, step_size=2, gamma=0.5), interval="epoch")
    assert is_epoch_driven(sched)
    got = run_epochs(opt, sched, values)

    ref_opt = make_optimizer()
    ref = StepLR(ref_opt, step_size=2, gamma=0.5)
    expected = []
    for _ in values:
        expected += [lrs(ref_opt)] * STEPS_PER_EPOCH
        ref_opt.step()
        ref.step()
    assert got == expected
    assert got[-1] == [lr * 0.5**3 for lr in BASE_LRS]


def test_user_reduce_lr_on_plateau_gets_the_metric_and_resumes():
    values = metric_sequence(30, seed=4)

    def fresh():
        opt = make_optimizer()
        return opt, wrap_user_scheduler(ReduceLROnPlateau(opt, factor=0.5, patience=1))

    opt, sched = fresh()
    assert isinstance(sched, EpochStepped)
    uninterrupted = run_epochs(opt, sched, values)
    assert uninterrupted == by_hand(values, factor=0.5, patience=1)

    opt, sched = fresh()
    first = run_epochs(opt, sched, values[:11])
    saved = roundtrip({"opt": opt.state_dict(), "sched": sched.state_dict()})
    opt, sched = fresh()
    opt.load_state_dict(saved["opt"])
    sched.load_state_dict(saved["sched"])
    assert first + run_epochs(opt, sched, values[11:]) == uninterrupted

    already = schedules.create("reduce-on-plateau", make_optimizer())
    assert wrap_user_scheduler(already, "epoch") is already


# ---------------------------------------------------------------------------------------
# Errors and inspection


BAD = [
    ({"factor": 0}, "factor must be > 0, got 0"),
    ({"factor": 1.0}, r"factor must be in \(0, 1\)"),
    ({"factor": 2}, r"factor must be in \(0, 1\)"),
    ({"patience": -1}, "patience must be an integer >= 0, got -1"),
    ({"patience": 2.5}, "patience must be an integer >= 0"),
    ({"threshold": -1e-3}, "threshold must be >= 0"),
    ({"mode": "mn"}, "mode must be 'min' or 'max', got 'mn'; did you mean 'min'"),
    ({"min_lr": -0.1}, "min_lr must be >= 0"),
    ({"min_lr": 0.05}, "min_lr must be <= the base lr 0.03 of param group 1"),
    ({"cooldown": -2}, "cooldown must be an integer >= 0"),
    ({"patiense": 3}, "unknown option 'patiense' .*did you mean 'patience'"),
]


@pytest.mark.parametrize(("options", "message"), BAD, ids=[m for _, m in BAD])
def test_bad_plateau_options_raise_with_their_name(options, message):
    with pytest.raises(ValueError, match=message):
        schedules.create("reduce-on-plateau", make_optimizer(), **options)


def test_interface_errors():
    opt = make_optimizer()
    sched = schedules.create("reduce-on-plateau", opt)
    with pytest.raises(ValueError, match="ReduceLROnPlateau needs the monitored value"):
        sched.epoch_end()
    with pytest.raises(ValueError, match="interval must be 'step' or 'epoch', got 'epochs'; "
                                         "did you mean 'epoch'"):
        wrap_user_scheduler(StepLR(opt, 2), interval="epochs")
    with pytest.raises(ValueError, match="interval='step' cannot drive a ReduceLROnPlateau"):
        wrap_user_scheduler(ReduceLROnPlateau(opt), interval="step")
    with pytest.raises(TypeError, match="got str"):
        wrap_user_scheduler("cosine")
    with pytest.raises(TypeError, match="LinearWarmup cannot wrap the epoch-driven"):
        LinearWarmup(sched, 3)
    with pytest.raises(TypeError, match="already stepped once per epoch"):
        EpochStepped(sched)
    with pytest.raises(ValueError, match="warmup_steps must be an integer >= 0"):
        EpochStepped(LambdaLR(opt, lambda k: 1.0), warmup_steps=-1)
    with pytest.raises(TypeError, match="ReduceLROnPlateau"):
        schedules.trace(ReduceLROnPlateau(opt), 3)


def test_plot_draws_a_plateau_schedule(tmp_path):
    path = schedules.plot(["reduce-on-plateau", "cosine"], 30, tmp_path / "lr.png",
                          warmup_steps=5, total_steps=30)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    opt = make_optimizer()
    live = schedules.create("reduce-on-plateau", opt, patience=0)
    run_epochs(opt, live, [1.0, 2.0])
    state = live.state_dict()
    schedules.plot(live, 10, tmp_path / "live.png")
    assert live.state_dict() == state and lrs(opt) == [lr * 0.1 for lr in BASE_LRS]
