"""Stochastic gradient descent and its momentum variants (Algorithms 8.1-8.3)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from ravine.optim.base import (
    NON_NEGATIVE,
    POSITIVE,
    UNIT_INTERVAL,
    RavineOptimizer,
    add_scaled_,
)

__all__ = ["SGD", "Momentum", "Nesterov", "sgd_update", "momentum_update", "nesterov_update"]


def l2(grads: list[Tensor], params: list[Tensor], weight_decay: float) -> list[Tensor]:
    """``g + λθ``: the gradient of the loss plus the L2 penalty ``λ/2 ‖θ‖²`` (new tensors)."""
    if weight_decay == 0:
        return grads
    return torch._foreach_add(grads, params, alpha=weight_decay)


def sgd_update(
    params: list[Tensor], grads: list[Tensor], *, lr: float | Tensor, weight_decay: float
) -> None:
    """Algorithm 8.1: ``θ ← θ - ε g``."""
    grads = l2(grads, params, weight_decay)
    add_scaled_(params, grads, -lr)


def momentum_update(
    params: list[Tensor],
    grads: list[Tensor],
    velocity: list[Tensor],
    *,
    lr: float | Tensor,
    momentum: float,
    weight_decay: float,
) -> None:
    """Algorithm 8.2: ``v ← αv - εg``; ``θ ← θ + v``."""
    grads = l2(grads, params, weight_decay)
    torch._foreach_mul_(velocity, momentum)
    add_scaled_(velocity, grads, -lr)
    torch._foreach_add_(params, velocity)


def nesterov_update(
    params: list[Tensor],
    grads: list[Tensor],
    velocity: list[Tensor],
    *,
    lr: float | Tensor,
    momentum: float,
    shift: float | Tensor,
    weight_decay: float,
) -> None:
    """Algorithm 8.3 with the parameters holding the interim point ``θ̃ = θ + s·v``.

    ``g`` was taken at ``θ̃``. Then ``θ = θ̃ - s·v``; ``v ← αv - εg``; ``θ ← θ + v``; and the
    parameters move to the next interim point ``θ + αv``.
    """
    grads = l2(grads, params, weight_decay)
    add_scaled_(params, velocity, -shift)
    torch._foreach_mul_(velocity, momentum)
    add_scaled_(velocity, grads, -lr)
    torch._foreach_add_(params, velocity, alpha=1.0 + momentum)


class SGD(RavineOptimizer):
    r"""Stochastic gradient descent, Algorithm 8.1.

    .. math:: \theta \leftarrow \theta - \epsilon_k \hat g

    Args:
        params: parameters or parameter groups.
        lr: the learning rate ``ε`` (> 0); vary it with a schedule from :mod:`ravine.schedules`.
        weight_decay: ``λ >= 0``; adds ``λθ`` to the gradient (L2 regularization).
        clip_norm: if set, gradients are re-normalized to this global norm when it is exceeded.
        track_grad_norm: record :attr:`last_grad_norm` even without clipping.
        compile: fuse the update with ``torch.compile`` (``True`` or a backend name).

    Equals ``torch.optim.SGD(momentum=0)``.
    """

    _rule = staticmethod(sgd_update)
    _checks = {"lr": POSITIVE, "weight_decay": NON_NEGATIVE}

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 0.01,
        *,
        weight_decay: float = 0.0,
        clip_norm: float | None = None,
        track_grad_norm: bool = False,
        compile: bool | str = False,
    ) -> None:
        super().__init__(
            params,
            dict(lr=lr, weight_decay=weight_decay),
            clip_norm=clip_norm,
            track_grad_norm=track_grad_norm,
            compile=compile,
        )

    def _hyper(self, group: dict[str, Any]) -> dict[str, Any]:
        return dict(lr=group["lr"], weight_decay=group["weight_decay"])


class Momentum(RavineOptimizer):
    r"""SGD with momentum, Algorithm 8.2.

    .. math::
        v \leftarrow \alpha v - \epsilon g, \qquad \theta \leftarrow \theta + v

    The velocity ``v`` carries the learning rate inside it, exactly as the book writes it.

    torch's fused SGD kernel keeps ``b = -v/ε`` and is not used: matching this form would need
    a dampening of ``1 + ε``, whose rounding in float32 changes the step by up to ``1e-7/ε``.

    .. warning:: ``torch.optim.SGD(momentum=α)`` keeps ``b ← αb + g`` and steps
       ``θ ← θ - εb``. The two agree while ``ε`` is constant (``v = -εb``); when the
       learning rate changes, torch rescales the whole accumulated history by the new rate,
       whereas here only new gradients see it.

    Args:
        params: parameters or parameter groups.
        lr: ``ε > 0``.
        momentum: ``α`` in ``[0, 1)``.
        weight_decay, clip_norm, track_grad_norm, compile: as in :class:`SGD`.
    """

    _rule = staticmethod(momentum_update)
    _buffers = ("velocity",)
    _checks = {"lr": POSITIVE, "momentum": UNIT_INTERVAL, "weight_decay": NON_NEGATIVE}

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 0.01,
        *,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        clip_norm: float | None = None,
        track_grad_norm: bool = False,
        compile: bool | str = False,
    ) -> None:
        super().__init__(
            params,
            dict(lr=lr, momentum=momentum, weight_decay=weight_decay),
            clip_norm=clip_norm,
            track_grad_norm=track_grad_norm,
            compile=compile,
        )

    def _hyper(self, group: dict[str, Any]) -> dict[str, Any]:
        return dict(lr=group["lr"], momentum=group["momentum"], weight_decay=group["weight_decay"])


class Nesterov(RavineOptimizer):
    r"""SGD with Nesterov momentum, Algorithm 8.3.

    .. math::
        \tilde\theta \leftarrow \theta + \alpha v, \quad
        g \leftarrow \nabla J(\tilde\theta), \quad
        v \leftarrow \alpha v - \epsilon g, \quad
        \theta \leftarrow \theta + v

    Between steps the parameters hold the interim point ``θ̃``, so ``loss.backward()`` computes
    the gradient exactly where the algorithm asks for it; use :meth:`true_params` (or
    :func:`ravine.optim.true_params`) to evaluate or save the true ``θ``. Weight decay adds
    ``λθ̃``, the gradient of the L2 penalty at the point where the loss gradient was taken.

    At constant learning rate the parameters follow ``torch.optim.SGD(momentum=α,
    nesterov=True)`` exactly (torch's formulation also tracks the interim point); with a
    changing learning rate torch's differs, as for :class:`Momentum`.

    Args: as :class:`Momentum`.
    """

    _rule = staticmethod(nesterov_update)
    _buffers = ("velocity",)
    _scalars = {"shift": 0.0}
    _checks = {"lr": POSITIVE, "momentum": UNIT_INTERVAL, "weight_decay": NON_NEGATIVE}
    interim_point = True

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 0.01,
        *,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        clip_norm: float | None = None,
        track_grad_norm: bool = False,
        compile: bool | str = False,
    ) -> None:
        super().__init__(
            params,
            dict(lr=lr, momentum=momentum, weight_decay=weight_decay),
            clip_norm=clip_norm,
            track_grad_norm=track_grad_norm,
            compile=compile,
        )

    def _hyper(self, group: dict[str, Any], shift: float) -> dict[str, Any]:
        return dict(
            lr=group["lr"],
            momentum=group["momentum"],
            shift=shift,
            weight_decay=group["weight_decay"],
        )

    def _advance(self, group: dict[str, Any], shift: float) -> dict[str, Any]:
        return {"shift": group["momentum"]}
