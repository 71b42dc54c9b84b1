"""Data-parallel training: 2 gloo processes against 1, failures, resume (ravine.train.distributed).

The end-to-end tests start real processes through torch's launcher (`ravine train --nproc 2`
and plain `torchrun -m ravine train`) on CPU, and compare what they write with a single process.
"""

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
from torch.distributed.elastic.multiprocessing.errors import ProcessFailure

from ravine.commands import EXIT_NONFINITE, EXIT_USAGE, launcher, main
from ravine.commands.launcher import _root_cause
from ravine.train import distributed, fit
from ravine.train.checkpoint import load_checkpoint
from ravine.train.metrics import read_metrics

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", launcher.ERRORS_ENV)


def write_config(folder: Path, **changes) -> Path:
    """A small classification run: 301 examples, 6 features, 3 classes, an MLP without batch
    norm or dropout (so that 1 and 2 processes compute the same function)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((301, 6))
    y = (x @ rng.standard_normal((6, 3)) + rng.standard_normal((301, 3))).argmax(axis=1)
    np.savez(folder / "data.npz", x=x, y=y)
    config = {
        "data": {"name": str(folder / "data.npz"), "val_fraction": 0.2},
        "model": {"kind": "mlp", "hidden": [16]},
        "optimizer": {"name": "momentum", "lr": 0.05},
        "epochs": 2,
        "batch_size": 100,
        "seed": 3,
        "run_dir": str(folder / "run"),
    }
    config.update(changes)
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run(*args: str, launcher: str = "ravine", timeout: float = 120) -> subprocess.CompletedProcess:
    prefix = {
        "ravine": [sys.executable, "-m", "ravine"],
        "torchrun": [sys.executable, "-m", "torch.distributed.run", "--standalone",
                     "--nproc-per-node", "2", "-m", "ravine"],
    }[launcher]
    return subprocess.run([*prefix, *args], capture_output=True, text=True, timeout=timeout,
                          env=ENV)


def checkpoint(run_dir: Path) -> dict:
    return load_checkpoint(run_dir / "checkpoints" / "last.pt")


def records(run_dir: Path) -> list[dict]:
    """metrics.jsonl without the wall-clock fields."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in ("time", "wall_time")}
            for line in lines]


def assert_one_line(proc: subprocess.CompletedProcess, status: int, expected: str) -> None:
    assert proc.returncode == status, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [expected]


@pytest.fixture
def no_torchrun_env(monkeypatch):
    for name in TORCHRUN_VARS:
        monkeypatch.delenv(name, raising=False)


# --- the launcher's choice of the message to print --------------------------------------------


def failure(exitcode: int, timestamp: int) -> ProcessFailure:
    result = ProcessFailure(local_rank=0, pid=1, exitcode=exitcode, error_file="")
    result.timestamp = timestamp
    return result


def record(rank: int, text: str, t: float, *, peer: bool = False, status: int = 2) -> dict:
    return {"rank": rank, "message": f"ravine train: rank {rank}: {text}", "text": text,
            "exit_code": status, "peer_failure": peer, "time": t}


def test_root_cause_prefers_the_first_own_error_over_lost_peers_and_stopped_ranks():
    records_ = [record(0, "stopped: another process failed (gloo)", 1.0, peer=True, status=1),
                record(1, "error: boom", 2.0)]
    failures = {0: failure(1, 5), 1: failure(2, 5), 2: failure(-signal.SIGTERM, 4)}
    assert _root_cause(records_, failures, "train", 3) == ("ravine train: rank 1: error: boom", 2)


def test_root_cause_reports_an_error_all_ranks_raised_for_the_lowest_rank():
    text = "non-finite training loss (nan) at step 2 (epoch 1); stopped"
    records_ = [record(1, text, 1.0, status=3), record(0, text, 1.5, status=3)]
    assert _root_cause(records_, {}, "train", 2) == (f"ravine train: rank 0: {text}", 3)


def test_root_cause_names_a_rank_killed_without_a_word():
    records_ = [record(0, "stopped: another process failed (gloo)", 1.0, peer=True, status=1)]
    failures = {0: failure(1, 5), 1: failure(-signal.SIGKILL, 5)}
    assert _root_cause(records_, failures, "train", 2) == (
        "ravine train: rank 1 was killed by SIGKILL; stopped all 2 processes", 1)
    # Ranks stopped by torch's own SIGTERM are consequences; a lost peer is then all there is.
    failures = {0: failure(1, 5), 1: failure(-signal.SIGTERM, 5)}
    assert _root_cause(records_, failures, "train", 2) == (records_[0]["message"], 1)
    assert _root_cause([], {1: failure(7, 5)}, "train", 2) == (
        "ravine train: rank 1 exited with status 7; stopped all 2 processes", 1)


def test_workers_name_their_rank_and_launched_ones_record_instead_of_printing(
        tmp_path, monkeypatch, capsys, no_torchrun_env):
    launcher.report_failure("train", "error: plain", 2)
    assert capsys.readouterr().err == "ravine train: error: plain\n"
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    launcher.report_failure("train", "error: under torchrun", 2)
    assert capsys.readouterr().err == "ravine train: rank 1: error: under torchrun\n"
    monkeypatch.setenv(launcher.ERRORS_ENV, str(tmp_path))
    lost = RuntimeError("[pair.cc:553] Connection closed by peer [127.0.0.1]:1")
    launcher.report_failure("train", "stopped", 1, lost)
    assert capsys.readouterr().err == ""
    saved = json.loads((tmp_path / "rank-1.json").read_text())
    assert (saved["message"], saved["exit_code"], saved["peer_failure"]) == (
        "ravine train: rank 1: stopped", 1, True)


def test_peer_failures_are_told_from_root_causes():
    assert launcher.is_peer_failure(torch.distributed.DistBackendError("nccl timeout"))
    assert launcher.is_peer_failure(RuntimeError("Connection reset by peer"))
    assert not launcher.is_peer_failure(RuntimeError("mat1 and mat2 shapes cannot be"))
    assert not launcher.is_peer_failure(ValueError("Connection closed by peer"))


def test_worker_env_reads_torchrun_variables(monkeypatch, no_torchrun_env):
    assert distributed.worker_env() is None and not distributed.is_worker()
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert distributed.worker_env() == distributed.Communicator(3, 4, 1)
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(ValueError, match="RANK must be < WORLD_SIZE=4, got 4"):
        distributed.worker_env()
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="WORLD_SIZE must be an integer, got 'two'"):
        distributed.worker_env()


def test_rank_seeds_keep_rank_0_and_differ_between_ranks():
    seeds = [distributed.rank_seed(7, rank) for rank in range(4)]
    assert seeds[0] == 7 and len(set(seeds)) == 4
    assert distributed.rank_seed(8, 1) != seeds[1]


# --- what the parent checks before starting any process ---------------------------------------


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--nproc", "3"], "batch_size is the global minibatch and must be divisible by "
                           "--nproc, got batch_size=100, --nproc=3"),
        (["--nproc", "2", "--set", "sync_batchnorm=true"],
         "sync_batchnorm needs CUDA devices (torch's SyncBatchNorm does not run on cpu)"),
    ],
)
def test_launch_options_are_checked_before_starting_processes(tmp_path, capsys, args, expected,
                                                             no_torchrun_env):
    config = write_config(tmp_path)
    assert main(["train", str(config), *args]) == EXIT_USAGE
    assert expected in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_nproc_under_torchrun_is_refused(tmp_path, monkeypatch, capsys):
    config = write_config(tmp_path)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.delenv(launcher.ERRORS_ENV, raising=False)
    assert main(["train", str(config), "--nproc", "2"]) == EXIT_USAGE
    assert "--nproc starts its own processes; under torchrun leave it out" in (
        capsys.readouterr().err)


def test_fit_validates_sync_batchnorm():
    x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))
    with pytest.raises(ValueError, match="sync_batchnorm: Input should be a valid boolean"):
        fit(torch.nn.Linear(3, 2), (x, y), sync_batchnorm="yes", quiet=True)


# --- real processes ---------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    "launcher, optimizer, clip_norm",
    [
        ("ravine", {"name": "momentum", "lr": 0.05}, 0.5),
        ("torchrun", {"name": "rmsprop-nesterov", "lr": 0.01}, None),
    ],
)
def test_two_processes_train_like_one(tmp_path, launcher, optimizer, clip_norm):
    settings = dict(optimizer=optimizer, clip_norm=clip_norm)
    one = write_config(tmp_path / "one", **settings)
    two = write_config(tmp_path / "two", **settings)
    # The last batch of each epoch holds an odd number of examples: 2 ranks get unequal shares,
    # which only the loss weighting b_r W / b turns back into the single-process gradient.
    assert train_size(one) % 100 % 2 == 1

    single = run("train", str(one), "--quiet")
    assert single.returncode == 0, single.stderr
    args = ("train", str(two), "--quiet") + (("--nproc", "2") if launcher == "ravine" else ())
    double = run(*args, launcher=launcher)
    assert double.returncode == 0, double.stderr
    assert double.stdout.count("trained 2 epochs") == 1  # only rank 0 speaks

    a, b = checkpoint(tmp_path / "one" / "run"), checkpoint(tmp_path / "two" / "run")
    assert a["step"] == b["step"] == 2 * math.ceil(train_size(one) / 100)
    assert a["model"].keys() == b["model"].keys()
    for name in a["model"]:
        torch.testing.assert_close(b["model"][name], a["model"][name], rtol=0, atol=1e-5)
    assert "rng_by_rank" in b and len(b["rng_by_rank"]) == 2 and b["options"]["world_size"] == 2

    epochs_a, steps_a, summary_a = read_metrics(tmp_path / "one" / "run" / "metrics.jsonl")
    epochs_b, steps_b, summary_b = read_metrics(tmp_path / "two" / "run" / "metrics.jsonl")
    assert len(epochs_a) == len(epochs_b) == 2 and len(steps_a) == len(steps_b)
    for ra, rb in zip(epochs_a + steps_a, epochs_b + steps_b, strict=True):
        assert ra.keys() == rb.keys()
        for key in ra.keys() - {"time"}:
            assert rb[key] == pytest.approx(ra[key], rel=1e-5, abs=1e-7), key
    for key in ("best_epoch", "test_loss", "test_acc"):
        assert summary_b[key] == pytest.approx(summary_a[key], rel=1e-5)
    if clip_norm is not None:
        # Clipping fired on some steps but not on others, so the global norm decided each step.
        assert {step["clipped"] for step in steps_a} == {True, False}
    leftovers = {p.name for p in (tmp_path / "two" / "run").rglob("*") if p.name.startswith(".")}
    assert leftovers == set()


def worker_pids(parent: int) -> dict[int, int]:
    """``{rank: pid}`` of the launcher's worker processes (read from /proc)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) != parent:
            continue
        for item in environ:
            if item.startswith(b"RANK="):
                found[int(item[5:])] = int(entry.name)
    return found


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs Linux /proc")
def test_a_killed_rank_stops_the_job_and_resume_completes_it(tmp_path, capsys):
    # Batch norm and dropout: the resumed ranks need rank 0's statistics and their own streams.
    settings = dict(epochs=20, batch_size=20, checkpoint_every_steps=3,
                    model={"kind": "mlp", "hidden": [16], "norm": "batch", "dropout": 0.2})
    killed = write_config(tmp_path / "cut", **settings)
    reference = write_config(tmp_path / "ref", **settings)
    steps = 20 * math.ceil(train_size(killed) / 20)
    proc = subprocess.Popen([sys.executable, "-m", "ravine", "train", str(killed), "--quiet",
                             "--nproc", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=ENV)
    metrics = tmp_path / "cut" / "run" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        text = metrics.read_text() if metrics.exists() else ""
        if text.count('"kind": "step"') >= 25:
            break
        time.sleep(0.005)
    os.kill(worker_pids(proc.pid)[1], signal.SIGKILL)
    _, err = proc.communicate(timeout=120)
    last = tmp_path / "cut" / "run" / "checkpoints" / "last.pt"
    assert proc.returncode == 1, err
    assert err.splitlines() == [
        "ravine train: rank 1 was killed by SIGKILL; stopped all 2 processes",
        f"ravine train: --resume (with --nproc 2) continues from {last}",
    ]
    saved = load_checkpoint(last)
    assert 0 < saved["step"] < steps
    assert read_metrics(metrics)[2] == {}  # no summary: the run did not finish
    assert not list(last.parent.glob(".*"))  # no half-written checkpoint

    # Every rank's random streams are in the checkpoint, so only the same N can resume.
    assert main(["train", str(killed), "--resume"]) == EXIT_USAGE
    assert "the run was started with world_size=2, now world_size=1" in capsys.readouterr().err

    resumed = run("train", str(killed), "--quiet", "--nproc", "2", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    full = run("train", str(reference), "--quiet", "--nproc", "2")
    assert full.returncode == 0, full.stderr
    a, b = checkpoint(tmp_path / "cut" / "run"), checkpoint(tmp_path / "ref" / "run")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in b["model"])
    assert records(tmp_path / "cut" / "run") == records(tmp_path / "ref" / "run")


@pytest.mark.slow
def test_an_error_in_one_rank_is_reported_once(tmp_path):
    config = write_config(tmp_path)
    # Only rank 0 looks at the run directory; rank 1 waits for it in DDP's first broadcast.
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.jsonl").write_text("")
    proc = run("train", str(config), "--quiet", "--nproc", "2")
    assert_one_line(proc, EXIT_USAGE, (
        f"ravine train: rank 0: error: run_dir {tmp_path / 'run'} already holds a run; resume "
        "it (resume=True, --resume), replace it (overwrite=True, --overwrite) or choose another "
        "run_dir"))


@pytest.mark.slow
def test_a_non_finite_loss_stops_every_rank_at_the_same_step(tmp_path):
    config = write_config(tmp_path, optimizer={"name": "sgd", "lr": 1e30})
    proc = run("train", str(config), "--quiet", "--nproc", "2")
    assert proc.returncode == EXIT_NONFINITE, proc.stderr
    single = run("train", str(config), "--quiet", "--overwrite")
    assert single.returncode == EXIT_NONFINITE
    # The same message as one process, for rank 0: the decision was taken on the global loss.
    expected = single.stderr.strip().replace("ravine train: ", "ravine train: rank 0: ")
    assert_one_line(proc, EXIT_NONFINITE, expected)
