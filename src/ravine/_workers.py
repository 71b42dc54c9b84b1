"""Worker processes that take a Ctrl-C quietly: the pool behind ``compare --jobs`` and ``demo``.

A Ctrl-C in a terminal sends SIGINT to every process of its group, the workers included. Python's
default handler would print a traceback in each worker (one still importing torch, one idle in
the pool's queue), so the pool here works like this:

* :func:`spawn_pool` starts the workers with ``spawn`` (forking a process that already runs
  torch's thread pools can hang) while SIGINT is ignored. A spawned Python keeps an inherited
  ignored SIGINT, so a Ctrl-C during a worker's start-up (importing torch) does nothing there.
* :func:`start_worker`, first in every worker's initializer, sets one torch thread, does torch's
  lazy imports (still ignoring SIGINT; a cut import would be redone, noisily, by the next task),
  then installs a handler that raises :class:`KeyboardInterrupt` once, and only inside
  :func:`busy`: a busy worker stops its task (its exception reaches the parent through the
  future), an idle one stays quiet. Once interrupted, a worker starts no further task (the
  tasks already queued to it end at once), so it is soon idle and leaves at shutdown.
* After its own Ctrl-C (or an error) the parent calls :func:`stop_workers`.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from typing import Any

import torch

__all__ = ["busy", "call", "sigint_ignored", "spawn_pool", "start_worker", "stop_workers"]

_STATE = {"busy": False, "raised": False, "stopping": False}


def _on_sigint(signum: int, frame: Any) -> None:
    _STATE["stopping"] = True
    if _STATE["busy"] and not _STATE["raised"]:
        _STATE["raised"] = True
        raise KeyboardInterrupt


def start_worker() -> None:
    """The start of every worker's initializer (see the module docstring)."""
    torch.set_num_threads(1)
    # The first optimizer a process builds imports torch._dynamo (torch.optim's add_param_group
    # is wrapped to disable it): about 800 modules and a second here. Done now, a Ctrl-C cannot
    # cut that import in half; cut, the worker's next queued task imported it again and
    # torch.onnx printed a page of "already registered" warnings.
    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    signal.signal(signal.SIGINT, _on_sigint)


@contextmanager
def busy() -> Iterator[None]:
    """Around a worker's task: a Ctrl-C raises :class:`KeyboardInterrupt` in it, once; after
    a Ctrl-C the task does not start (raises at once)."""
    if _STATE["stopping"]:
        raise KeyboardInterrupt
    _STATE.update(busy=True, raised=False)
    try:
        yield
    finally:
        _STATE["busy"] = False


def call(fn: Callable[..., Any], *args: Any) -> Any:
    """A task for the pool: ``fn(*args)`` inside :func:`busy`."""
    with busy():
        return fn(*args)


@contextmanager
def sigint_ignored() -> Iterator[None]:
    """SIGINT ignored in the block: workers spawned in it inherit the disposition."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def spawn_pool(
    jobs: int, initializer: Callable[..., None], initargs: tuple[Any, ...] = ()
) -> ProcessPoolExecutor:
    """A pool of ``jobs`` spawned workers. Submit its first ``jobs`` tasks inside
    :func:`sigint_ignored`: the pool spawns a worker per submission, up to ``jobs``."""
    return ProcessPoolExecutor(
        max_workers=jobs,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=initializer,
        initargs=initargs,
    )


def stop_workers(pool: ProcessPoolExecutor, pending: Iterable[Future]) -> None:
    """After Ctrl-C (or an error) in the parent: cancel the tasks not yet sent to a worker,
    interrupt the running ones that the terminal's Ctrl-C did not already stop (a SIGINT sent to
    the parent alone), let the workers leave, and kill those still there after 3 s (one that was
    starting, with SIGINT ignored, would run a queued task to the end)."""
    for future in pending:
        future.cancel()
    # ProcessPoolExecutor has no public way to reach its workers, nor to wait for its manager
    # thread after a shutdown(wait=False) (without that wait the pool's semaphores leak)
    processes = list((getattr(pool, "_processes", None) or {}).values())
    manager = getattr(pool, "_executor_manager_thread", None)
    for process in processes:
        try:
            os.kill(process.pid, signal.SIGINT)
        except (ProcessLookupError, TypeError):
            pass
    pool.shutdown(wait=False, cancel_futures=True)
    deadline = time.monotonic() + 3.0
    for process in processes:
        process.join(timeout=max(0.0, deadline - time.monotonic()))
    for process in processes:
        if process.is_alive():
            process.kill()
    if manager is not None:
        manager.join()
