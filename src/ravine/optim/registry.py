"""Optimizers by name: ``create("nesterov", params, lr=0.05)``."""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from typing import Any

from ravine._checks import suggest
from ravine.optim.adaptive import AdaGrad, Adam, AdamW, RMSProp, RMSPropNesterov
from ravine.optim.base import RavineOptimizer
from ravine.optim.sgd import SGD, Momentum, Nesterov

__all__ = ["REGISTRY", "create", "names", "hyperparameters"]

REGISTRY: dict[str, type[RavineOptimizer]] = {
    "sgd": SGD,
    "momentum": Momentum,
    "nesterov": Nesterov,
    "adagrad": AdaGrad,
    "rmsprop": RMSProp,
    "rmsprop-nesterov": RMSPropNesterov,
    "adam": Adam,
    "adamw": AdamW,
}


def names() -> list[str]:
    """Registry names of ravine's optimizers, in the lecture's order."""
    return list(REGISTRY)


def lookup(name: str) -> type[RavineOptimizer]:
    """The optimizer class registered as ``name`` (``ValueError`` suggesting the closest)."""
    key = str(name).strip().lower().replace("_", "-")
    if key not in REGISTRY:
        raise ValueError(
            f"unknown optimizer {name!r}{suggest(key, REGISTRY)} "
            f"(choose from {', '.join(REGISTRY)})"
        )
    return REGISTRY[key]


def hyperparameters(name: str) -> dict[str, Any]:
    """Keyword options of the optimizer ``name`` with their defaults."""
    sig = inspect.signature(lookup(name).__init__)
    return {
        p.name: p.default
        for p in sig.parameters.values()
        if p.name not in ("self", "params") and p.default is not inspect.Parameter.empty
    }


def create(name: str, params: Iterable[Any], **hp: Any) -> RavineOptimizer:
    """Build the optimizer registered as ``name`` (see :func:`names`) with hyperparameters ``hp``.

    Unknown names and unknown hyperparameters raise ``ValueError`` naming the closest valid one.
    """
    cls = lookup(name)
    valid = hyperparameters(name)
    for key in hp:
        if key not in valid:
            raise ValueError(
                f"{name} has no hyperparameter {key!r}{suggest(key, valid)} "
                f"(valid: {', '.join(valid)})"
            )
    return cls(params, **hp)
