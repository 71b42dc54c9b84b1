"""ravine._interrupts: a Ctrl-C that Python would swallow in a garbage-collection callback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SRC = str(Path(__file__).parents[1] / "src")


def run_python(code: str) -> subprocess.CompletedProcess:
    """``python -c CODE`` with this checkout's ravine importable; fails on a non-zero status."""
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=300, check=True)

PROGRAM = """
import gc, json, signal, sys, time, weakref
from ravine._interrupts import redeliver_swallowed

signal.signal(signal.SIGINT, signal.default_int_handler)  # as in any Python program


class Thing:
    pass


def ctrl_c_in_a_gc_callback(exc=KeyboardInterrupt):
    # a Ctrl-C that lands while a weak-ref callback runs (sqlalchemy's, under Optuna)
    def callback(ref):
        raise exc
    thing = Thing()
    ref = weakref.ref(thing, callback)
    del thing  # the callback runs here, and Python cannot propagate what it raises
    return ref


def case(sleep):
    start = time.monotonic()
    try:
        with redeliver_swallowed():
            ctrl_c_in_a_gc_callback()
            time.sleep(sleep)
    except KeyboardInterrupt:
        return ["interrupted", round(time.monotonic() - start, 3)]
    return ["ran on", round(time.monotonic() - start, 3)]


seen = []
sys.unraisablehook = lambda info: seen.append(type(info.exc_value).__name__)
results = {"during a long block": case(5.0), "as the block ends": case(0.0)}
with redeliver_swallowed():
    ctrl_c_in_a_gc_callback(ValueError)  # not a Ctrl-C: the previous hook gets it
time.sleep(0.2)
results["other errors"] = list(seen)
# without it, Python swallows the Ctrl-C (the previous hook "prints" it) and runs on
start = time.monotonic()
ctrl_c_in_a_gc_callback()
time.sleep(0.2)
results["without"] = [seen[-1], round(time.monotonic() - start, 1)]
print(json.dumps(results))
"""


def test_a_ctrl_c_swallowed_in_a_gc_callback_is_raised_again():
    done = run_python(PROGRAM)
    assert done.stderr == ""  # no "Exception ignored in ..." for the Ctrl-C
    results = json.loads(done.stdout)
    state, seconds = results["during a long block"]
    assert state == "interrupted" and seconds < 2.5  # not after the 5-s sleep
    assert results["as the block ends"][0] == "interrupted"  # owed, raised as the block ends
    assert results["other errors"] == ["ValueError"]
    assert results["without"] == ["KeyboardInterrupt", 0.2]


FIT_PROGRAM = """
import json, signal, sys, time, weakref
import torch
from ravine.train import fit

signal.signal(signal.SIGINT, signal.default_int_handler)
seen = []


class Thing:
    pass


def callback(epoch, record):
    seen.append(epoch)
    if epoch == 2:  # a Ctrl-C lands while a weak-ref callback runs, as under sqlalchemy
        def raise_ctrl_c(ref):
            raise KeyboardInterrupt
        thing = Thing()
        ref = weakref.ref(thing, raise_ctrl_c)
        del thing
    time.sleep(0.02)


x, y = torch.randn(64, 3), torch.randn(64, 1)
try:
    fit(torch.nn.Linear(3, 1), (x, y), epochs=200, batch_size=64, loss="mse", lr=0.01,
        seed=0, quiet=True, callbacks=[callback])
    outcome = "finished"
except KeyboardInterrupt:
    outcome = "interrupted"
print(json.dumps([outcome, len(seen)]))
"""


def test_fit_stops_for_a_ctrl_c_swallowed_in_a_gc_callback():
    # A script of the user's own calling fit (no CLI): Python would drop that Ctrl-C and train
    # all 200 epochs.
    done = run_python(FIT_PROGRAM)
    outcome, epochs = json.loads(done.stdout.splitlines()[-1])
    assert outcome == "interrupted" and epochs < 20, (outcome, epochs)
    assert "Exception ignored" not in done.stderr
