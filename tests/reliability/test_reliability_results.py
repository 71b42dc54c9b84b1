"""Silently wrong results found by the fault audit (issue 14): each now trains right or says so."""

from __future__ import annotations

import torch
from reliability_helpers import write_run_config
from torch import nn

from ravine import fit
from ravine.commands import main
from ravine.train.metrics import read_metrics


def regression_data(n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, generator=g)
    return x, x @ torch.tensor([1.0, -2.0, 0.5])


def test_float_targets_without_a_loss_train_with_mse():
    x, y = regression_data()
    torch.manual_seed(0)
    net = nn.Linear(3, 1)
    result = fit(net, (x, y), epochs=3, batch_size=16, optimizer="sgd", lr=0.1, quiet=True)
    torch.manual_seed(0)
    explicit = fit(nn.Linear(3, 1), (x, y), epochs=3, batch_size=16, optimizer="sgd", lr=0.1,
                   loss="mse", quiet=True)
    assert [r["train_loss"] for r in result.history] == [
        r["train_loss"] for r in explicit.history]
    assert result.history[0]["train_loss"] > 0 and result.history[0]["grad_norm"] > 0


def test_integer_targets_without_a_loss_keep_cross_entropy():
    x, _ = regression_data()
    y = (x[:, 0] > 0).long()
    torch.manual_seed(0)
    result = fit(nn.Linear(3, 2), (x, y), epochs=1, batch_size=16, quiet=True)
    torch.manual_seed(0)
    explicit = fit(nn.Linear(3, 2), (x, y), epochs=1, batch_size=16, loss="cross_entropy",
                   quiet=True)
    assert result.history[0]["train_loss"] == explicit.history[0]["train_loss"]
    assert "train_acc" in result.history[0]


def test_a_loss_that_cannot_move_the_weights_is_reported(tmp_path, capsys):
    x, y = regression_data()
    # Cross-entropy over one output column is identically 0, whatever the weights.
    fit(nn.Linear(3, 1), (x, y.unsqueeze(1)), epochs=1, batch_size=16, loss="cross_entropy",
        run_dir=tmp_path / "run", quiet=True)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ravine: warning: the training loss is exactly 0")
    log = (tmp_path / "run" / "metrics.jsonl").read_text()
    assert '"kind": "warning"' in log


def test_ravine_train_on_regression_data_without_a_loss_learns(tmp_path, capsys):
    config = write_run_config(tmp_path)
    assert main(["train", str(config), "--quiet"]) == 0
    epochs, _, _ = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert epochs[0]["train_loss"] > 0 and epochs[0]["grad_norm"] > 0
    assert "warning" not in capsys.readouterr().err
