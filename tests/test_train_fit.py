"""ravine.fit against hand-written training loops, torch's optimizers and direct computations."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ravine import data, models, optim, schedules
from ravine.train import CheckpointError, NonFiniteLossError, fit
from ravine.train.checkpoint import load_checkpoint
from ravine.train.metrics import read_metrics

N, D, K = 50, 5, 3
BATCH = 16  # 50 = 3 * 16 + 2: every epoch ends with a partial batch


TEACHER = torch.randn(D, K, generator=torch.Generator().manual_seed(1234), dtype=torch.float64)


def make_data(seed: int = 0, n: int = N) -> tuple[torch.Tensor, torch.Tensor]:
    """Examples labelled by a fixed noisy linear teacher (float64 inputs, integer classes)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, D, generator=g, dtype=torch.float64)
    y = (x @ TEACHER + torch.randn(n, K, generator=g, dtype=torch.float64)).argmax(dim=1)
    return x, y


def make_model(norm: str = "batch", dropout: float = 0.0, seed: int = 1) -> nn.Module:
    torch.manual_seed(seed)
    return models.mlp(D, [8], K, norm=norm, dropout=dropout).double()


def epoch_blocks(n: int, batch: int, seed: int, epoch: int) -> list[torch.Tensor]:
    """The minibatches of one epoch: the seeded permutation cut into contiguous blocks."""
    order = data.EpochBatches(n, batch, seed=seed).order(epoch)
    return [order[i : i + batch] for i in range(0, n, batch)]


def reference_loop(model, x, y, opt, sched, *, epochs, seed, val=None, skip=lambda idx: False):
    """A textbook loop: seed, then per batch closure -> step -> schedule; eval per epoch."""
    torch.manual_seed(seed)
    records = []
    for epoch in range(epochs):
        model.train()
        loss_sum, correct, count = 0.0, 0, 0
        for idx in epoch_blocks(len(x), BATCH, seed, epoch):
            if not skip(idx):
                losses = []

                def closure(idx=idx, losses=losses):
                    opt.zero_grad()
                    out = model(x[idx])
                    loss = F.cross_entropy(out, y[idx])
                    if not losses:
                        losses.append((loss.item(), int((out.argmax(1) == y[idx]).sum())))
                    loss.backward()
                    return loss

                opt.step(closure)
                loss_sum += losses[0][0] * len(idx)
                correct += losses[0][1]
                count += len(idx)
            sched.step()
        record = {"train_loss": loss_sum / count, "train_acc": correct / count}
        if val is not None:
            model.eval()
            with optim.true_params(opt), torch.no_grad():
                out = model(val[0])
                record["val_loss"] = F.cross_entropy(out, val[1]).item()
                record["val_acc"] = (out.argmax(1) == val[1]).double().mean().item()
        records.append(record)
    return records


def assert_same_state(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def constant(opt):
    return schedules.create("constant", opt)


def test_fit_equals_a_hand_written_loop_with_a_torch_optimizer():
    x, y = make_data()
    xv, yv = make_data(seed=5, n=20)
    model = make_model(dropout=0.2)
    twin = copy.deepcopy(model)
    result = fit(model, (x, y), (xv, yv), optimizer=torch.optim.SGD(model.parameters(), lr=0.1,
                 momentum=0.9), epochs=3, batch_size=BATCH, seed=7, quiet=True)
    opt = torch.optim.SGD(twin.parameters(), lr=0.1, momentum=0.9)
    expected = reference_loop(twin, x, y, opt, constant(opt), epochs=3, seed=7, val=(xv, yv))
    assert_same_state(result.model, twin)
    assert len(result.history) == 3
    for got, want in zip(result.history, expected, strict=True):
        for key, value in want.items():
            assert got[key] == pytest.approx(value, rel=1e-12, abs=1e-15), key
    assert [h["epoch"] for h in result.history] == [1, 2, 3]
    assert [h["step"] for h in result.history] == [4, 8, 12]


def test_fit_by_name_builds_param_groups_and_decays_over_the_run(tmp_path):
    x, y = make_data()
    model = make_model()
    twin = copy.deepcopy(model)
    epochs, lr, wd = 3, 0.1, 0.01
    fit(model, (x, y), optimizer={"name": "momentum", "momentum": 0.8}, lr=lr,
        schedule="linear-decay", weight_decay=wd, epochs=epochs, batch_size=BATCH, seed=3,
        run_dir=tmp_path / "run", quiet=True)
    total = epochs * math.ceil(N / BATCH)
    opt = optim.create("momentum", models.param_groups(twin, wd), lr=lr, momentum=0.8)
    sched = schedules.create("linear-decay", opt, decay_steps=total)
    reference_loop(twin, x, y, opt, sched, epochs=epochs, seed=3)
    assert_same_state(model, twin)
    _, steps, _ = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [s["step"] for s in steps] == list(range(1, total + 1))
    for k, s in enumerate(steps):
        assert s["lr"] == pytest.approx(schedules.linear_decay(k, lr=lr, decay_steps=total),
                                        rel=1e-12)


def test_weight_decay_skips_biases_and_normalization_parameters():
    x, y = make_data()
    model = make_model(norm="batch")
    start = {name: p.detach().clone() for name, p in model.named_parameters()}
    lr, wd = 0.5, 0.1
    fit(model, (x, y), optimizer="sgd", lr=lr, weight_decay=wd, epochs=1, batch_size=N,
        seed=0, quiet=True)
    probe = make_model(norm="batch")
    idx = epoch_blocks(N, N, 0, 0)[0]
    F.cross_entropy(probe(x[idx]), y[idx]).backward()
    grads = dict((name, p.grad) for name, p in probe.named_parameters())
    decayed = {"hidden0.layer.weight", "out.weight"}
    assert set(start) == decayed | {"hidden0.norm.weight", "hidden0.norm.bias", "out.bias"}
    for name, p in model.named_parameters():
        penalty = wd * start[name] if name in decayed else 0.0
        expected = start[name] - lr * (grads[name] + penalty)
        torch.testing.assert_close(p.detach(), expected, rtol=0, atol=1e-14, msg=name)


def test_nesterov_is_evaluated_and_returned_at_the_true_parameters():
    x, y = make_data()
    xv, yv = make_data(seed=5, n=20)
    model = make_model()
    twin = copy.deepcopy(model)
    result = fit(model, (x, y), (xv, yv), optimizer="nesterov", lr=0.2, epochs=2,
                 batch_size=BATCH, seed=0, quiet=True)
    opt = optim.Nesterov(models.param_groups(twin, 0.0), lr=0.2, momentum=0.9)
    expected = reference_loop(twin, x, y, opt, constant(opt), epochs=2, seed=0, val=(xv, yv))
    interim = copy.deepcopy(twin.state_dict())
    opt.to_true_params()
    assert not torch.equal(interim["out.weight"], twin.state_dict()["out.weight"])
    assert_same_state(result.model, twin)
    assert result.history[-1]["val_loss"] == pytest.approx(expected[-1]["val_loss"], rel=1e-12)
    twin.eval()
    with torch.no_grad():
        assert result.history[-1]["val_loss"] == pytest.approx(
            F.cross_entropy(twin(xv), yv).item(), rel=1e-12)


def test_closure_based_optimizers_work():
    x, y = make_data()
    model = make_model(norm="none")
    twin = copy.deepcopy(model)
    fit(model, (x, y), optimizer=torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=4),
        epochs=2, batch_size=BATCH, seed=0, quiet=True)
    opt = torch.optim.LBFGS(twin.parameters(), lr=0.5, max_iter=4)
    reference_loop(twin, x, y, opt, constant(opt), epochs=2, seed=0)
    assert_same_state(model, twin)


@pytest.mark.parametrize("given", ["name", "instance"])
def test_clip_norm_rescales_and_records_the_pre_clip_norm(tmp_path, given):
    x, y = make_data()
    model = make_model(norm="none")
    start = copy.deepcopy(model)
    lr, clip = 0.3, 0.05
    opt = "sgd" if given == "name" else torch.optim.SGD(model.parameters(), lr=lr)
    fit(model, (x, y), optimizer=opt, lr=lr if given == "name" else None, clip_norm=clip,
        epochs=1, batch_size=N, seed=0, run_dir=tmp_path / "r", quiet=True)
    idx = epoch_blocks(N, N, 0, 0)[0]
    F.cross_entropy(start(x[idx]), y[idx]).backward()
    norm = torch.sqrt(sum((p.grad**2).sum() for p in start.parameters())).item()
    assert norm > clip
    _, steps, summary = read_metrics(tmp_path / "r" / "metrics.jsonl")
    assert steps[0]["grad_norm"] == pytest.approx(norm, rel=1e-10)
    assert steps[0]["clipped"] is True
    assert summary["clip_norm"] == clip
    for p, p0 in zip(model.parameters(), start.parameters(), strict=True):
        torch.testing.assert_close(p.detach(), p0.detach() - lr * clip / norm * p0.grad,
                                   rtol=0, atol=1e-14)


def test_mse_regression_reports_loss_without_accuracy():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 3, generator=g, dtype=torch.float64)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]], dtype=torch.float64)
    torch.manual_seed(0)
    model = models.mlp(3, [], 1).double()
    result = fit(model, (x, y), (x[:10], y[:10]), test=(x[10:], y[10:]), optimizer="sgd",
                 lr=0.05, loss="mse", epochs=2, batch_size=8, quiet=True)
    assert "train_acc" not in result.history[0] and "val_acc" not in result.history[0]
    with torch.no_grad():
        assert result.history[-1]["val_loss"] == pytest.approx(
            F.mse_loss(model(x[:10]), y[:10]).item(), rel=1e-12)
        assert result.test == {"test_loss": pytest.approx(
            F.mse_loss(model(x[10:]), y[10:]).item(), rel=1e-12)}


def test_early_stopping_restores_the_best_epochs_weights(tmp_path):
    x, y = make_data()
    val = make_data(seed=9, n=40)  # 50 noisy examples: the network soon overfits them
    settings = dict(optimizer="momentum", lr=0.1, epochs=40, batch_size=BATCH, seed=0,
                    quiet=True)
    model = make_model()
    twin = copy.deepcopy(model)
    patience = 3
    result = fit(model, (x, y), val, **settings, run_dir=tmp_path / "es",
                 early_stopping={"patience": patience, "restore_best": True})
    losses = [h["val_loss"] for h in result.history]
    best = losses.index(min(losses)) + 1
    assert 1 < best < len(losses)  # a real optimum inside the run, so the test can fail
    assert result.stopped_early and result.monitor == "val_loss"
    assert (result.best_epoch, result.best_metric) == (best, min(losses))
    assert len(losses) == best + patience
    # The same run cut at the best epoch ends with exactly the restored weights.
    reference = fit(twin, (x, y), val, **{**settings, "epochs": best})
    assert_same_state(result.model, reference.model)
    saved = torch.load(tmp_path / "es" / "checkpoints" / "best.pt", weights_only=True)
    assert saved["epoch"] == best
    for key, value in reference.model.state_dict().items():
        assert torch.equal(saved["model"][key], value)


def test_without_early_stopping_the_final_weights_are_returned():
    x, y = make_data()
    val = make_data(seed=9, n=40)
    result = fit(make_model(), (x, y), val, optimizer="momentum", lr=0.1, epochs=6,
                 batch_size=BATCH, seed=0, quiet=True)
    losses = [h["val_loss"] for h in result.history]
    assert result.best_epoch == losses.index(min(losses)) + 1
    assert not result.stopped_early and len(result.history) == 6
    result.model.eval()
    with torch.no_grad():
        final = F.cross_entropy(result.model(val[0]), val[1]).item()
    assert final == pytest.approx(losses[-1], rel=1e-12)


def poisoned(x: torch.Tensor, epoch_block: int, seed: int) -> tuple[torch.Tensor, int]:
    """x with a NaN in the first example of the given batch of epoch 0; returns its index."""
    bad = int(epoch_blocks(len(x), BATCH, seed, 0)[epoch_block][0])
    x = x.clone()
    x[bad, 0] = math.nan
    return x, bad


def test_nonfinite_loss_stops_naming_the_step_and_keeps_the_checkpoint(tmp_path):
    x, y = make_data()
    x, _ = poisoned(x, 2, seed=0)
    run = tmp_path / "nan"
    with pytest.raises(NonFiniteLossError, match=r"at step 3 \(epoch 1\)") as err:
        fit(make_model(), (x, y), optimizer="sgd", lr=0.1, epochs=2, batch_size=BATCH, seed=0,
            run_dir=run, checkpoint_every_steps=1, quiet=True)
    assert str(run / "checkpoints" / "last.pt") in str(err.value)
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    assert ckpt["step"] == 2
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    _, steps, _ = read_metrics(run / "metrics.jsonl")
    assert [s["step"] for s in steps] == [1, 2]


def test_nonfinite_skip_drops_exactly_the_poisoned_updates():
    x, y = make_data()
    x, bad = poisoned(x, 1, seed=0)
    model = make_model()
    twin = copy.deepcopy(model)
    result = fit(model, (x, y), optimizer="momentum", lr=0.1, epochs=3, batch_size=BATCH,
                 seed=0, on_nonfinite="skip", quiet=True)
    opt = optim.create("momentum", models.param_groups(twin, 0.0), lr=0.1)
    reference_loop(twin, x, y, opt, constant(opt), epochs=3, seed=0,
                   skip=lambda idx: bool((idx == bad).any()))
    assert_same_state(model, twin)
    assert [h["skipped"] for h in result.history] == [1, 1, 1]
    assert all(math.isfinite(h["train_loss"]) for h in result.history)


def test_an_epoch_of_only_nonfinite_losses_stops_even_when_skipping():
    x, y = make_data()
    with pytest.raises(NonFiniteLossError, match="every step of epoch 1"):
        fit(make_model(), (x * math.nan, y), optimizer="sgd", lr=0.1, epochs=2,
            batch_size=BATCH, on_nonfinite="skip", quiet=True)


def test_callbacks_see_every_record_and_their_exceptions_propagate():
    x, y = make_data()
    seen = []

    class Stop(Exception):
        pass

    def callback(epoch, record):
        seen.append((epoch, dict(record)))
        if epoch == 2:
            raise Stop

    with pytest.raises(Stop):
        fit(make_model(), (x, y), optimizer="sgd", lr=0.1, epochs=5, batch_size=BATCH,
            callbacks=[callback], quiet=True)
    assert [e for e, _ in seen] == [1, 2]
    assert all(r["epoch"] == e for e, r in seen)


class Interrupt(Exception):
    pass


INTERRUPT = {"calls": 0, "at": None}


def interrupting_loss(out, target):
    """Cross-entropy that raises on its n-th call, standing in for a crash mid-epoch."""
    INTERRUPT["calls"] += 1
    if INTERRUPT["calls"] == INTERRUPT["at"]:
        raise Interrupt
    return F.cross_entropy(out, target)


@pytest.mark.parametrize("opt_name", ["nesterov", "rmsprop-nesterov"])
def test_resume_after_a_crash_is_bit_identical_without_duplicate_records(tmp_path, opt_name):
    x, y = make_data()
    xv, yv = make_data(seed=5, n=20)
    settings = dict(optimizer=opt_name, lr=0.05, schedule="linear-decay", epochs=4,
                    batch_size=BATCH, seed=11, loss=interrupting_loss, checkpoint_every_steps=3,
                    early_stopping={"patience": 10}, quiet=True)
    model = make_model(dropout=0.3)
    twin = copy.deepcopy(model)
    fresh = copy.deepcopy(model)
    INTERRUPT.update(calls=0, at=None)
    full = fit(twin, (x, y), (xv, yv), run_dir=tmp_path / "full", **settings)
    # The loss runs once per step and once per validation: call 8 is step 7 (the 3rd batch of
    # epoch 2), so the run dies mid-epoch with the step-6 checkpoint as its last.
    INTERRUPT.update(calls=0, at=8)
    with pytest.raises(Interrupt):
        fit(model, (x, y), (xv, yv), run_dir=tmp_path / "cut", **settings)
    last = load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt")
    assert (last["step"], last["batches"]["epoch"], last["batches"]["position"]) == (6, 1, 2)
    INTERRUPT.update(calls=0, at=None)
    resumed = fit(fresh, (x, y), (xv, yv), run_dir=tmp_path / "cut", resume=True, **settings)
    assert_same_state(resumed.model, full.model)

    def without_time(path):
        epochs, steps, summary = read_metrics(path)
        strip = lambda r: {k: v for k, v in r.items() if k not in ("time", "wall_time")}  # noqa: E731
        return [strip(r) for r in epochs], steps, strip(summary)

    assert without_time(tmp_path / "cut" / "metrics.jsonl") == without_time(
        tmp_path / "full" / "metrics.jsonl")
    _, steps, _ = read_metrics(tmp_path / "cut" / "metrics.jsonl")
    assert [s["step"] for s in steps] == list(range(1, 4 * 4 + 1))
    assert [h["val_loss"] for h in resumed.history] == [h["val_loss"] for h in full.history]


def test_resume_rejects_missing_damaged_foreign_and_mismatched_checkpoints(tmp_path):
    x, y = make_data()
    settings = dict(optimizer="sgd", lr=0.1, epochs=1, batch_size=BATCH, quiet=True)
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        fit(make_model(), (x, y), run_dir=tmp_path / "none", resume=True, **settings)
    fit(make_model(), (x, y), run_dir=tmp_path / "run", **settings)
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    with pytest.raises(CheckpointError, match="with optimizer.lr=0.1, now optimizer.lr=0.2;"):
        fit(make_model(), (x, y), run_dir=tmp_path / "run", resume=True,
            **{**settings, "lr": 0.2})
    with pytest.raises(CheckpointError, match="does not fit this run"):
        fit(make_model(norm="layer"), (x, y), run_dir=tmp_path / "run", resume=True, **settings)
    content = last.read_bytes()
    last.write_bytes(content[: len(content) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        fit(make_model(), (x, y), run_dir=tmp_path / "run", resume=True, **settings)
    torch.save({"state_dict": {}}, last)
    with pytest.raises(CheckpointError, match="not a ravine checkpoint"):
        fit(make_model(), (x, y), run_dir=tmp_path / "run", resume=True, **settings)


def test_a_used_run_dir_needs_resume_or_overwrite(tmp_path):
    x, y = make_data()
    settings = dict(optimizer="sgd", lr=0.1, epochs=1, batch_size=BATCH, quiet=True,
                    run_dir=tmp_path / "run")
    fit(make_model(), (x, y), **settings)
    with pytest.raises(ValueError, match="already holds a run"):
        fit(make_model(), (x, y), **settings)
    again = fit(make_model(), (x, y), overwrite=True, **settings)
    epochs, _, _ = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert len(epochs) == len(again.history) == 1


def test_run_directory_files_and_report(tmp_path):
    x, y = make_data()
    xv, yv = make_data(seed=5, n=20)
    run = tmp_path / "run"
    result = fit(make_model(), (x, y), (xv, yv), test=(xv, yv), optimizer="adam", lr=0.01,
                 clip_norm=1.0, epochs=3, batch_size=BATCH, run_dir=run, quiet=True)
    for name in ("config.yaml", "metrics.jsonl", "report.md", "checkpoints/last.pt",
                 "checkpoints/best.pt"):
        assert (run / name).is_file(), name
    plots = sorted(p.name for p in (run / "plots").iterdir())
    assert plots == ["accuracy.png", "grad_norm.png", "loss.png", "lr.png"]
    epochs, steps, summary = read_metrics(run / "metrics.jsonl")
    assert epochs == json.loads(json.dumps(result.history))
    assert len(steps) == 3 * 4
    assert summary["test_acc"] == result.test["test_acc"]
    report = (run / "report.md").read_text()
    assert f"| test_acc (returned weights) | {result.test['test_acc']:.4g} |" in report
    assert "| returned weights | epoch 3 |" in report
    assert "![Gradient norm](plots/grad_norm.png)" in report


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(epochs=0), "fit: epochs: Input should be greater than or equal to 1, got 0"),
        (dict(batch_size=-1), "batch_size: Input should be greater than or equal to 1, got -1"),
        (dict(on_nonfinite="ignore"), "on_nonfinite: Input should be 'stop' or 'skip'"),
        (dict(accumulate=3), "fit: batch_size=100 must be divisible by accumulate=3"),
        (dict(precision="fp8"), "precision: Input should be 'fp32', 'bf16' or 'fp16'"),
        (dict(num_workers=-1), "num_workers: Input should be greater than or equal to 0"),
        (dict(optimizer="nesterof"), "did you mean 'nesterov'"),
        (dict(schedule="linear"), "did you mean 'linear-decay'"),
        (dict(loss="cross-entropy"), "did you mean 'cross_entropy'"),
        (dict(early_stopping={"monitor": "val_acc"}), "did you mean 'train_acc'"),
        (dict(resume=True), "resume=True needs run_dir"),
    ],
)
def test_invalid_options_are_rejected_by_name(kwargs, message):
    x, y = make_data()
    with pytest.raises(ValueError, match=message):
        fit(make_model(), (x, y), quiet=True, **kwargs)


def test_an_optimizer_instance_refuses_lr_and_weight_decay():
    x, y = make_data()
    model = make_model()
    with pytest.raises(ValueError, match="set them on the optimizer"):
        fit(model, (x, y), optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
            weight_decay=0.1, quiet=True)
