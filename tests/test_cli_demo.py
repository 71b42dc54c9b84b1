"""`ravine demo` in its quick form: every lecture optimizer on both networks, one report."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from ravine import data, models
from ravine.commands.demo import (
    BATCH_SIZE,
    LEARNING_RATES,
    NETWORKS,
    OPTIMIZERS,
    QUICK_EPOCHS,
    QUICK_EXAMPLES,
    VAL_FRACTION,
    run_demo,
)
from ravine.train import fit


def test_quick_demo_trains_every_pair_and_reports_them(tmp_path):
    report = run_demo(tmp_path / "demo", quick=True, seed=3, jobs=1, quiet=True)
    assert report == tmp_path / "demo" / "report.md"
    results = json.loads((tmp_path / "demo" / "results.json").read_text())
    runs = results["runs"]
    assert [(r["network"], r["optimizer"]) for r in runs] == [
        (n, o) for n in NETWORKS for o in OPTIMIZERS]
    assert all(r["lr"] == LEARNING_RATES[r["network"]][r["optimizer"]] for r in runs)
    assert all(r["epochs_run"] == QUICK_EPOCHS for r in runs)
    text = report.read_text()
    for r in runs:
        assert f"| {r['lr']:.4g} | {r['test_acc']:.1%} |" in text
    for network in NETWORKS:
        for key in ("val_acc", "train_loss"):
            assert f"(plots/{network}_{key}.png)" in text
            assert (tmp_path / "demo" / "plots" / f"{network}_{key}.png").is_file()

    # One of the runs, redone by hand with fit, gives the same test accuracy.
    splits = data.load("mnist1d", seed=3, val_fraction=VAL_FRACTION)
    torch.manual_seed(3)
    net = models.build({**NETWORKS["cnn"], "in_length": 40, "out_features": 10})
    train, val, test = ((s.x[:QUICK_EXAMPLES], s.y[:QUICK_EXAMPLES])
                        for s in (splits.train, splits.val, splits.test))
    again = fit(net, train, val, test=test, optimizer="nesterov",
                lr=LEARNING_RATES["cnn"]["nesterov"], schedule="linear-decay",
                epochs=QUICK_EPOCHS, batch_size=BATCH_SIZE, seed=3, quiet=True)
    recorded = next(r for r in runs if (r["network"], r["optimizer"]) == ("cnn", "nesterov"))
    assert recorded["test_acc"] == again.test["test_acc"]


@pytest.mark.slow
def test_demo_command_with_worker_processes(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "ravine", "demo", "--quick", "--jobs", "2", "--out",
         str(tmp_path / "d")],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == f"report: {tmp_path / 'd' / 'report.md'}"
    assert proc.stdout.count("test_acc") == len(NETWORKS) * len(OPTIMIZERS)
    assert (tmp_path / "d" / "report.md").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("when", ["starting", "workers starting", "after the first run"])
def test_ctrl_c_during_the_demo_is_one_line_and_leaves_no_process(tmp_path, when):
    # Ctrl-C reaches the terminal's whole group: the command, and workers that may be importing
    # torch, training, or idle. Whenever it lands: exit 130, one line, no process left behind.
    proc = subprocess.Popen(
        [sys.executable, "-m", "ravine", "demo", "--quick", "--jobs", "2", "--out",
         str(tmp_path / "d")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    if when == "after the first run":
        assert "test_acc" in proc.stdout.readline()
    else:
        time.sleep(0.3 if when == "starting" else 2.5)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err == "ravine demo: interrupted\n"
    deadline = time.monotonic() + 10
    while True:  # the workers are gone too (the group is empty)
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        assert time.monotonic() < deadline, "a worker outlived the demo"
        time.sleep(0.05)
    assert not (tmp_path / "d" / "report.md").exists()
