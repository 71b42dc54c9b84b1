"""`ravine train` end to end, through real subprocesses where the process boundary matters."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from run_helpers import train_size

from ravine.commands import EXIT_NONFINITE, EXIT_USAGE, main
from ravine.train.checkpoint import load_checkpoint
from ravine.train.metrics import read_metrics

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def write_dataset(path: Path, n: int = 300, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 6))
    y = (x @ rng.standard_normal((6, 3)) + rng.standard_normal((n, 3))).argmax(axis=1)
    np.savez(path, x=x, y=y)
    return path


def write_config(tmp_path: Path, **changes) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    config = {
        "data": {"name": str(write_dataset(tmp_path / "data.npz")), "val_fraction": 0.2},
        "model": {"kind": "mlp", "hidden": [16], "norm": "batch", "dropout": 0.2},
        "optimizer": {"name": "nesterov", "lr": 0.05},
        "schedule": {"name": "linear-decay"},
        "epochs": 3,
        "batch_size": 20,
        "seed": 4,
        "run_dir": str(tmp_path / "run"),
    }
    config.update(changes)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def ravine(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ravine", *args], capture_output=True,
                          text=True, timeout=timeout, env=ENV)


def assert_one_line_error(proc: subprocess.CompletedProcess, code: int, *fragments: str) -> None:
    assert proc.returncode == code, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def model_state(run: Path, name: str = "last.pt") -> dict[str, torch.Tensor]:
    return load_checkpoint(run / "checkpoints" / name)["model"]


def test_train_writes_a_run_directory_and_reports_where(tmp_path):
    config = write_config(tmp_path)
    proc = ravine("train", str(config), "--set", "epochs=2", "--set", "optimizer.lr=0.02")
    assert proc.returncode == 0, proc.stderr
    run = tmp_path / "run"
    assert f"report: {run / 'report.md'}" in proc.stdout
    resolved = yaml.safe_load((run / "config.yaml").read_text())
    assert resolved["epochs"] == 2 and resolved["optimizer"]["lr"] == 0.02
    epochs, steps, summary = read_metrics(run / "metrics.jsonl")
    assert [e["epoch"] for e in epochs] == [1, 2]
    assert len(steps) == 2 * math.ceil(train_size(config) / 20)
    assert f"test_acc {summary['test_acc']:.4g}" in proc.stdout
    assert (run / "plots" / "loss.png").is_file() and (run / "checkpoints" / "best.pt").is_file()


@pytest.mark.slow
def test_resume_after_sigkill_is_bit_identical(tmp_path):
    settings = dict(epochs=6, batch_size=8, checkpoint_every_steps=7,
                    model={"kind": "mlp", "hidden": [64, 64], "norm": "batch", "dropout": 0.3})
    reference = write_config(tmp_path / "ref", **settings)
    killed = write_config(tmp_path / "cut", **settings)
    steps_per_epoch = math.ceil(train_size(killed) / 8)
    proc = subprocess.Popen([sys.executable, "-m", "ravine", "train", str(killed)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    metrics = tmp_path / "cut" / "run" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        text = metrics.read_text() if metrics.exists() else ""
        if text.count('"kind": "step"') >= steps_per_epoch + 10:  # well into epoch 2
            break
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    last = load_checkpoint(tmp_path / "cut" / "run" / "checkpoints" / "last.pt")
    assert 0 < last["step"] < 6 * steps_per_epoch  # killed mid-run, after some checkpoint
    assert read_metrics(metrics)[2] == {}  # the run had not finished

    resumed = ravine("train", str(killed), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    full = ravine("train", str(reference))
    assert full.returncode == 0, full.stderr
    for name in ("last.pt", "best.pt"):
        a, b = model_state(tmp_path / "cut" / "run", name), model_state(tmp_path / "ref" / "run",
                                                                       name)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), name

    def records(run: Path) -> list[dict]:
        lines = (run / "metrics.jsonl").read_text().splitlines()
        drop = ("time", "wall_time")
        return [{k: v for k, v in json.loads(line).items() if k not in drop} for line in lines]

    assert records(tmp_path / "cut" / "run") == records(tmp_path / "ref" / "run")


def test_bad_config_exits_2_with_one_line(tmp_path):
    config = write_config(tmp_path)
    proc = ravine("train", str(config), "--set", "optimizer.momentun=0.5")
    assert_one_line_error(proc, EXIT_USAGE, "optimizer.momentun: unknown key",
                          "did you mean 'momentum'?")


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["--set", "epochs=zero"], ["epochs: Input should be a valid integer"]),
        (["--set", "data.name=nowhere.npz"], ["nowhere.npz: file not found"]),
        (["--set", "model.kind=cnn1d"], ["cnn1d"]),
        (["--resume"], ["no checkpoint at"]),
    ],
)
def test_user_errors_exit_2_with_one_line(tmp_path, capsys, args, fragments):
    config = write_config(tmp_path)
    assert main(["train", str(config), *args]) == EXIT_USAGE
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ravine train: error: ")
    for fragment in fragments:
        assert fragment in err[0]


def test_missing_config_file_exits_2(tmp_path, capsys):
    assert main(["train", str(tmp_path / "absent.yaml")]) == EXIT_USAGE
    assert capsys.readouterr().err.strip() == (
        f"ravine train: error: config file {tmp_path / 'absent.yaml'} not found")


def test_damaged_checkpoints_exit_2_without_traceback(tmp_path, capsys):
    config = write_config(tmp_path, epochs=1)
    assert main(["train", str(config), "--quiet"]) == 0
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    content = last.read_bytes()
    last.write_bytes(content[:1000])
    proc = ravine("train", str(config), "--resume")
    assert_one_line_error(proc, EXIT_USAGE, "truncated or corrupted")
    capsys.readouterr()
    torch.save({"weights": torch.zeros(3)}, last)
    assert main(["train", str(config), "--resume"]) == EXIT_USAGE
    assert "is not a ravine checkpoint" in capsys.readouterr().err
    last.write_bytes(content)
    assert main(["train", str(config), "--resume", "--set", "seed=5"]) == EXIT_USAGE
    assert "the run was started with seed=4, now seed=5" in capsys.readouterr().err
    assert main(["train", str(config)]) == EXIT_USAGE
    assert "already holds a run" in capsys.readouterr().err


def test_nonfinite_loss_exits_3_naming_the_step_and_keeps_the_checkpoint(tmp_path):
    config = write_config(tmp_path, model={"kind": "mlp", "hidden": [16]},
                          optimizer={"name": "sgd", "lr": 1e30}, checkpoint_every_steps=1)
    proc = ravine("train", str(config))
    assert_one_line_error(proc, EXIT_NONFINITE, "non-finite training loss", "stopped")
    step = int(proc.stderr.split(" at step ")[1].split()[0])
    last = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert last["step"] == step - 1 >= 1
    assert all(torch.isfinite(v).all() for v in last["model"].values())
