"""One live run per run directory: a second writer is refused in one line naming the holder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

from reliability_helpers import write_run_config

HOLDER = textwrap.dedent("""
    import pathlib, sys, time
    import torch
    from ravine import fit

    run, ready = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])

    def hold(epoch, record):  # a live run, parked after its first epoch until killed
        ready.write_text("ready")
        time.sleep(600)

    x = torch.randn(40, 4)
    fit(torch.nn.Linear(4, 1), (x, x.sum(1)), epochs=2, batch_size=20, run_dir=run,
        quiet=True, callbacks=[hold])
""")


def ravine(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ravine", *args], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_a_second_writer_is_refused_while_the_run_lives_and_admitted_once_it_is_killed(tmp_path):
    run, ready = tmp_path / "run", tmp_path / "ready"
    config = write_run_config(tmp_path, epochs=1)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run), str(ready)],
                              stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert holder.poll() is None, holder.stderr.read().decode()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        metrics = (run / "metrics.jsonl").read_bytes()
        for flags in (["--overwrite"], ["--resume"]):
            proc = ravine("train", str(config), "--quiet", *flags)
            assert proc.returncode == 2, proc.stderr
            lines = proc.stderr.strip().splitlines()
            assert len(lines) == 1, proc.stderr
            assert f"run_dir {run} is in use by process {holder.pid}" in lines[0]
        # The live run's files are untouched.
        assert (run / "metrics.jsonl").read_bytes() == metrics
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # flock dies with its process: the killed run's lock is free at once.
    proc = ravine("train", str(config), "--quiet", "--overwrite")
    assert proc.returncode == 0, proc.stderr


def test_a_finished_run_leaves_no_lock_file(tmp_path):
    config = write_run_config(tmp_path, epochs=1)
    assert ravine("train", str(config), "--quiet").returncode == 0
    assert not (tmp_path / "run" / ".lock").exists()
