"""The SIGKILL campaign of issue 14: kill `ravine train` again and again, `--resume` each time.

One run is killed at several moments drawn from a seeded generator and resumed after each kill
until it finishes; its final weights, ``metrics.jsonl`` and ``metrics.csv`` must then equal an
uninterrupted run's bit for bit (wall-clock fields aside). The moments are of four kinds:

* ``step``: once ``metrics.jsonl`` shows a drawn step, after a drawn delay of a few
  milliseconds (lines reach the file when a checkpoint flushes the log);
* ``write``: once past a drawn step, while a checkpoint is being written. The process is
  stopped (SIGSTOP) the moment the temporary checkpoint file appears, and killed only if the
  file is still there, so the kill provably lands between ``open`` and ``os.replace``;
* ``lock``: a resumed process, as soon as it holds the run directory's lock (it is reading the
  checkpoint, cutting the logs back, or taking its first steps);
* ``finish``: once the summary record is in the file (the loggers are closed), while
  ``report.md`` and the plots are written.

The model has batch norm (buffers), dropout (random streams), Nesterov momentum (the interim
point θ + αv lives in the parameters) and a linear-decay schedule, so a resume that dropped any
part of the state would change the numbers. Where each kill lands depends on the machine's
speed; what is asserted does not.
"""

from __future__ import annotations

import csv
import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from run_helpers import train_size

from ravine.commands import main
from ravine.train.checkpoint import load_checkpoint

SEED = 14
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
EPOCHS, BATCH_SIZE = 8, 24
# Wall-clock fields: the only ones an interrupted run may legitimately change.
CLOCKS = ("time", "wall_time")


def write_config(folder: Path) -> Path:
    """A 3-class run on 300 examples (8 steps of 24 an epoch) that checkpoints every 3 steps
    and at every epoch's end, so checkpoints are written all the time and a kill usually falls
    between two of them (the resumed run replays the steps in between)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)
    x = rng.standard_normal((300, 6))
    y = (x @ rng.standard_normal((6, 3)) + rng.standard_normal((300, 3))).argmax(axis=1)
    np.savez(folder / "data.npz", x=x, y=y)
    config = {
        "data": {"name": str(folder / "data.npz"), "val_fraction": 0.2},
        "model": {"kind": "mlp", "hidden": [16], "norm": "batch", "dropout": 0.2},
        "optimizer": {"name": "nesterov", "lr": 0.05},
        "schedule": {"name": "linear-decay"},
        "epochs": EPOCHS,
        "batch_size": BATCH_SIZE,
        "checkpoint_every_steps": 3,
        "loggers": ["csv"],
        "seed": SEED,
        "run_dir": str(folder / "run"),
    }
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@dataclass(frozen=True)
class Kill:
    kind: str  # "step", "write", "lock" or "finish" (see the module docstring)
    step: int  # the step the run must have logged first ("step" and "write")
    delay: float  # seconds to wait after that ("step")


def kill_plan(seed: int, total_steps: int) -> list[Kill]:
    """Six kills: two after a step, two mid-write, one of a resumed process as it starts, one
    while the finished run writes its report (always the last)."""
    rng = random.Random(seed)
    kinds = ["step", "step", "write", "write", "lock"]
    while True:
        rng.shuffle(kinds)
        if kinds[0] != "lock":  # the first process is not a resumed one
            break
    # Leave room at the end, so that every planned kill finds its moment before the run ends.
    steps = sorted(rng.sample(range(2, total_steps - 6), len(kinds)))
    plan = [
        Kill(kind, step, rng.uniform(0.0, 0.03)) for kind, step in zip(kinds, steps, strict=True)
    ]
    return plan + [Kill("finish", total_steps, 0.0)]


def last_step(metrics: Path) -> int:
    """The step of the last complete step or epoch record in ``metrics.jsonl`` (0 if none)."""
    try:
        with open(metrics, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 2048))
            tail = f.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return 0
    for line in reversed(tail.splitlines()[1:]):  # the first may be cut by the seek
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # the line being written
            continue
        if record.get("kind") in ("step", "epoch"):
            return record["step"]
    return 0


def wait_stopped(pid: int, timeout: float = 5.0) -> None:
    """Return once every thread of ``pid`` is stopped: ``kill(SIGSTOP)`` returns before the
    signal has reached the threads, and the checkpoint writer may still rename its file."""
    deadline = time.monotonic() + timeout
    tasks = Path(f"/proc/{pid}/task")
    while time.monotonic() < deadline:
        states = []
        if not tasks.exists():  # gone (or no /proc): nothing left running
            return
        for task in tasks.iterdir():
            try:  # "pid (name) S ...": the state follows the last ')'
                states.append((task / "stat").read_text().rsplit(")", 1)[1].split()[0])
            except (FileNotFoundError, ProcessLookupError, IndexError):
                continue  # a thread that just ended
        if states and all(state in ("T", "t", "Z", "X") for state in states):  # or ended
            return
        time.sleep(0.0002)
    raise AssertionError(f"process {pid} did not stop within {timeout} s of SIGSTOP")


def stop_mid_write(proc: subprocess.Popen, temporaries: list[Path]) -> bool:
    """Poll until a temporary checkpoint file appears, then SIGSTOP ``proc``; True if the file
    is still there once the process stands still (a write is in progress), False if the run
    ended first. A write that finished between the look and the stop is let go."""
    while proc.poll() is None:
        if any(path.exists() for path in temporaries):
            os.kill(proc.pid, signal.SIGSTOP)
            wait_stopped(proc.pid)
            if any(path.exists() for path in temporaries):
                return True
            os.kill(proc.pid, signal.SIGCONT)
        time.sleep(0.0002)
    return False


def kill_when(proc: subprocess.Popen, run: Path, kill: Kill, seen: int) -> tuple[int, bool]:
    """SIGKILL ``proc`` at ``kill``'s moment; return the last step it had logged and whether a
    temporary checkpoint file was left behind. Steps up to ``seen`` (logged by the process
    killed before) do not count: the resumed process cuts them away and logs them again."""
    metrics, checkpoints = run / "metrics.jsonl", run / "checkpoints"
    temporaries = [checkpoints / f".{name}.tmp" for name in ("last.pt", "best.pt")]
    deadline = time.monotonic() + 240
    while proc.poll() is None:
        assert time.monotonic() < deadline, f"no moment for {kill} within 240 s"
        if kill.kind == "lock":
            try:
                ready = (run / ".lock").read_text().strip() == str(proc.pid)
            except FileNotFoundError:
                ready = False
        elif kill.kind == "finish":
            ready = metrics.exists() and '"kind": "summary"' in metrics.read_text()
        else:
            ready = (
                last_step(metrics) >= max(kill.step, seen + 1)
                and (checkpoints / "last.pt").exists()
            )
        if ready and (kill.kind != "write" or stop_mid_write(proc, temporaries)):
            time.sleep(kill.delay if kill.kind == "step" else 0.0)
            break
        time.sleep(0.002)
    else:
        raise AssertionError(f"the run finished before {kill} (steps up to {seen} were old)")
    os.kill(proc.pid, signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, err
    return last_step(metrics), any(path.exists() for path in temporaries)


def records(run: Path) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in CLOCKS} for line in lines]


def table(run: Path) -> list[dict]:
    with open(run / "metrics.csv", newline="") as f:
        return [{k: v for k, v in row.items() if k not in CLOCKS} for row in csv.DictReader(f)]


def assert_same_tensors(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys(), what
    for key in a:
        if isinstance(a[key], dict):
            assert_same_tensors(a[key], b[key], f"{what}.{key}")
        elif isinstance(a[key], torch.Tensor):
            assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), f"{what}.{key}"
        else:
            assert a[key] == b[key], f"{what}.{key}"


def start(config: Path, *flags: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "ravine", "train", str(config), "--quiet", *flags],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )


def test_kill_plan_is_seeded_and_fits_the_run():
    plan = kill_plan(SEED, 64)
    assert plan == kill_plan(SEED, 64) and plan != kill_plan(SEED + 1, 64)
    kinds = [k.kind for k in plan]
    assert sorted(kinds) == ["finish", "lock", "step", "step", "write", "write"]
    assert kinds[0] != "lock" and kinds[-1] == "finish"
    assert all(2 <= k.step < 64 - 6 for k in plan[:-1]) and all(0 <= k.delay <= 0.03 for k in plan)
    assert [k.step for k in plan] == sorted(k.step for k in plan)


@pytest.mark.slow
def test_six_sigkills_each_resumed_end_bit_identical_to_an_uninterrupted_run(tmp_path):
    killed = write_config(tmp_path / "cut")
    total_steps = EPOCHS * -(-train_size(killed) // BATCH_SIZE)
    run = tmp_path / "cut" / "run"
    proc, seen, log = start(killed), 0, []
    for kill in kill_plan(SEED, total_steps):
        seen, torn = kill_when(proc, run, kill, seen)
        saved = load_checkpoint(run / "checkpoints" / "last.pt")["step"]
        log.append((kill.kind, seen, saved, torn))
        proc = start(killed, "--resume")
    _, err = proc.communicate(timeout=240)
    # Shown when the test fails: where each kill landed.
    print("kills (kind, last step logged, step of last.pt, .tmp left):", log)
    assert proc.returncode == 0, err
    # Each "write" kill left its temporary checkpoint file: it landed in the middle of a write.
    assert all(torn for kind, _, _, torn in log if kind == "write"), log
    # Every kill but the one after the summary lost steps that the next process replayed.
    assert all(saved < total_steps for kind, _, saved, _ in log if kind != "finish"), log

    reference = write_config(tmp_path / "ref")
    assert main(["train", str(reference), "--quiet"]) == 0
    ref = tmp_path / "ref" / "run"
    for name in ("last.pt", "best.pt"):
        a = load_checkpoint(run / "checkpoints" / name)
        b = load_checkpoint(ref / "checkpoints" / name)
        assert_same_tensors(a["model"], b["model"], f"{name} model")
        if name == "last.pt":
            assert_same_tensors(a["optimizer"], b["optimizer"], "last.pt optimizer")
            assert a["step"] == b["step"] == total_steps
    assert records(run) == records(ref)
    assert table(run) == table(ref)
    # Nothing left behind: no temporary checkpoint, no lock; the report and plots are written.
    files = {p.relative_to(run) for p in run.rglob("*")}
    assert files == {p.relative_to(ref) for p in ref.rglob("*")}
