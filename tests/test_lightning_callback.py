"""ravine.integrations.lightning.DiagnosticsCallback: runs inside a Lightning fit, logs, reports,
and leaves the trained parameters bit-identical; ravine never imports Lightning on its own."""

from __future__ import annotations

import csv
import json
import logging
import subprocess
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ravine import optim

L = pytest.importorskip("lightning")
from lightning.pytorch.loggers import CSVLogger  # noqa: E402

from ravine.integrations.lightning import DiagnosticsCallback  # noqa: E402

N, D, K = 64, 5, 3


def data(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(N, D, generator=g), torch.randint(0, K, (N,), generator=g)


class Tiny(L.LightningModule):
    def __init__(self, with_loss_attr: bool = True) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(D, 8), nn.ReLU(), nn.Dropout(0.3), nn.Linear(8, K))
        if with_loss_attr:
            self.loss_fn = F.cross_entropy

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        # Nesterov: the parameters hold the interim point between steps
        return optim.create("nesterov", self.parameters(), lr=0.1, clip_norm=1.0)


def fit(tmp_path, callbacks, logger=False, module=None, accumulate=1) -> Tiny:
    module = module or Tiny()
    x, y = data(0)
    torch.manual_seed(1)  # the DataLoader's shuffling draws from the global RNG
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, y), batch_size=8, shuffle=True
    )
    trainer = L.Trainer(
        max_epochs=2,
        accelerator="cpu",
        devices=1,
        logger=logger,
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
        accumulate_grad_batches=accumulate,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's advice about workers
        logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
        trainer.fit(module, loader)
    return module


def test_callback_runs_logs_reports_and_leaves_training_bit_identical(tmp_path):
    plain = fit(tmp_path / "plain", [])
    log = tmp_path / "diag.jsonl"
    callback = DiagnosticsCallback(data(1), every=5, budget=20, log=log, batch_size=8, mode="train")
    logger = CSVLogger(tmp_path / "csv", name="run")
    monitored = fit(tmp_path / "monitored", [callback], logger=logger)
    for (name, a), b in zip(
        plain.state_dict().items(), monitored.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    # 16 optimizer steps (2 epochs of 8 batches): measurements at steps 5, 10 and 15
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["step"] for r in rows] == [5, 10, 15]
    assert callback.monitor.steps == 16
    assert len(callback.monitor.history()["loss_history"]) == 16
    with open(f"{logger.log_dir}/metrics.csv", newline="") as handle:
        logged = [r for r in csv.DictReader(handle) if r.get("diag/loss")]
    assert [int(r["step"]) for r in logged] == [5, 10, 15]
    assert [float(r["diag/loss"]) for r in logged] == pytest.approx(
        [r["numbers"]["loss"] for r in rows], rel=1e-6
    )
    # the report went to trainer.log_dir
    report = (tmp_path / "csv" / "run" / "version_0" / "monitor.md").read_text()
    assert "Findings at step 15" in report


def test_gradient_accumulation_counts_optimizer_steps(tmp_path):
    """accumulate_grad_batches=2: 16 batches are 8 optimizer steps; the monitor sees 8 losses,
    measures at steps 3 and 6, and training stays bit-identical to the run without it."""
    plain = fit(tmp_path / "plain", [], accumulate=2)
    callback = DiagnosticsCallback(data(1), every=3, budget=20, batch_size=8, mode="train")
    monitored = fit(tmp_path / "monitored", [callback], accumulate=2)
    for (name, a), b in zip(
        plain.state_dict().items(), monitored.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    assert callback.monitor.steps == 8
    assert len(callback.monitor.history()["loss_history"]) == 8
    assert [r["step"] for r in callback.monitor.records][:2] == [3, 6]


def test_report_dir_and_loss_fn_argument(tmp_path):
    callback = DiagnosticsCallback(
        data(1), loss_fn=F.cross_entropy, every=100, budget=10, report_dir=tmp_path / "report"
    )
    fit(tmp_path, [callback], module=Tiny(with_loss_attr=False))
    # nothing was due in 16 steps: the report measures once at the end
    assert [r["step"] for r in callback.monitor.records] == [16]
    assert (tmp_path / "report" / "monitor.md").exists()


def test_missing_loss_is_a_one_line_error(tmp_path):
    callback = DiagnosticsCallback(data(1), every=5)
    with pytest.raises(ValueError, match="needs loss_fn=..., or a loss_fn attribute on Tiny"):
        fit(tmp_path, [callback], module=Tiny(with_loss_attr=False))


def test_bad_option_is_refused_at_construction():
    with pytest.raises(ValueError, match="every must be an integer >= 1, got 0"):
        DiagnosticsCallback(data(1), every=0)


def test_ravine_never_imports_lightning():
    code = (
        "import sys, ravine, ravine.diagnostics, ravine.diagnostics.monitor, "
        "ravine.integrations; print('lightning' in sys.modules, "
        "any(m.startswith(('lightning', 'pytorch_lightning')) for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
