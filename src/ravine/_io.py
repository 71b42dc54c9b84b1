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

__all__ = ["json_ready", "write_atomic", "write_json_atomic", "write_yaml_atomic"]


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
