"""Diagnostics during training (fit's ``diagnostics=``) and ``ravine diagnose RUN_DIR``."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from ravine import data, diagnostics, fit, models, optim
from ravine.commands import main
from ravine.commands.diagnose import diagnose_run
from ravine.data.sources import fixed_examples
from ravine.train.checkpoint import load_checkpoint
from ravine.train.diagnostics_schedule import DiagnosticsSchedule


def exact_extremes(model, x, y) -> tuple[float, float]:
    """λmax and λmin of the mean cross-entropy Hessian, from the dense matrix."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    flat0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).double()
    model = model.double().eval()

    def loss(flat):
        params, i = {}, 0
        for n, s in zip(names, shapes, strict=True):
            params[n] = flat[i : i + s.numel()].reshape(s)
            i += s.numel()
        out = torch.func.functional_call(model, params, (x.double(),))
        return torch.nn.functional.cross_entropy(out, y)

    h = torch.autograd.functional.hessian(loss, flat0)
    ev = torch.linalg.eigvalsh(h)
    return float(ev[-1]), float(ev[0])


@pytest.fixture(scope="module")
def digits():
    return data.load("digits", seed=0, val_fraction=0.2)


def small_net(seed: int = 0):
    torch.manual_seed(seed)
    return models.mlp(64, [8], 10, activation="tanh")


def test_measuring_does_not_change_training(digits):
    runs = []
    for diag in (None, dict(every=1, examples=128)):
        net = small_net()
        result = fit(net, digits.train, digits.val, optimizer="nesterov", lr=0.05, epochs=3,
                     batch_size=64, seed=1, diagnostics=diag, quiet=True)
        runs.append(result)
    for a, b in zip(runs[0].model.parameters(), runs[1].model.parameters(), strict=True):
        assert torch.equal(a, b)
    assert all("diag_lambda_max" in r for r in runs[1].history)
    assert not any(k.startswith("diag_") for r in runs[0].history for k in r)
    for with_diag, without in zip(runs[1].history, runs[0].history, strict=True):
        assert with_diag["val_loss"] == without["val_loss"]


def test_recorded_lambda_max_matches_exact_hessian_at_true_parameters(digits):
    schedule = DiagnosticsSchedule(every=2, what=("lambda_max", "lambda_min"), examples=96,
                                   max_hvps=200)
    net = small_net()
    result = fit(net, digits.train, optimizer="nesterov", lr=0.05, epochs=2, batch_size=64,
                 seed=3, diagnostics=schedule, quiet=True)
    record = result.history[-1]
    assert "diag_lambda_max" in record and "diag_lambda_max" not in result.history[0]
    # fit returns the model at the true θ; the measurement was taken there.
    idx = fixed_examples(len(digits.train), schedule.examples, seed=3)
    x, y = digits.train.x[idx], digits.train.y[idx]
    lmax, lmin = exact_extremes(result.model, x, y)
    assert record["diag_lambda_max"] == pytest.approx(lmax, rel=1e-3)
    assert record["diag_lambda_min"] == pytest.approx(lmin, rel=1e-2, abs=1e-4 * lmax)
    assert record["diag_lr_bound"] == pytest.approx(2 / record["diag_lambda_max"])


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (dict(evry=2), "did you mean 'every'"),
        (dict(every=0), "diagnostics.every must be an integer >= 1, got 0"),
        (dict(what=["lamda_max"]), "lamda_max"),
        ("often", "diagnostics must be a dict"),
    ],
)
def test_bad_diagnostics_options(option, message):
    with pytest.raises(ValueError, match=message):
        DiagnosticsSchedule.from_option(option)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("diag")
    config = {
        "data": {"name": "digits", "val_fraction": 0.2},
        "model": {"kind": "mlp", "hidden": [8], "activation": "tanh"},
        "optimizer": {"name": "rmsprop-nesterov", "lr": 0.01, "momentum": 0.9},
        "epochs": 2,
        "batch_size": 64,
        "clip_norm": 1.0,
        "run_dir": str(root / "run"),
    }
    path = root / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["train", str(path), "--quiet"]) == 0
    return root / "run"


def test_diagnose_last_checkpoint_at_true_parameters(run_dir):
    result = diagnose_run(run_dir, checkpoint="last", examples=100)
    written = json.loads((run_dir / "diagnostics.json").read_text())
    assert written["numbers"]["lambda_max"] == pytest.approx(result.extremes.lambda_max)
    # Rebuild θ = θ̃ - s·v from the checkpoint by hand and compare with the exact Hessian.
    ckpt = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    net = small_net()
    net.load_state_dict(ckpt["model"])
    opt = optim.RMSPropNesterov(models.param_groups(net, 0.0), lr=0.01, clip_norm=1.0)
    opt.load_state_dict(ckpt["optimizer"])
    with torch.no_grad():
        for p in net.parameters():
            state = opt.state[p]
            p.sub_(state["shift"] * state["velocity"])
    splits = data.load("digits", seed=0, val_fraction=0.2)
    n = len(splits.train)
    assert n > 100  # the report subsamples; compare on the full training set instead
    lmax, _ = exact_extremes(net, splits.train.x, splits.train.y)
    full = diagnose_run(run_dir, checkpoint="last", examples=n)
    assert full.extremes.lambda_max == pytest.approx(lmax, rel=1e-3)
    report = (run_dir / "report.md").read_text()
    assert "## Diagnostics at the last checkpoint" in report
    assert "plots/hessian_spectrum.png" in report
    assert (run_dir / "plots" / "gradient_noise.png").stat().st_size > 0


def test_diagnose_cli_errors_are_one_line(run_dir, tmp_path, capsys):
    assert main(["diagnose", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no such run directory" in err
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.yaml").write_text((run_dir / "config.yaml").read_text())
    assert main(["diagnose", str(tmp_path / "empty"), "--checkpoint", "best"]) == 2
    assert "no such checkpoint" in capsys.readouterr().err
    assert main(["diagnose", str(run_dir), "--checkpoint", "init", "--examples", "64"]) == 0
    out = capsys.readouterr().out
    assert "(init):" in out and "wrote:" in out


def test_diagnose_json_uses_the_runs_own_optimizer_and_step(run_dir, capsys):
    assert main(["diagnose", str(run_dir), "--json", "--examples", "128"]) == 0
    payload = json.loads(capsys.readouterr().out)
    numbers = payload["numbers"]
    # the run's recorded optimizer (adaptive: preconditioned sharpness) at the last step's lr
    assert numbers["optimizer"] == "rmsprop-nesterov"
    assert numbers["sharpness_kind"] == "preconditioned"
    steps = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    last_lr = [r["lr"] for r in steps if r.get("kind") == "step"][-1]
    assert numbers["lr"] == pytest.approx(last_lr)
    assert numbers["clip_norm"] == 1.0 and 0.0 <= numbers["clip_fraction"] <= 1.0
    assert payload["findings"], "a diagnosis always has at least one finding"
    assert all(f["code"] in diagnostics.CODES for f in payload["findings"])
    written = json.loads((run_dir / "diagnostics.json").read_text())
    assert [f["code"] for f in written["findings"]] == [f["code"] for f in payload["findings"]]


def test_diagnose_a_config_that_differs_from_the_run_uses_the_run(run_dir, tmp_path, capsys):
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    config["optimizer"] = {"name": "sgd", "lr": 0.5}
    path = tmp_path / "changed.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["diagnose", str(path), "--examples", "64"]) == 0
    out = capsys.readouterr().out
    assert "differs from the run's recorded one" in out and "optimizer" in out
    written = json.loads((run_dir / "diagnostics.json").read_text())
    assert written["numbers"]["optimizer"] == "rmsprop-nesterov"
