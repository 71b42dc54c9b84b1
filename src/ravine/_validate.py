"""Value checks, kept importable here; they live in :mod:`ravine._checks` (one error toolkit)."""

from __future__ import annotations

from ravine._checks import check_int, check_positive

__all__ = ["check_int", "check_positive"]
