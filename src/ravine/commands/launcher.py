"""Starting data-parallel processes for ``ravine train --nproc N``, and reporting why one failed.

:func:`launch` runs ``python -m ravine COMMAND ARGS`` in N processes with torch's launcher
(``torch.distributed.run``). A rank that fails reports ``ravine COMMAND: rank R: <message>``
(:func:`report_failure`) and exits nonzero; torch's launcher then stops the other ranks. Under
:func:`launch` workers record their message in a folder (named by the environment variable
:data:`ERRORS_ENV`) instead of printing it, and the launcher prints the message of the rank that
failed first, once, rather than the follow-up errors of the ranks that lost their peer
(:func:`is_peer_failure`).

What a training process itself uses (the communicator, process groups, DDP) is in
:mod:`ravine.train.distributed`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch.distributed as dist

from ravine._io import write_atomic
from ravine.train.distributed import worker_env

__all__ = ["launch", "report_failure", "is_peer_failure", "ERRORS_ENV"]

# Set by launch(): the folder where each worker records why it failed, for the launcher to read.
ERRORS_ENV = "RAVINE_RANK_ERRORS"
# Signals torch's elastic agent takes over in the launching process (restored afterwards).
_AGENT_SIGNALS = ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT")


def is_peer_failure(exc: BaseException) -> bool:
    """Whether ``exc`` says that another rank went away rather than what went wrong there.

    torch raises :class:`torch.distributed.DistError` subclasses for most communication
    failures, but gloo reports a peer that died as a plain ``RuntimeError`` naming the closed
    connection.
    """
    if isinstance(exc, dist.DistError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and (
        "Connection closed by peer" in text or "Connection reset by peer" in text
    )


def report_failure(
    command: str, message: str, exit_code: int, exc: BaseException | None = None
) -> None:
    """Tell the user why this process stops.

    Prints ``ravine COMMAND: MESSAGE`` on standard error; in a data-parallel worker the line
    names the rank (``ravine COMMAND: rank R: MESSAGE``), and a worker started by :func:`launch`
    records it in the launcher's folder instead, so the launcher can print the root cause once.

    Args:
        command: the subcommand, e.g. ``"train"``.
        message: one line.
        exit_code: the status the process exits with.
        exc: the exception, to tell a lost peer (a consequence) from a root cause.
    """
    try:
        env = worker_env()
    except ValueError:
        env = None
    if env is None:
        print(f"ravine {command}: {message}", file=sys.stderr)
        return
    line = f"ravine {command}: rank {env.rank}: {message}"
    folder = os.environ.get(ERRORS_ENV)
    if not folder:
        print(line, file=sys.stderr)
        return
    record = {
        "rank": env.rank,
        "message": line,
        "text": message,
        "exit_code": exit_code,
        "peer_failure": exc is not None and is_peer_failure(exc),
        "time": time.time(),
    }
    # Written before the process exits, hence before its peers can notice that it is gone.
    path = Path(folder) / f"rank-{env.rank}.json"
    write_atomic(path, lambda f: f.write(json.dumps(record)))


def _read_records(folder: Path) -> list[dict[str, Any]]:
    records = []
    for path in folder.glob("rank-*.json"):
        try:
            records.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            continue
    return records


def _signal_name(exitcode: int) -> str:
    try:
        return signal.Signals(-exitcode).name
    except ValueError:
        return f"signal {-exitcode}"


def _root_cause(
    records: list[dict[str, Any]], failures: dict[int, Any], command: str, nproc: int
) -> tuple[str, int]:
    """The line to print and the exit status, given the workers' records and torch's failures.

    Order of preference: the earliest recorded error that is not a lost peer; a rank that died
    without a record (killed, or crashed in native code) other than by the SIGTERM with which
    torch stops the survivors; the earliest lost-peer record; whatever torch reports.
    """
    causes = sorted((r for r in records if not r["peer_failure"]),
                    key=lambda r: (r["time"], r["rank"]))
    if causes:
        # An error every rank raised together (a non-finite loss) is reported for rank 0.
        first = min((r for r in causes if r["text"] == causes[0]["text"]),
                    key=lambda r: r["rank"])
        return first["message"], int(first["exit_code"])
    recorded = {r["rank"] for r in records}
    silent = sorted(
        (f.timestamp, rank, f.exitcode) for rank, f in failures.items()
        if rank not in recorded and f.exitcode != -signal.SIGTERM
    )
    if silent:
        _, rank, exitcode = silent[0]
        how = (f"was killed by {_signal_name(exitcode)}" if exitcode < 0
               else f"exited with status {exitcode}")
        return f"ravine {command}: rank {rank} {how}; stopped all {nproc} processes", 1
    lost = sorted(records, key=lambda r: (r["time"], r["rank"]))
    if lost:
        return lost[0]["message"], int(lost[0]["exit_code"])
    rank, failure = min(failures.items(), key=lambda item: (item[1].timestamp, item[0]))
    return (f"ravine {command}: rank {rank} failed (exit status {failure.exitcode}); "
            f"stopped all {nproc} processes"), 1


@contextlib.contextmanager
def _environment(**values: str) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def _agent_scope(debug: bool) -> Iterator[None]:
    """Restore the signal handlers torch's agent installs; silence its log unless ``debug``."""
    handlers = {name: signal.getsignal(getattr(signal, name))
                for name in _AGENT_SIGNALS if hasattr(signal, name)}
    if not debug:
        # The agent logs every worker's exit and its own shutdown; the launcher reports the
        # one failure that matters itself.
        logging.disable(logging.CRITICAL)
    try:
        yield
    finally:
        if not debug:
            logging.disable(logging.NOTSET)
        for name, handler in handlers.items():
            signal.signal(getattr(signal, name), handler)


def _cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def launch(
    args: Sequence[str], nproc: int, *, command: str = "train", debug: bool = False
) -> int:
    """Run ``python -m ravine COMMAND ARGS`` in ``nproc`` processes with ``torch.distributed.run``.

    The same as ``torchrun --standalone --nproc-per-node NPROC -m ravine COMMAND ARGS``, except
    that a failure is reported as one line: the message of the rank that failed first (see the
    module docstring). Without ``OMP_NUM_THREADS`` in the environment each worker gets
    ``max(1, cores // nproc)`` threads (torchrun would give 1).

    Args:
        args: the arguments after the subcommand (without ``--nproc``).
        nproc: number of processes (>= 1).
        command: the ravine subcommand the workers run.
        debug: keep torch's launcher log and pass failures through unchanged.

    Returns:
        0 when every rank succeeded, else the exit status of the failed rank (1 when it was
        killed or crashed); 128 + the signal number when interrupted (130 for Ctrl-C).
    """
    if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
        raise ValueError(f"nproc must be an integer >= 1, got {nproc!r}")
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    launcher_args = torchrun.get_args_parser().parse_args(
        ["--standalone", f"--nproc-per-node={nproc}", "--module", "ravine", command, *args]
    )
    threads = os.environ.get("OMP_NUM_THREADS", str(max(1, _cores() // nproc)))
    with (tempfile.TemporaryDirectory(prefix="ravine-ranks-") as folder,
          _environment(**{ERRORS_ENV: folder, "OMP_NUM_THREADS": threads}),
          _agent_scope(debug)):
        try:
            torchrun.run(launcher_args)
        except ChildFailedError as exc:
            if debug:
                raise
            line, status = _root_cause(_read_records(Path(folder)), exc.failures, command,
                                       nproc)
            print(line, file=sys.stderr)
            return status
        except SignalException as exc:
            print(f"ravine {command}: interrupted ({exc.sigval.name}); stopped all {nproc} "
                  "processes", file=sys.stderr)
            return 128 + int(exc.sigval)
    return 0
