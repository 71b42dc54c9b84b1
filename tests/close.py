"""Comparing numbers that two runs of the same computation produced.

The same float64 computation run twice in one process can differ in the last bit or two
(seen on CI: λmax from two identical Lanczos runs, one ulp apart), so such results are compared
to 1e-12 relative; strings, flags and integers must still be equal.
"""

from __future__ import annotations

import math
from typing import Any

import pytest


def close(a: Any, b: Any, rel: float = 1e-12) -> bool:
    """``a`` equals ``b``, floats (also inside dicts, lists and tuples) to ``rel`` relative."""
    if isinstance(a, float) and isinstance(b, float):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return a == pytest.approx(b, rel=rel, abs=1e-300)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(close(a[k], b[k], rel) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(close(x, y, rel) for x, y in zip(a, b, strict=True))
    return a == b


def mismatches(a: dict[str, Any], b: dict[str, Any], rel: float = 1e-12) -> list[str]:
    """The keys whose values are not :func:`close` (and keys only one side has)."""
    keys = a.keys() | b.keys()
    return sorted(k for k in keys if k not in a or k not in b or not close(a[k], b[k], rel))
