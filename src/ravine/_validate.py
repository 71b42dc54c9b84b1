"""Checks of values where they enter ravine, with messages naming the value and its range."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["check_int", "check_positive"]


def check_int(name: str, value: Any, minimum: int) -> None:
    """Raise ``ValueError`` unless ``value`` is an integer ``>= minimum``."""
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def check_positive(name: str, value: Any, *, allow_zero: bool = False) -> None:
    """Raise ``ValueError`` unless ``value`` is a finite real number ``> 0`` (``>= 0``)."""
    ok = isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool)
    ok = ok and bool(np.isfinite(value)) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")
