"""Atomic file writes and the safe YAML reader: the file-handling half of the error toolkit.

Every file ravine writes (configs, metrics tables, checkpoints, reports, plots, cached data) goes
through :func:`write_atomic`: a temporary file in the same folder, written, flushed and
``fsync``-ed, renamed over the target with :func:`os.replace` (atomic within one file system on
POSIX and Windows), then the folder ``fsync``-ed so that the rename itself survives a power cut.
A reader, or a process resumed after ``kill -9``, therefore sees either the previous complete
file or the new complete one, never a partial write.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import yaml

__all__ = [
    "YAMLError",
    "dump_yaml",
    "exit_now",
    "fsync_dir",
    "json_ready",
    "safe_yaml",
    "write_atomic",
    "write_json_atomic",
    "write_yaml_atomic",
]


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    """``fsync`` a folder, so that a rename inside it is on disk once this returns.

    A no-op where folders cannot be opened (Windows) or the file system refuses to sync one.
    """
    if os.name == "nt":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def exit_now(status: int) -> None:
    """End the process with ``status`` at once: logging and the standard streams are flushed, the
    interpreter's teardown (atexit handlers, object finalizers) is skipped.

    For a process whose work is done and on disk. Two teardowns cost a correct status: gloo
    objects freed at shutdown can abort a data-parallel worker (SIGABRT), and CPython ends any
    process in which a ``KeyboardInterrupt`` ever escaped an ``exec``/``eval`` of a string
    (libraries generate code that way: sqlalchemy, dataclasses), even one caught and handled, by
    killing itself with SIGINT instead of returning the status it was given.
    """
    import logging

    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(status)


def write_atomic(
    path: str | os.PathLike[str],
    write: Callable[[IO[Any]], object],
    *,
    binary: bool = False,
    encoding: str = "utf-8",
    newline: str | None = None,
    single_writer: bool = False,
) -> None:
    """Call ``write(handle)`` on a temporary file beside ``path``, then put it at ``path``.

    The steps: create the temporary file in ``path``'s folder (made if missing); ``write`` into
    it; flush and ``fsync`` it; :func:`os.replace` it onto ``path``; ``fsync`` the folder. When
    ``write`` raises, the temporary file is removed and ``path`` is left as it was.

    Args:
        path: the file to (re)place.
        write: called once with the open handle; whatever it returns is ignored.
        binary: open the handle in ``"wb"`` mode (``torch.save``, ``np.savez``,
            ``Figure.savefig``); otherwise in text mode with ``encoding`` and ``newline``
            (as :func:`open` takes them; ``newline=""`` for the :mod:`csv` module).
        single_writer: the caller guarantees that no other process writes ``path`` at the same
            time (e.g. rank 0 under the run-directory lock). The temporary file is then always
            ``.<name>.tmp``, so one left behind by a killed process is overwritten by the next
            write instead of piling up. Otherwise each write gets a unique temporary name, so
            concurrent writers (e.g. of a shared data cache) never write into one file.

    The temporary file is created with the default permissions (``0o666`` less the umask), like
    any file :func:`open` creates, so the result is readable by whoever could read a plainly
    written one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if single_writer:
        tmp = path.with_name(f".{path.name}.tmp")
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    else:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    fd = os.open(tmp, flags | getattr(os, "O_BINARY", 0), 0o666)
    try:
        try:
            handle: IO[Any] = (
                os.fdopen(fd, "wb")
                if binary
                else os.fdopen(fd, "w", encoding=encoding, newline=newline)
            )
        except BaseException:
            os.close(fd)
            raise
        with handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def json_ready(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    return value


def write_json_atomic(data: Any, path: str | os.PathLike[str]) -> None:
    """Write ``data`` as JSON atomically (non-finite floats as the strings ``"inf"`` /
    ``"nan"``, which ``float()`` reads back)."""
    write_atomic(path, lambda handle: json.dump(json_ready(data), handle, indent=1))


def dump_yaml(data: Any) -> str:
    """``data`` as YAML text, keys in their order: what ``yaml.safe_dump(data,
    sort_keys=False)`` writes, by libyaml's emitter when PyYAML has it (about 6x faster)."""
    return yaml.dump(data, Dumper=_SafeDumper, sort_keys=False)


def write_yaml_atomic(data: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Write ``data`` as YAML atomically (keys in their order)."""
    text = dump_yaml(data)
    write_atomic(path, lambda handle: handle.write(text))


# A YAML document may expand (through aliases) to at most this many nodes: a 481-byte "billion
# laughs" file otherwise expands to hundreds of megabytes once validated or printed.
YAML_NODE_BUDGET = 100_000


class YAMLError(ValueError):
    """A YAML text that cannot be read: invalid, or expanding past :data:`YAML_NODE_BUDGET`."""


def _expanded_size(node: yaml.Node, memo: dict[int, int]) -> int:
    """Nodes of ``node`` with every alias expanded (shared nodes counted each time)."""
    known = memo.get(id(node))
    if known is not None:
        return known
    memo[id(node)] = 1  # a node that contains itself counts once
    if isinstance(node, yaml.SequenceNode):
        size = 1 + sum(_expanded_size(child, memo) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        size = 1 + sum(_expanded_size(k, memo) + _expanded_size(v, memo) for k, v in node.value)
    else:
        size = 1
    memo[id(node)] = min(size, YAML_NODE_BUDGET + 1)
    return memo[id(node)]


def safe_yaml(text: str, source: str) -> Any:
    """``yaml.safe_load(text)``, refusing documents whose aliases expand past the budget.

    Raises:
        YAMLError: one line naming ``source``, the line and column of invalid YAML, or the
            expansion.
    """
    # One parse: the node tree is checked, then constructed (libyaml's parser where PyYAML has
    # it, several times faster than the pure-Python one; every run's report reads config.yaml).
    loader = _SafeLoader(text)
    try:
        try:
            node = loader.get_single_node()
        except yaml.YAMLError as exc:
            raise YAMLError(_yaml_problem(exc, source)) from None
        if node is None:
            return None
        if _expanded_size(node, {}) > YAML_NODE_BUDGET:
            raise YAMLError(
                f"{source}: its aliases expand to more than {YAML_NODE_BUDGET} YAML "
                "nodes; refusing to read it (write the values out instead)"
            )
        try:
            return loader.construct_document(node)
        except yaml.YAMLError as exc:  # e.g. an unknown tag (!!python/object)
            raise YAMLError(_yaml_problem(exc, source)) from None
        except (ValueError, TypeError, OverflowError) as exc:
            # a value PyYAML parses but cannot construct, e.g. the date 0000-00-00
            raise YAMLError(
                f"{source}: invalid YAML value ({' '.join(str(exc).split())})") from None
    finally:
        loader.dispose()


_SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_SafeDumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def _yaml_problem(exc: yaml.YAMLError, source: str) -> str:
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    problem = getattr(exc, "problem", None) or "invalid YAML"
    return f"{source}: invalid YAML{where}: {problem}"
