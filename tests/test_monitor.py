"""diagnostics.Monitor: never changes training, feeds diagnose the right windows, logs and
reports what it measured."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from close import mismatches
from torch import nn
from torch.func import functional_call

from ravine import models, optim
from ravine.diagnostics import monitor as monitor_module
from ravine.diagnostics.diagnosis import diagnose
from ravine.diagnostics.monitor import Monitor

N, D, K = 48, 5, 3


def problem(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, D, generator=g, dtype=torch.float64)
    y = torch.randint(0, K, (N,), generator=g)
    return x, y


def build(norm: str = "none", dropout: float = 0.3) -> nn.Module:
    torch.manual_seed(1)
    return models.mlp(D, [7], K, norm=norm, dropout=dropout).double()


def make_optimizer(name: str, model: nn.Module, clip_norm: float | None = 0.5):
    if name == "torch-sgd":
        return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return optim.create(name, model.parameters(), lr=0.1, clip_norm=clip_norm)


def train(model, opt, steps: int, monitor: Monitor | None = None, batch: int = 12):
    """A plain loop: random minibatches from the global RNG, dropout in train mode."""
    x, y = problem()
    torch.manual_seed(5)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, N, (batch,))
        opt.zero_grad()
        loss = F.cross_entropy(model(x[idx]), y[idx])
        loss.backward()
        opt.step()
        if monitor is not None:
            monitor.step(loss)
    return model


def state(model, opt) -> dict[str, torch.Tensor]:
    out = {f"model.{k}": v.clone() for k, v in model.state_dict().items()}
    for p in model.parameters():
        out[f"grad.{id(p)}"] = p.grad.clone()
        for k, v in opt.state[p].items():
            if isinstance(v, torch.Tensor):
                out[f"opt.{id(p)}.{k}"] = v.clone()
    out["rng"] = torch.get_rng_state()
    return out


@pytest.mark.parametrize(
    "name,norm",
    [("nesterov", "batch"), ("nesterov", "none"), ("adam", "batch"), ("torch-sgd", "batch")],
)
def test_parameters_bit_identical_with_and_without_monitor(tmp_path, name, norm):
    plain = build(norm)
    opt = make_optimizer(name, plain)
    train(plain, opt, 9)
    expected = state(plain, opt)
    model = build(norm)
    opt2 = make_optimizer(name, model)
    # mode="train": dropout masks and batch statistics inside the measurement itself
    mon = Monitor(
        model,
        F.cross_entropy,
        problem(1),
        opt2,
        every=3,
        budget=20,
        mode="train",
        batch_size=12,
        log=tmp_path / "log.jsonl",
    )
    train(model, opt2, 9, mon)
    assert len(mon.records) == 3
    got = state(model, opt2)
    # parameters, gradients, optimizer state, batch-norm buffers and the torch RNG
    assert len(got) == len(expected)
    for (key, want), have in zip(expected.items(), got.values(), strict=True):
        assert torch.equal(want, have), key
    assert all(m.training for m in model.modules())


def test_a_careless_measurement_still_leaves_training_untouched(monkeypatch):
    """Even a measurement that draws from every global RNG, updates batch-norm statistics and
    switches modes leaves the RNG streams, buffers and ``training`` flags as they were."""

    def careless_diagnose(model, loss_fn, data, **kwargs):
        random.random()
        np.random.rand()
        torch.rand(3)
        model.train()
        model(data[0])  # updates the running statistics
        model[0].eval()
        return diagnose(model, loss_fn, data, **{**kwargs, "budget": 5})

    monkeypatch.setattr(monitor_module, "diagnose", careless_diagnose)
    model = build("batch")
    model.eval()
    model[1].train()  # a mixed state: must come back exactly
    flags = [m.training for m in model.modules()]
    buffers = [b.clone() for b in model.buffers()]
    opt = make_optimizer("nesterov", model)
    mon = Monitor(model, F.cross_entropy, problem(1), opt, every=1)
    for seed_all in (random.seed, np.random.seed, torch.manual_seed):
        seed_all(3)
    expected = (random.random(), np.random.rand(), torch.rand(1))
    for seed_all in (random.seed, np.random.seed, torch.manual_seed):
        seed_all(3)
    mon.step()
    assert len(mon.records) == 1
    assert (random.random(), np.random.rand()) == expected[:2]
    assert torch.equal(torch.rand(1), expected[2])
    assert [m.training for m in model.modules()] == flags
    assert all(torch.equal(a, b) for a, b in zip(buffers, model.buffers(), strict=True))


class Recorder:
    """Stands in for diagnose: records its arguments and the parameters it was given."""

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def __call__(self, model, loss_fn, data, **kwargs):
        self.calls.append(kwargs)
        return diagnose(model, loss_fn, data, **{**kwargs, "budget": 5})


def test_histories_are_the_exact_per_step_numbers(monkeypatch):
    recorder = Recorder()
    monkeypatch.setattr(monitor_module, "diagnose", recorder)
    model = build(dropout=0.0)
    clip = 0.3
    opt = optim.create("momentum", model.parameters(), lr=0.05, clip_norm=clip)
    mon = Monitor(
        model, F.cross_entropy, problem(1), opt, every=4, seed=10, window=3, batch_size=12
    )
    x, y = problem()
    torch.manual_seed(0)
    losses, norms = [], []
    for step in range(8):
        idx = torch.randint(0, N, (12,))
        opt.zero_grad()
        loss = F.cross_entropy(model(x[idx]), y[idx])
        loss.backward()
        # the pre-clip norm, computed here from the gradients directly
        norms.append(math.sqrt(sum(float((p.grad**2).sum()) for p in model.parameters())))
        losses.append(float(loss.detach()))
        opt.step()
        # a float on odd steps, a tensor on even ones: both accepted
        mon.step(loss if step % 2 == 0 else float(loss))
    assert [c["seed"] for c in recorder.calls] == [14, 18]
    for i, call in enumerate(recorder.calls):
        end = 4 * (i + 1)
        history = call["history"]
        assert history["loss_history"] == losses[end - 3 : end]
        assert history["grad_norm_history"] == pytest.approx(norms[end - 3 : end], rel=1e-12)
        fired = [n > clip for n in norms[end - 3 : end]]
        assert history["clip_fraction"] == sum(fired) / 3
        assert history["clip_norm"] == clip
        assert call["optimizer"] is opt and call["batch_size"] == 12
        assert call["mode"] == "eval"
    assert 0 < sum(n > clip for n in norms) < len(norms)  # the fraction is not trivially 0 or 1


def test_without_clipping_no_clip_keys_and_torch_optimizers_have_no_norms(monkeypatch):
    recorder = Recorder()
    monkeypatch.setattr(monitor_module, "diagnose", recorder)
    model = build()
    opt = make_optimizer("torch-sgd", model)
    mon = Monitor(model, F.cross_entropy, problem(1), opt, every=2)
    train(model, opt, 2, mon)
    history = recorder.calls[0]["history"]
    assert set(history) == {"loss_history", "grad_norm_history"}
    assert history["grad_norm_history"] == [] and len(history["loss_history"]) == 2


def flat_loss(model, x, y):
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]

    def loss(theta):
        params, start = {}, 0
        for name, shape in zip(names, shapes, strict=True):
            size = math.prod(shape)
            params[name] = theta[start : start + size].reshape(shape)
            start += size
        return F.cross_entropy(functional_call(model, params, (x,)), y)

    return loss


def test_measures_at_the_true_parameters_of_nesterov():
    """λmax recorded at a step equals the dense Hessian's top eigenvalue at the true θ."""
    model = build(dropout=0.0)
    opt = optim.create("nesterov", model.parameters(), lr=0.1, momentum=0.9)
    probe = problem(1)
    mon = Monitor(model, F.cross_entropy, probe, opt, every=5, budget=200)
    train(model, opt, 5, mon)
    model.eval()
    with optim.true_params(opt):
        theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
        hessian = torch.autograd.functional.hessian(flat_loss(model, *probe), theta)
    interim = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    assert not torch.equal(theta, interim)  # the interim point differs from θ
    eig = np.linalg.eigvalsh(hessian.numpy())
    lam = mon.records[-1]["numbers"]["lambda_max"]
    assert lam == pytest.approx(eig[-1], rel=1e-6)
    with torch.no_grad():
        interim_hessian = torch.autograd.functional.hessian(flat_loss(model, *probe), interim)
    assert abs(np.linalg.eigvalsh(interim_hessian.numpy())[-1] - lam) > 1e-6 * abs(lam)


def test_records_equal_a_direct_diagnose_call(tmp_path):
    model = build(dropout=0.0)
    opt = make_optimizer("nesterov", model)
    probe = problem(1)
    log = tmp_path / "sub" / "monitor.jsonl"
    mon = Monitor(model, F.cross_entropy, probe, opt, every=3, budget=30, seed=4, log=log)
    train(model, opt, 3, mon)
    lines = log.read_text().splitlines()  # flushed when step() returns
    assert len(lines) == 1
    twin = build(dropout=0.0)
    twin_opt = make_optimizer("nesterov", twin)
    train(twin, twin_opt, 3)
    direct = diagnose(
        twin,
        F.cross_entropy,
        probe,
        optimizer=twin_opt,
        seed=4 + 3,
        budget=30,
        history=mon.history(),
    )
    got, want = mon.records[0]["numbers"], direct.numbers
    skip = {"seconds"}
    # Same computation, same data, same seed: equal up to the last bits a multithreaded
    # BLAS may change with memory alignment (seen on CI: 1 ulp in λmax and what follows).
    # Lanczos residuals ‖Hq - θq‖ are differences of nearly equal vectors: their relative
    # error is large where they are small, so they are compared on λ's scale instead.
    residuals = {k for k in got if k.endswith("_residual")}
    assert mismatches(
        {k: v for k, v in got.items() if k not in skip | residuals},
        {k: v for k, v in want.items() if k not in skip | residuals},
    ) == []
    scale = abs(want["lambda_max"])
    for key in residuals:
        assert got[key] == pytest.approx(want[key], rel=1e-6, abs=1e-9 * scale), key
    assert [f["code"] for f in mon.records[0]["findings"]] == direct.codes
    assert mon.latest is not None and mon.latest.codes == direct.codes
    line = json.loads(lines[0])
    assert line["step"] == 3 and line["seconds"] > 0
    assert line["numbers"]["loss"] == got["loss"]
    assert [f["code"] for f in line["findings"]] == direct.codes


def test_log_appends_whole_lines_and_non_finite_numbers_read_back(tmp_path, monkeypatch):
    log = tmp_path / "m.jsonl"
    log.write_text('{"step": 0}\n')

    def fake(*args, **kwargs):
        d = diagnose(*args, **{**kwargs, "budget": 5})
        d.numbers["b_simple"] = math.inf
        return d

    monkeypatch.setattr(monitor_module, "diagnose", fake)
    model = build()
    opt = make_optimizer("sgd", model)
    mon = Monitor(model, F.cross_entropy, problem(1), opt, every=2, log=log)
    for i in range(6):
        train(model, opt, 1, mon)
        text = log.read_text()
        assert text.endswith("\n")
        assert len(text.splitlines()) == 1 + (i + 1) // 2
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 2, 4, 6]
    assert float(rows[1]["numbers"]["b_simple"]) == math.inf


def test_plot_and_report(tmp_path):
    model = build()
    opt = make_optimizer("nesterov", model)
    mon = Monitor(model, F.cross_entropy, problem(1), opt, every=2, budget=20, batch_size=12)
    train(model, opt, 6, mon)
    png = mon.plot(tmp_path / "p" / "m.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    path = mon.report(tmp_path / "r")
    text = path.read_text()
    assert path.name == "monitor.md"
    assert mon.latest.to_markdown(title="Findings at step 6").strip() in text
    assert "![monitor](monitor.png)" in text
    assert (tmp_path / "r" / "monitor.png").exists()
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["monitor.md", "monitor.png"]
    assert text.count("\n| 2 |") == 1 and text.count("\n| 6 |") == 1  # one row a measurement


def test_report_measures_when_nothing_was_measured(tmp_path):
    model = build()
    opt = make_optimizer("sgd", model)
    mon = Monitor(model, F.cross_entropy, problem(1), opt, every=100, budget=10)
    train(model, opt, 2, mon)
    assert mon.records == []
    mon.report(tmp_path)
    assert len(mon.records) == 1 and mon.records[0]["step"] == 2


def test_overhead_counts_the_time_spent_measuring(monkeypatch):
    import time

    def slow(*args, **kwargs):
        time.sleep(0.05)
        return diagnose(*args, **{**kwargs, "budget": 5})

    monkeypatch.setattr(monitor_module, "diagnose", slow)
    model = build()
    opt = make_optimizer("sgd", model)
    mon = Monitor(model, F.cross_entropy, problem(1), opt, every=3)
    assert mon.overhead.ratio == 1.0
    train(model, opt, 6, mon)
    overhead = mon.overhead
    assert 0.1 <= overhead.measuring <= overhead.total
    assert overhead.ratio == pytest.approx(overhead.total / (overhead.total - overhead.measuring))


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"every": 0}, "every must be an integer >= 1, got 0"),
        ({"mode": "evl"}, "did you mean 'eval'?"),
        ({"window": 0}, "window must be an integer >= 1, got 0"),
        ({"batch_size": -1}, "batch_size must be an integer >= 1, got -1"),
    ],
)
def test_bad_options_are_one_line_errors(kwargs, message):
    model = build()
    with pytest.raises(ValueError, match=message.replace("?", r"\?")):
        Monitor(model, F.cross_entropy, problem(), make_optimizer("sgd", model), **kwargs)


def test_non_scalar_loss_is_refused():
    model = build()
    mon = Monitor(model, F.cross_entropy, problem(), make_optimizer("sgd", model))
    with pytest.raises(ValueError, match=r"loss must be a scalar, got a tensor of shape \(2,\)"):
        mon.step(torch.ones(2))


def test_auto_schedule_keeps_measuring_below_the_target_overhead():
    # a slow "training step" (sleep) against a real measurement: "auto" spaces measurements so
    # that measuring stays near target_overhead of the wall time, whatever each one costs
    import time as _time

    torch.manual_seed(0)
    model = build()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = Monitor(
        model,
        F.cross_entropy,
        problem(1),
        opt,
        budget={"hvps": 10, "seconds": 0.05},
        target_overhead=0.2,
    )
    for _ in range(120):
        _time.sleep(0.01)
        mon.step()
    assert len(mon.records) >= 1
    ratio = mon.overhead.ratio
    assert ratio < 1 + 0.2 + 0.15, ratio  # the last measurement may land at the very end


@pytest.mark.parametrize("every", ["sometimes", 0, -3])
def test_bad_schedules_are_one_line_errors(every):
    model = build()
    with pytest.raises(ValueError, match="every"):
        Monitor(
            model,
            F.cross_entropy,
            problem(1),
            torch.optim.SGD(model.parameters(), lr=0.1),
            every=every,
        )
