"""Counterfactual forks: ``ravine.diagnostics.probe.probe`` and ``ravine probe RUN_DIR``."""

from __future__ import annotations

import copy
import json
import math
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from ravine import models, optim
from ravine.commands import EXIT_USAGE, main
from ravine.commands._runload import load_run
from ravine.commands.probe import finding_fixes, parse_fix
from ravine.data import EpochBatches
from ravine.data.sources import fixed_examples
from ravine.diagnostics.probe import probe
from ravine.train.checkpoint import load_checkpoint, save_checkpoint

N, D, C = 120, 4, 3


@pytest.fixture(scope="module")
def problem() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, D, generator=g, dtype=torch.float64)
    w = torch.randn(D, C, generator=g, dtype=torch.float64)
    y = (x @ w + 0.5 * torch.randn(N, C, generator=g, dtype=torch.float64)).argmax(1)
    return x, y


def trained(problem, name: str = "momentum", lr: float = 0.1, steps: int = 4, **hp):
    """A float64 MLP and its optimizer after a few steps (so the optimizer has state)."""
    x, y = problem
    torch.manual_seed(1)
    net = models.mlp(D, [6], C).double()
    opt = optim.create(name, net.parameters(), lr=lr, **hp)
    for k in range(steps):
        opt.zero_grad()
        F.cross_entropy(net(x[16 * k : 16 * (k + 1)]), y[16 * k : 16 * (k + 1)]).backward()
        opt.step()
    return net, opt


def example_stream(n: int, total: int, batch_size: int, seed: int) -> list[torch.Tensor]:
    """The index batches a fork of ``batch_size`` sees: epochs of EpochBatches, cut at total."""
    sampler = EpochBatches(n, batch_size, seed=seed)
    out, seen, epoch = [], 0, 0
    while seen < total:
        order = sampler.order(epoch)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size][: total - seen]
            out.append(idx)
            seen += len(idx)
            if seen == total:
                return out
        epoch += 1
    return out


@torch.no_grad()
def eval_loss(net, x, y) -> float:
    net.eval()
    loss = float(F.cross_entropy(net(x), y))
    net.train()
    return loss


def by_hand(net, opt, x, y, batches, clip=None, **group) -> list[float]:
    """Loss on all of (x, y) at the start and after every step, training a copy by hand
    (with ``group`` set in every parameter group and gradients clipped to ``clip``)."""
    memo: dict = {}
    net, opt = copy.deepcopy(net, memo), copy.deepcopy(opt, memo)
    for g in opt.param_groups:
        g.update(group)
    losses = [eval_loss(net, x, y)]
    for idx in batches:
        opt.zero_grad()
        F.cross_entropy(net(x[idx]), y[idx]).backward()
        if clip is not None:
            optim.clip_grad_norm_(list(net.parameters()), clip)
        opt.step()
        losses.append(eval_loss(net, x, y))
    return losses


# --- the library ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["momentum", "adam"])
def test_baseline_fork_is_bit_identical_to_training_a_copy_by_hand(problem, name):
    x, y = problem
    net, opt = trained(problem, name, lr=0.05)
    # 10 steps of 16 cross the epoch boundary (120 = 7 x 16 + 8) and end on a cut batch.
    result = probe(
        net,
        opt,
        (x, y),
        loss_fn=F.cross_entropy,
        batch_size=16,
        steps=10,
        eval_every=1,
        fixes=[],
        seed=3,
    )
    batches = example_stream(N, 160, 16, seed=3)
    assert [len(b) for b in batches] == [16] * 7 + [8, 16, 16, 8]
    expected = by_hand(net, opt, x, y, batches)
    fork = result.baseline
    assert [loss for _, loss in fork.losses] == expected
    assert [n for n, _ in fork.losses] == [0, *np.cumsum([len(b) for b in batches]).tolist()]
    assert fork.examples == 160 and fork.steps == len(batches)


def test_a_fork_with_another_batch_size_sees_the_same_examples(problem):
    x, y = problem
    net, opt = trained(problem)
    ids = torch.arange(N)
    seen: dict[str, list[torch.Tensor]] = {}
    pending: list[torch.Tensor] = []

    def compute_loss(model, batch):
        xb, ib = batch
        if model.training:
            pending.append(ib.clone())
        return F.cross_entropy(model(xb), y[ib])

    def progress(label, n):
        # A step is reported after it is taken: its batch is the last one computed (the
        # untimed warm-up step of each fork comes before the fork's first step).
        seen.setdefault(label, []).append(pending[-1])
        pending.clear()

    result = probe(
        net,
        opt,
        (x, ids),
        compute_loss=compute_loss,
        batch_size=16,
        steps=12,
        fixes=[{"batch_size": 40}, {"batch_size": 7}],
        seed=5,
        progress=progress,
    )
    expected = torch.cat(example_stream(N, 12 * 16, 16, seed=5))
    assert set(seen) == {"baseline", "batch 40", "batch 7"}
    for label, batches in seen.items():
        assert torch.equal(torch.cat(batches), expected), label
        assert result.fork(label).examples == len(expected)
    assert [len(b) for b in seen["batch 40"]] == [40, 40, 40, 40, 32]
    assert [len(b) for b in seen["baseline"]] != [len(b) for b in seen["batch 7"]]


def test_lr_above_the_stability_bound_diverges_and_ranks_last(problem):
    x, _ = problem
    g = torch.Generator().manual_seed(2)
    target = x @ torch.randn(D, 1, generator=g, dtype=torch.float64)
    torch.manual_seed(0)
    net = nn.Linear(D, 1).double()
    lr = 0.1
    opt = optim.SGD(net.parameters(), lr=lr)
    # Exact Hessian of the mean squared error in (w, b): GD is stable iff lr < 2 / λmax.
    flat = torch.cat([net.weight.detach().reshape(-1), net.bias.detach()])

    def loss(theta):
        return ((x @ theta[:D] + theta[D] - target[:, 0]) ** 2).mean()

    lam_max = float(np.linalg.eigvalsh(torch.autograd.functional.hessian(loss, flat).numpy())[-1])
    assert 0.5 * lr < lr < 2 / lam_max < 1000 * lr
    result = probe(
        net,
        opt,
        (x, target),
        loss_fn=F.mse_loss,
        batch_size=N,
        steps=30,
        fixes=[{"lr_scale": 1000}, {"lr_scale": 0.5}],
    )
    blown = result.fork("lr x 1000")
    assert blown.diverged and blown.helped is False and math.isnan(blown.decrease)
    end = blown.final_loss
    assert not math.isfinite(end) or end > 1e6 * max(blown.initial_loss, 1)
    assert blown.examples < 30 * N  # stopped early
    assert result.ranking[-1] == "lr x 1000"
    for label in ("baseline", "lr x 0.5"):
        fork = result.fork(label)
        assert not fork.diverged and fork.examples == 30 * N
        assert fork.final_loss < fork.initial_loss
    assert result.fork("lr x 0.5").helped is False  # full batch, stable: smaller steps lose
    assert result.best is result.baseline
    assert blown.lr == pytest.approx(1000 * lr) and result.fork("lr x 0.5").lr == 0.5 * lr


def snapshot(net, opt):
    return (
        copy.deepcopy(net.state_dict()),
        copy.deepcopy(opt.state_dict()),
        [p.grad.clone() for p in net.parameters()],
        net.training,
        [id(p) for g in opt.param_groups for p in g["params"]],
        torch.get_rng_state(),
    )


def assert_same(a, b):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            assert_same(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for u, v in zip(a, b, strict=True):
            assert_same(u, v)
    else:
        assert a == b


def test_the_users_model_and_optimizer_are_unchanged(problem):
    x, y = problem
    net, opt = trained(problem, "nesterov", lr=0.1, clip_norm=5.0)
    before = snapshot(net, opt)
    result = probe(
        net,
        opt,
        (x, y),
        loss_fn=F.cross_entropy,
        batch_size=16,
        steps=4,
        fixes=[
            {"lr": 0.3},
            {"momentum": 0.5, "clip_norm": 0.1},
            {"optimizer": "adam"},
            {"batch_size": 32, "weight_decay": 1e-3},
        ],
    )
    assert len(result.forks) == 5
    assert_same(snapshot(net, opt), before)


@pytest.mark.parametrize("name", ["nesterov", "rmsprop-nesterov"])
def test_interim_point_optimizers_are_measured_at_the_true_parameters(problem, name):
    x, y = problem
    net, opt = trained(problem, name, lr=0.05 if name == "nesterov" else 0.01, steps=6)
    memo: dict = {}
    true_net, true_opt = copy.deepcopy(net, memo), copy.deepcopy(opt, memo)
    true_opt.to_true_params()
    at_true, at_interim = eval_loss(true_net, x, y), eval_loss(net, x, y)
    assert abs(at_true - at_interim) > 1e-6  # the interim point is measurably elsewhere
    result = probe(
        net,
        opt,
        (x, y),
        loss_fn=F.cross_entropy,
        batch_size=16,
        steps=2,
        fixes=[{"lr_scale": 2.0}, {"optimizer": "sgd"}],
    )
    for fork in result.forks:
        assert fork.losses[0] == (0, at_true), fork.label


def test_another_optimizer_starts_fresh_and_the_same_one_keeps_its_state(problem):
    x, y = problem
    net, opt = trained(problem, "momentum", lr=0.1)
    result = probe(
        net,
        opt,
        (x, y),
        loss_fn=F.cross_entropy,
        batch_size=16,
        steps=5,
        eval_every=1,
        seed=1,
        fixes=[{"optimizer": "adam", "lr": 0.01}, {"optimizer": "momentum"}],
    )
    batches = example_stream(N, 80, 16, seed=1)
    fresh = copy.deepcopy(net)
    expected = by_hand(fresh, optim.Adam(fresh.parameters(), lr=0.01), x, y, batches)
    assert [v for _, v in result.fork("adam, lr 0.01").losses] == expected
    assert result.fork("adam, lr 0.01").optimizer == "Adam"
    # Same class: the velocity is carried, so the fork is the baseline.
    assert result.fork("momentum").losses == result.baseline.losses
    # And the velocity matters: a fresh Momentum would differ.
    fresh = copy.deepcopy(net)
    restarted = by_hand(fresh, optim.Momentum(fresh.parameters(), lr=0.1), x, y, batches)
    assert restarted != [v for _, v in result.baseline.losses]


def test_clip_norm_momentum_and_weight_decay_fixes(problem):
    x, y = problem
    batches = example_stream(N, 64, 16, seed=0)
    fix = {"clip_norm": 0.05, "weight_decay": 0.01}
    # ravine's SGD clips itself: the fork equals SGD built with those options.
    net, opt = trained(problem, "sgd", lr=0.5)
    got = probe(
        net, opt, (x, y), loss_fn=F.cross_entropy, batch_size=16, steps=4, eval_every=1, fixes=[fix]
    ).fork("clip_norm 0.05, weight_decay 0.01")
    fresh = copy.deepcopy(net)
    clipped = optim.SGD(fresh.parameters(), lr=0.5, clip_norm=0.05, weight_decay=0.01)
    assert [v for _, v in got.losses] == by_hand(fresh, clipped, x, y, batches)
    assert [v for _, v in got.losses] != by_hand(net, opt, x, y, batches)
    # A torch optimizer has no clip_norm: the fork's loop clips; its momentum buffer carries.
    torch.manual_seed(1)
    net = models.mlp(D, [6], C).double()
    opt = torch.optim.SGD(net.parameters(), lr=0.5, momentum=0.5)
    for k in range(3):
        opt.zero_grad()
        F.cross_entropy(net(x[k::3]), y[k::3]).backward()
        opt.step()
    fixes = [{"clip_norm": 0.05, "momentum": 0.8}]
    got = probe(
        net, opt, (x, y), loss_fn=F.cross_entropy, batch_size=16, steps=4, eval_every=1, fixes=fixes
    ).fork("clip_norm 0.05, momentum 0.8")
    expected = by_hand(net, opt, x, y, batches, clip=0.05, momentum=0.8)
    assert [v for _, v in got.losses] == expected
    assert expected != by_hand(net, opt, x, y, batches, momentum=0.8)


class Rows(Dataset):
    """A plain map-style Dataset of (x, y) items."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def test_datasets_give_the_same_forks_as_tensors(problem):
    x, y = problem
    net, opt = trained(problem)
    runs = [
        probe(
            net,
            opt,
            data,
            loss_fn=F.cross_entropy,
            batch_size=16,
            steps=6,
            eval_every=16,
            fixes=[{"batch_size": 24}],
            seed=2,
        )
        for data in ((x, y), TensorDataset(x, y), Rows(x, y))
    ]
    for other in runs[1:]:
        for a, b in zip(runs[0].forks, other.forks, strict=True):
            assert a.losses == b.losses


def test_eval_data_and_default_subset(problem):
    x, y = problem
    big_x, big_y = x.repeat(10, 1), y.repeat(10)  # 1200 examples: the default takes 1024
    net, opt = trained(problem)
    result = probe(
        net, opt, (big_x, big_y), loss_fn=F.cross_entropy, batch_size=16, steps=1, fixes=[], seed=4
    )
    idx = fixed_examples(len(big_x), 1024, seed=4)
    assert result.eval_examples == 1024
    assert result.baseline.initial_loss == eval_loss(net, big_x[idx], big_y[idx])
    given = probe(
        net,
        opt,
        (big_x, big_y),
        loss_fn=F.cross_entropy,
        batch_size=16,
        steps=1,
        fixes=[],
        eval_data=(x[:50], y[:50]),
    )
    assert given.eval_examples == 50
    assert given.baseline.initial_loss == eval_loss(net, x[:50], y[:50])


def test_fixes_that_cannot_be_probed_are_listed_not_run(problem):
    x, y = problem
    net, opt = trained(problem, "sgd", lr=0.1, steps=1)
    result = probe(
        net,
        opt,
        (x, y),
        loss_fn=F.cross_entropy,
        batch_size=16,
        steps=2,
        fixes=[
            {"norm": "batch"},
            {"momentum": 0.9},
            ("halve", {"lr_scale": 0.5}),
            {"lr_scale": 0.5},
            {"optimizer": "adam", "momentum": 0.9},
        ],
    )
    assert [f.label for f in result.forks] == ["baseline", "halve", "lr x 0.5"]
    reasons = {label: reason for label, _, reason in result.not_probeable}
    assert "did you mean 'clip_norm'" in reasons["norm='batch'"]
    assert reasons["momentum 0.9"] == "SGD has no momentum"
    assert reasons["adam, momentum 0.9"] == "adam has no momentum"
    assert any("norm='batch' was not probed" in s for s in result.verdicts())


@pytest.mark.parametrize(
    ("fix", "message"),
    [
        ({"lr": -0.1}, "fix lr must be a finite number > 0, got -0.1"),
        ({"lr_scale": 0}, "fix lr_scale must be a finite number > 0, got 0"),
        ({"momentum": 1.0}, "fix momentum must be a finite number >= 0 and < 1, got 1.0"),
        ({"batch_size": 0}, "fix batch_size must be an integer >= 1, got 0"),
        ({"optimizer": "adamm"}, "did you mean 'adam'"),
        ({"lr": 0.1, "lr_scale": 2}, "both lr and lr_scale"),
        ("lr=0.1", "each fix must be a dict"),
    ],
)
def test_bad_fix_values_raise_one_line(problem, fix, message):
    net, opt = trained(problem, "momentum", steps=1)
    with pytest.raises(ValueError, match=message):
        probe(net, opt, problem, loss_fn=F.cross_entropy, batch_size=16, steps=1, fixes=[fix])


def test_report_plot_and_dict(problem, tmp_path):
    x, y = problem
    net, opt = trained(problem, "sgd", lr=0.02)
    result = probe(
        net,
        opt,
        (x, y),
        loss_fn=F.cross_entropy,
        batch_size=16,
        steps=8,
        fixes=[{"lr_scale": 4.0}, {"lr_scale": 0.5}],
    )
    base, up, down = result.forks
    assert up.helped is (up.final_loss < base.final_loss)
    assert down.helped is (down.final_loss < base.final_loss)
    assert result.ranking == sorted(
        [f.label for f in result.forks], key=lambda label: -result.fork(label).decrease_per_example
    )
    for fork in (up, down):
        assert fork.decrease == fork.initial_loss - fork.final_loss
        assert fork.decrease_per_second == fork.decrease / fork.seconds
    text = result.to_markdown()
    verb = "helped" if up.helped else "did not help"
    assert (
        f"lr x 4 {verb}: loss {up.initial_loss:.4g} -> {up.final_loss:.4g} vs baseline "
        f"{base.final_loss:.4g} after {8 * 16:,} examples."
    ) in text
    data = json.loads(json.dumps(result.to_dict()))
    assert data["ranking"] == result.ranking and data["best"] == result.best.label
    assert [f["label"] for f in data["forks"]] == ["baseline", "lr x 4", "lr x 0.5"]
    path = result.plot(tmp_path / "plots" / "p.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(repr(result)) < 120 and "lr x" in repr(up)


# --- the command ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("probe")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((150, 5))
    np.savez(root / "data.npz", x=x, y=(x @ rng.standard_normal((5, 3))).argmax(axis=1))
    config = {
        "data": {"name": str(root / "data.npz"), "val_fraction": 0.2},
        "model": {"kind": "mlp", "hidden": [8]},
        "optimizer": {"name": "nesterov", "lr": 0.05},
        "schedule": "linear-decay",
        "epochs": 2,
        "batch_size": 20,
        "seed": 4,
        "run_dir": str(root / "run"),
    }
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    assert main(["train", str(root / "config.yaml"), "--quiet"]) == 0
    return root / "run"


def test_ravine_probe_writes_its_files_and_starts_at_the_checkpoint(run_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["probe", str(run_dir), "--steps", "3", "--quiet", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    data = json.loads((out / "probe.json").read_text())
    # the default forks: lr x 0.5, lr x 2 and the fix of every finding of diagnose() there
    loaded = load_run(run_dir, "last", true_params=False)
    findings = finding_fixes(loaded, torch.nn.functional.cross_entropy, seed=4)
    labels = ["baseline", "lr x 0.5", "lr x 2"] + [code for code, _ in findings]
    assert [f["label"] for f in data["forks"]] == labels
    assert [f["fix"] for f in data["forks"][3:]] == [fix for _, fix in findings]
    assert all(f["examples"] == 3 * 20 for f in data["forks"])
    assert "lr x 0.5" in printed and "wrote:" in printed
    assert "lr x 2" in (out / "probe.md").read_text()
    assert (out / "plots" / "probe.png").stat().st_size > 0
    # The baseline starts from the checkpoint at the true θ of the Nesterov run.
    loaded = load_run(run_dir, "last")
    train = loaded.run.splits.train
    idx = fixed_examples(len(train), 1024, seed=4)
    expected = eval_loss(loaded.model, train.x[idx], train.y[idx])
    assert data["forks"][0]["losses"][0] == [0, expected]
    # ... and continues at the learning rate the schedule had reached.
    ckpt = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert data["forks"][0]["lr"] == ckpt["optimizer"]["param_groups"][0]["lr"] < 0.05


def test_ravine_probe_fixes_json_and_seed(run_dir, tmp_path, capsys):
    argv = [
        "probe",
        str(run_dir),
        "--steps",
        "2",
        "--quiet",
        "--out",
        str(tmp_path),
        "--fix",
        "batch_size=40,lr=0.02",
        "--fix",
        "optimizer=adam",
        "--json",
        "--seed",
        "1",
    ]
    assert main(argv) == 0
    data = json.loads(capsys.readouterr().out)
    labels = [f["label"] for f in data["forks"]]
    assert labels == ["baseline", "batch 40, lr 0.02", "adam"] and data["seed"] == 1
    assert data["forks"][1]["batch_size"] == 40 and data["forks"][2]["optimizer"] == "Adam"
    assert json.loads((tmp_path / "probe.json").read_text())["ranking"] == data["ranking"]


def test_parse_fix():
    assert parse_fix("batch_size=256,lr=0.2") == {"batch_size": 256, "lr": 0.2}
    assert parse_fix("optimizer=adam") == {"optimizer": "adam"}
    with pytest.raises(ValueError, match="did you mean 'lr'"):
        parse_fix("lrr=0.1")
    with pytest.raises(ValueError, match="expects KEY=VALUE"):
        parse_fix("lr")


@pytest.mark.parametrize("fix", ["lrr=0.1", "lr", "lr=-1", "optimizer=adamm"])
def test_bad_fix_on_the_command_line_exits_2_in_one_line(run_dir, tmp_path, capsys, fix):
    assert (
        main(
            ["probe", str(run_dir), "--steps", "1", "--quiet", "--fix", fix, "--out", str(tmp_path)]
        )
        == EXIT_USAGE
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ravine probe: error:"), err


def _no_optimizer(run):
    path = run / "checkpoints" / "last.pt"
    ckpt = load_checkpoint(path)
    del ckpt["optimizer"]
    save_checkpoint(ckpt, path)
    return "has no optimizer state"


def _torn_metrics(run):
    path = run / "metrics.jsonl"
    text = path.read_text()
    path.write_text(text[: len(text) - 20])
    return "metrics.jsonl: line"


def _latin1_config(run):
    path = run / "config.yaml"
    path.write_bytes(path.read_bytes() + "# caf\xe9\n".encode("latin-1"))
    return "config.yaml: not UTF-8 text"


@pytest.mark.parametrize("command", ["probe", "diagnose"])
@pytest.mark.parametrize("damage", [_no_optimizer, _torn_metrics, _latin1_config])
def test_damaged_run_dirs_exit_2_in_one_line(run_dir, tmp_path, capsys, command, damage):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    fragment = damage(run)
    capsys.readouterr()
    argv = [command, str(run), "--out", str(tmp_path / "out")]
    argv += ["--steps", "1", "--quiet"] if command == "probe" else ["--examples", "16"]
    assert main(argv) == EXIT_USAGE
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fragment in err[0], err


def test_a_config_file_uses_the_runs_recorded_optimizer_and_names_the_mismatch(run_dir, tmp_path):
    config = yaml.safe_load((run_dir.parent / "config.yaml").read_text())
    config["optimizer"] = {"name": "adam", "lr": 0.001}
    path = tmp_path / "other.yaml"
    path.write_text(yaml.safe_dump(config))
    loaded = load_run(path, "last")
    assert type(loaded.optimizer) is optim.Nesterov
    assert loaded.mismatch.startswith(
        "optimizer.name: the run has 'nesterov', other.yaml has 'adam'"
    )
    assert load_run(run_dir.parent / "config.yaml", "last").mismatch is None
