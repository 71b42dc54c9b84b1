"""Diagnostics on non-finite inputs fail with one line naming them (not "ill-conditioned")."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from reliability_helpers import write_run_config
from torch import nn

from ravine import diagnostics
from ravine.commands import EXIT_USAGE, main
from ravine.train.checkpoint import load_checkpoint, save_checkpoint


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 3, generator=g)
    return x, x.sum(1, keepdim=True)


@pytest.mark.parametrize("where", ["x", "y"])
def test_hessian_extremes_on_nan_data_names_the_input(where):
    x, y = batch()
    (x if where == "x" else y)[3, 0] = math.nan
    with pytest.raises(ValueError, match=f"batch 0 of data: {where} holds 1 non-finite values"):
        diagnostics.hessian_extremes(nn.Linear(3, 1), F.mse_loss, (x, y))


def test_hessian_extremes_on_nan_weights_names_the_parameter():
    net = nn.Linear(3, 1)
    with torch.no_grad():
        net.bias.fill_(math.inf)
    with pytest.raises(ValueError, match="parameter 'bias' of the model holds non-finite"):
        diagnostics.hessian_extremes(net, F.mse_loss, batch())


def test_diagnose_a_checkpoint_with_nan_weights_exits_2_in_one_line(tmp_path, capsys):
    config = write_run_config(tmp_path, epochs=1)
    assert main(["train", str(config), "--quiet"]) == 0
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    ckpt = load_checkpoint(last)
    name = next(iter(ckpt["model"]))
    ckpt["model"][name].fill_(math.nan)
    save_checkpoint(ckpt, last)
    capsys.readouterr()
    assert main(["diagnose", str(tmp_path / "run"), "--examples", "64"]) == EXIT_USAGE
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "non-finite" in err[0], err
