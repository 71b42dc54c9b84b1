"""Dead units: activations that output zero on every example, so they pass no gradient back.

A unit of a ReLU is dead on ``data`` when its output is zero for every example: then its
derivative is zero everywhere on the data (``relu'(z) = 0`` for ``z <= 0``, torch's convention
at 0), the weights feeding it receive no gradient from any of these examples, and gradient
descent cannot bring it back on this data. For conv outputs ``(N, C, *spatial)`` the unit is the
channel, dead when it is zero at every position for every example; for ``(N, F)`` it is the
feature. In general units run along dimension 1, torch's channel dimension.

Only activations with an exactly-zero flat region are hooked, as modules:

* ``nn.ReLU`` and ``nn.ReLU6`` (a ReLU6 unit saturated at 6 on every example also passes no
  gradient, but it is not counted: only the zero region is "dead");
* ``nn.Threshold(threshold, value)``: dead when the output equals ``value`` on every example
  (its constant region; zero for the ReLU-like ``value=0``).

``nn.LeakyReLU``, ``nn.GELU``, ``nn.ELU``, ``nn.SiLU`` and the like have no flat region and are
never dead, so they are not hooked. Activations applied as functions (``F.relu`` inside
``forward``) cannot be hooked: the result then has ``hooked_layers == 0`` (and a warning says
so). A module applied several times per forward pass (one ``nn.ReLU`` shared by all layers) is
measured separately at each call, named ``"name[k]"`` for its k-th call.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ravine._checks import check_int
from ravine.diagnostics.hvp import (
    MODES,
    as_batches,
    batch_rng,
    check_choice,
    checked_batch,
    model_mode,
    warn,
)

__all__ = ["DeadUnits", "dead_units", "HOOKED"]

HOOKED = (nn.ReLU, nn.ReLU6, nn.Threshold)


@dataclass(frozen=True, repr=False)
class DeadUnits:
    """Dead units per activation (see the module docstring).

    Attributes:
        counts: ``{activation name: (dead units, units)}``, in the order the activations ran.
        n_examples: examples seen.
        hooked_layers: activations measured (0: none found; the model may use ``F.relu``).
    """

    counts: dict[str, tuple[int, int]]
    n_examples: int
    hooked_layers: int

    @property
    def fraction(self) -> float:
        """Dead units over all units of all hooked activations (nan when nothing was hooked)."""
        dead = sum(d for d, _ in self.counts.values())
        total = sum(t for _, t in self.counts.values())
        return dead / total if total else math.nan

    @property
    def by_layer(self) -> dict[str, float]:
        """``{activation name: fraction of its units that are dead}``."""
        return {name: d / t if t else math.nan for name, (d, t) in self.counts.items()}

    def to_dict(self) -> dict[str, Any]:
        """``{"dead_fraction", "dead_by_layer", "hooked_layers"}``."""
        return {
            "dead_fraction": self.fraction,
            "dead_by_layer": self.by_layer,
            "hooked_layers": self.hooked_layers,
        }

    def __repr__(self) -> str:
        if self.hooked_layers == 0:
            return (
                "DeadUnits(hooked_layers=0: no nn.ReLU/ReLU6/Threshold module ran; "
                "functional activations such as F.relu cannot be hooked)"
            )
        dead = sum(d for d, _ in self.counts.values())
        total = sum(t for _, t in self.counts.values())
        return (
            f"DeadUnits({dead}/{total} dead = {self.fraction:.3g} over {self.hooked_layers} "
            f"activations, {self.n_examples} examples)"
        )


def _zero_value(module: nn.Module) -> float:
    return float(module.value) if isinstance(module, nn.Threshold) else 0.0


def _units_alive(output: Tensor, flat_value: float) -> Tensor:
    """Per unit (dimension 1), whether the output leaves the flat value on some example."""
    moved = output.detach() != flat_value
    if moved.ndim <= 1:
        return moved.any().reshape(1)
    return moved.transpose(0, 1).reshape(moved.shape[1], -1).any(1)


def dead_units(model: nn.Module, data: Any, *, mode: str = "eval", seed: int = 0) -> DeadUnits:
    """Count the units of every ReLU, ReLU6 and Threshold module that are zero on all of ``data``.

    Args:
        model: any ``nn.Module``; its activation modules are hooked for the duration of the call
            (hooks are always removed, also on error, and every module's mode is restored).
        data: a batch ``(x, y)``, a dataset with tensors ``.x``/``.y``, or an iterable of batches
            (``y`` is not used); one forward pass over it, without gradients.
        mode: "eval" (default) or "train" (batch norm on batch statistics, dropout on, with
            masks seeded by ``seed`` per batch; buffers are restored).
        seed: seeds the dropout masks in "train" mode.
    """
    check_choice("mode", mode, MODES)
    check_int("seed", seed, 0)
    activations = [(n, m) for n, m in model.named_modules() if isinstance(m, HOOKED)]
    first = next(iter(model.parameters()), None)
    device = first.device if first is not None else torch.device("cpu")
    alive: dict[tuple[str, int], Tensor] = {}
    calls: dict[str, int] = {}

    def hook_for(name: str, flat_value: float) -> Callable[..., None]:
        def hook(module: nn.Module, inputs: Any, output: Tensor) -> None:
            call = calls.get(name, 0)
            calls[name] = call + 1
            units = _units_alive(output, flat_value)
            seen = alive.get((name, call))
            if seen is None:
                alive[(name, call)] = units
            elif seen.shape != units.shape:
                raise ValueError(
                    f"activation {name!r} changed its number of units between batches "
                    f"({seen.numel()} then {units.numel()})"
                )
            else:
                seen |= units

        return hook

    handles = [
        module.register_forward_hook(hook_for(name or type(module).__name__, _zero_value(module)))
        for name, module in activations
    ]
    n_examples = 0
    try:
        with torch.no_grad(), model_mode(model, mode):
            for index, batch in enumerate(as_batches(data)):
                x, _ = checked_batch(batch, index)
                calls.clear()
                with batch_rng(mode, seed, index, device):
                    model(x.to(device))
                n_examples += x.shape[0]
    finally:
        for handle in handles:
            handle.remove()
    repeated = {name for name, call in alive if call > 0}
    counts = {
        (f"{name}[{call}]" if name in repeated else name): (
            int((~units).sum()),
            units.numel(),
        )
        for (name, call), units in alive.items()
    }
    if not counts:
        warn(
            "dead_units: no nn.ReLU, nn.ReLU6 or nn.Threshold module ran in the forward pass; "
            "activations applied as functions (F.relu) cannot be hooked"
        )
    return DeadUnits(counts=counts, n_examples=n_examples, hooked_layers=len(counts))
