"""ravine._workers: the worker pool behind `compare --jobs` and `demo` takes a Ctrl-C quietly."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from ravine._workers import call, sigint_ignored, spawn_pool, start_worker, stop_workers


def _mark_then_sleep(path: str, seconds: float) -> str:
    Path(path).write_text(str(os.getpid()))
    time.sleep(seconds)
    return "finished"


def _wait_for(path: Path, timeout: float = 120.0) -> int:
    deadline = time.monotonic() + timeout
    while not path.exists() or not path.read_text():
        assert time.monotonic() < deadline, f"{path.name} never started"
        time.sleep(0.02)
    return int(path.read_text())


def _three_long_tasks(tmp_path):
    pool = spawn_pool(1, start_worker)
    marks = [tmp_path / f"task-{i}" for i in range(3)]
    with sigint_ignored():
        futures = [pool.submit(call, _mark_then_sleep, str(m), 60.0) for m in marks]
    return pool, marks, futures


@pytest.mark.slow
def test_an_interrupted_worker_stops_its_task_and_starts_no_other(tmp_path):
    pool, marks, futures = _three_long_tasks(tmp_path)
    pid = _wait_for(marks[0])
    start = time.monotonic()
    os.kill(pid, signal.SIGINT)  # what a Ctrl-C in the terminal does to the worker
    for future in futures:  # the running task stops; the queued ones end at once, unstarted
        assert isinstance(future.exception(timeout=30), KeyboardInterrupt)
    pool.shutdown(wait=True)  # the idle worker leaves at once
    assert time.monotonic() - start < 30  # far from the 60 s a task would take
    assert [m.exists() for m in marks] == [True, False, False]


@pytest.mark.slow
def test_stop_workers_ends_a_busy_pool_within_seconds(tmp_path):
    pool, marks, futures = _three_long_tasks(tmp_path)
    pid = _wait_for(marks[0])
    start = time.monotonic()
    stop_workers(pool, futures)  # the parent's Ctrl-C reached the parent alone
    assert time.monotonic() - start < 10
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert isinstance(futures[0].exception(timeout=1), KeyboardInterrupt)
    assert not marks[1].exists() and not marks[2].exists()
