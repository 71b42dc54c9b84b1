"""Atomic file writes: a temporary file in the same folder, fsync, then a rename.

A reader (or a process resumed after ``kill -9``) therefore sees either the previous complete
file or the new complete one, never a partial write.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import yaml

__all__ = [
    "YAMLError",
    "json_ready",
    "safe_yaml",
    "write_atomic",
    "write_json_atomic",
    "write_yaml_atomic",
]


def write_atomic(path: str | os.PathLike[str], write: Callable[[IO[str]], None]) -> None:
    """Call ``write(handle)`` on a temporary text file beside ``path``, then rename it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


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


def write_yaml_atomic(data: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Write ``data`` as YAML atomically (keys in their order)."""
    write_atomic(path, lambda handle: yaml.safe_dump(data, handle, sort_keys=False))


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
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise YAMLError(f"{source}: invalid YAML{where}: {problem}") from None
    if node is None:
        return None
    if _expanded_size(node, {}) > YAML_NODE_BUDGET:
        raise YAMLError(f"{source}: its aliases expand to more than {YAML_NODE_BUDGET} YAML "
                        "nodes; refusing to read it (write the values out instead)")
    try:
        return yaml.SafeLoader(text).get_single_data()
    except yaml.YAMLError as exc:  # e.g. an unknown tag (!!python/object)
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise YAMLError(f"{source}: invalid YAML{where}: {problem}") from None
    except (ValueError, TypeError, OverflowError) as exc:
        # a value PyYAML parses but cannot construct, e.g. the date 0000-00-00
        raise YAMLError(f"{source}: invalid YAML value ({' '.join(str(exc).split())})") from None
