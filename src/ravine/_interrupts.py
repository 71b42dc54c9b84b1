"""Ctrl-C that Python would swallow.

A ``KeyboardInterrupt`` raised while a garbage-collection callback runs (sqlalchemy's weak-ref
callbacks under Optuna, torch's finalizers) cannot propagate: Python prints "Exception ignored
in ..." and drops it, and the program runs on as if the key had not been pressed.
:func:`redeliver_swallowed` raises such an interrupt again a moment later, outside the callback.
"""

from __future__ import annotations

import _thread
import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

__all__ = ["redeliver_swallowed"]

#: Seconds between a swallowed Ctrl-C and its second delivery (outside the callback by then).
DELAY = 0.05


@contextlib.contextmanager
def redeliver_swallowed() -> Iterator[None]:
    """In the block, a ``KeyboardInterrupt`` that Python would report as unraisable and drop is
    not printed; SIGINT is sent to the main thread again :data:`DELAY` seconds later. One still
    owed when the block ends is raised as the block ends (unless another exception leaves it).

    Only in the main thread (where signals are delivered); elsewhere the block runs as is.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    main = threading.main_thread().ident
    lock = threading.Lock()
    state = {"owed": 0, "closed": False}
    timers: list[threading.Timer] = []

    def deliver() -> None:
        with lock:
            if state["closed"]:
                return
            state["owed"] -= 1
        if hasattr(signal, "pthread_kill"):  # a real SIGINT: it also wakes a blocking call
            signal.pthread_kill(main, signal.SIGINT)
        else:
            _thread.interrupt_main()

    def unraisable(info: Any) -> None:
        if not isinstance(info.exc_value, KeyboardInterrupt):
            hook(info)
            return
        with lock:
            state["owed"] += 1
        timer = threading.Timer(DELAY, deliver)
        timer.daemon = True
        timers.append(timer)
        timer.start()

    hook = sys.unraisablehook
    sys.unraisablehook = unraisable
    leaving_normally = False
    try:
        yield
        leaving_normally = True
    finally:
        sys.unraisablehook = hook
        with lock:
            state["closed"] = True
            owed = state["owed"]
        for timer in timers:
            timer.cancel()
        if owed and leaving_normally:
            raise KeyboardInterrupt
