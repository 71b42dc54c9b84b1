"""Stochastic gradient descent and its momentum variants (Algorithms 8.1-8.3)."""

from __future__ import annotations

import math
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


def sgd_fused(params: list[Tensor], grads: list[Tensor], *, lr: float, weight_decay: float) -> None:
    """Algorithm 8.1 through ``torch._fused_sgd_`` without momentum (one pass)."""
    torch._fused_sgd_(
        params, grads, [], weight_decay=weight_decay, momentum=0.0, lr=lr, dampening=0.0,
        nesterov=False, maximize=False, is_first_step=False,
    )


# Momentum and Nesterov keep the velocity as a buffer u with a per-parameter scale p, v = -p·u
# (u is torch's "momentum_buffer"). The box's update, rewritten for u, is the update torch's fused
# SGD kernel computes, so the default path is that kernel. state_dict() still holds the book's v.


def momentum_update(
    params: list[Tensor],
    grads: list[Tensor],
    buf: list[Tensor],
    *,
    lr: float | Tensor,
    momentum: float,
    scale: float | Tensor,
    weight_decay: float,
) -> None:
    """Algorithm 8.2 with ``v = -p·u`` (``p = scale``, the previous step's ``ε``; then ``ε``).

    ``v ← αv - εg``  ⇔  ``u ← (αp/ε)·u + g``;  ``θ ← θ + v``  ⇔  ``θ ← θ - ε·u``.
    """
    grads = l2(grads, params, weight_decay)
    torch._foreach_mul_(buf, momentum * scale / lr)
    torch._foreach_add_(buf, grads)
    add_scaled_(params, buf, -lr)


def momentum_fused(
    params: list[Tensor],
    grads: list[Tensor],
    buf: list[Tensor],
    *,
    lr: float,
    momentum: float,
    scale: float,
    weight_decay: float,
) -> None:
    """:func:`momentum_update` through ``torch._fused_sgd_`` (momentum ``αp/ε``, no dampening).

    torch's kernel takes no buffer when its momentum is 0, so ``α = 0`` runs the foreach rule.
    """
    if momentum == 0:
        momentum_update(
            params, grads, buf, lr=lr, momentum=momentum, scale=scale, weight_decay=weight_decay
        )
        return
    torch._fused_sgd_(
        params, grads, buf, weight_decay=weight_decay, momentum=momentum * scale / lr, lr=lr,
        dampening=0.0, nesterov=False, maximize=False, is_first_step=False,
    )


def nesterov_update(
    params: list[Tensor],
    grads: list[Tensor],
    buf: list[Tensor],
    *,
    lr: float | Tensor,
    momentum: float,
    shift: float | Tensor,
    scale: float | Tensor,
    new_scale: float | Tensor,
    weight_decay: float,
) -> None:
    """Algorithm 8.3 with ``v = -p·u`` and the parameters holding ``θ̃ = θ + s·v``.

    ``g`` was taken at ``θ̃``. With ``p = scale`` before the step and ``p' = new_scale`` after:
    ``θ = θ̃ - s·v = θ̃ + s·p·u``; ``v ← αv - εg``  ⇔  ``u ← (αp/p')·u + (ε/p')·g``;
    ``θ ← θ + v`` and the next interim point ``θ + αv`` give ``θ̃ ← θ - (1+α)·p'·u``.
    """
    grads = l2(grads, params, weight_decay)
    add_scaled_(params, buf, shift * scale)
    torch._foreach_mul_(buf, momentum * scale / new_scale)
    add_scaled_(buf, grads, lr / new_scale)
    add_scaled_(params, buf, -(1.0 + momentum) * new_scale)


def nesterov_fused(
    params: list[Tensor],
    grads: list[Tensor],
    buf: list[Tensor],
    *,
    lr: float,
    momentum: float,
    shift: float,
    scale: float,
    new_scale: float,
    weight_decay: float,
) -> None:
    """:func:`nesterov_update` through ``torch._fused_sgd_(nesterov=True)`` (one pass).

    torch's kernel computes ``b ← m·b + (1-d)·g``; ``θ̃ ← θ̃ - ε·(g + m·b)``. With ``b = u``,
    ``m = αp/p'`` and ``1 - d = ε/p'`` the buffer line is the box's velocity update, and the
    parameter line equals ``θ̃ ← θ̃ + α·p·u - (1+α)·p'·u'`` (shift ``s = α``) exactly when
    ``p'² = ε·p``, which is how :class:`Nesterov` chooses ``p'``. No extra pass is needed when
    ``ε`` changes. A shift other than ``α`` (after :meth:`~RavineOptimizer.to_true_params` or a
    change of ``α``) falls back to :func:`nesterov_update` for that step, as does ``α = 0``.
    """
    if shift != momentum or momentum == 0:
        nesterov_update(
            params, grads, buf, lr=lr, momentum=momentum, shift=shift, scale=scale,
            new_scale=new_scale, weight_decay=weight_decay,
        )
        return
    torch._fused_sgd_(
        params, grads, buf, weight_decay=weight_decay, momentum=momentum * scale / new_scale,
        lr=lr, dampening=1.0 - lr / new_scale, nesterov=True, maximize=False, is_first_step=False,
    )


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
        fused: ``None`` (default) runs torch's fused SGD kernel on CPU/CUDA unless ``compile``
            is set; ``False`` uses the multi-tensor path.
        flat: keep parameters, gradients and state in one contiguous buffer per device and
            dtype (see :mod:`ravine.optim.base`); fastest for many small tensors. ``None``
            (default): on with ``compile`` (one compiled graph over the buffers), off without.

    Equals ``torch.optim.SGD(momentum=0)``.
    """

    _rule = staticmethod(sgd_update)
    _fused_rule = staticmethod(sgd_fused)
    _checks = {"lr": POSITIVE, "weight_decay": NON_NEGATIVE}
    _cache_blocking = False  # θ ← θ - εg is one pass: nothing to keep in the cache

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 0.01,
        *,
        weight_decay: float = 0.0,
        clip_norm: float | None = None,
        track_grad_norm: bool = False,
        compile: bool | str = False,
        fused: bool | None = None,
        flat: bool | None = None,
    ) -> None:
        super().__init__(
            params,
            dict(lr=lr, weight_decay=weight_decay),
            clip_norm=clip_norm,
            track_grad_norm=track_grad_norm,
            compile=compile,
            flat=flat,
            fused=fused,
        )

    def _hyper(self, group: dict[str, Any]) -> dict[str, Any]:
        return dict(lr=group["lr"], weight_decay=group["weight_decay"])


class _ScaledVelocity(RavineOptimizer):
    """Velocity kept as ``u`` with ``v = -p·u`` in memory, as the book's ``v`` in checkpoints.

    ``state_dict()`` adds each parameter's ``"velocity"`` (the book's ``v = -p·u``) next to the
    internal ``"momentum_buffer"`` ``u`` and ``"velocity_scale"`` ``p``; resuming from it is
    bit-identical. ``load_state_dict`` uses ``u`` when it matches ``v`` and otherwise rebuilds
    ``u`` from ``v`` (checkpoints of earlier ravine versions, or an edited ``v``).
    """

    _buffers = ("momentum_buffer",)
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
        fused: bool | None = None,
        flat: bool | None = None,
    ) -> None:
        super().__init__(
            params,
            dict(lr=lr, momentum=momentum, weight_decay=weight_decay),
            clip_norm=clip_norm,
            track_grad_norm=track_grad_norm,
            compile=compile,
            flat=flat,
            fused=fused,
        )

    @staticmethod
    def _velocity(state: dict[str, Any]) -> Tensor:
        return state["momentum_buffer"] * -state["velocity_scale"]

    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()
        sd["state"] = {
            k: {**st, "velocity": self._velocity(st)} if "momentum_buffer" in st else st
            for k, st in sd["state"].items()
        }
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state.get(p)
                if not state or "velocity" not in state:
                    continue
                v = state.pop("velocity")
                if "momentum_buffer" in state and torch.equal(self._velocity(state), v):
                    continue
                state["velocity_scale"] = group["lr"]
                state["momentum_buffer"] = v / -group["lr"]


class Momentum(_ScaledVelocity):
    r"""SGD with momentum, Algorithm 8.2.

    .. math::
        v \leftarrow \alpha v - \epsilon g, \qquad \theta \leftarrow \theta + v

    The velocity ``v`` carries the learning rate inside it, exactly as the book writes it, also
    when the learning rate changes: a new ``ε`` scales only the new gradient.

    In memory ravine keeps ``u = -v/ε`` (``ε`` of the last step): the box becomes
    ``u ← (α ε_prev/ε)·u + g``; ``θ ← θ - ε·u``, which is torch's fused SGD kernel with momentum
    ``α ε_prev/ε`` and no dampening, so the default path is one pass over memory.
    ``state_dict()`` holds the book's ``v`` (``"velocity"``) besides ``u``.

    .. warning:: ``torch.optim.SGD(momentum=α)`` keeps ``b ← αb + g`` and steps
       ``θ ← θ - εb``. The two agree while ``ε`` is constant (``v = -εb``); when the
       learning rate changes, torch rescales the whole accumulated history by the new rate,
       whereas here only new gradients see it.

    Args:
        params: parameters or parameter groups.
        lr: ``ε > 0``.
        momentum: ``α`` in ``[0, 1)``.
        weight_decay, clip_norm, track_grad_norm, compile, fused, flat: as in :class:`SGD`.
    """

    _rule = staticmethod(momentum_update)
    _fused_rule = staticmethod(momentum_fused)
    _scalars = {"velocity_scale": 0.0}

    def _hyper(self, group: dict[str, Any], velocity_scale: float) -> dict[str, Any]:
        return dict(
            lr=group["lr"],
            momentum=group["momentum"],
            # A fresh buffer is zero; any scale describes it.
            scale=velocity_scale or group["lr"],
            weight_decay=group["weight_decay"],
        )

    def _advance(self, group: dict[str, Any], velocity_scale: float) -> dict[str, Any]:
        return {"velocity_scale": group["lr"]}


class Nesterov(_ScaledVelocity):
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

    In memory ravine keeps ``u = -v/p`` with a scale that follows the learning rate,
    ``p ← √(ε·p)``; with that scale the box's step, interim point included, is exactly torch's
    fused Nesterov SGD kernel (see :func:`nesterov_fused`), for any sequence of learning rates.
    ``state_dict()`` holds the book's ``v`` (``"velocity"``) besides ``u``.

    At constant learning rate the parameters follow ``torch.optim.SGD(momentum=α,
    nesterov=True)`` exactly (torch's formulation also tracks the interim point); with a
    changing learning rate torch's differs, as for :class:`Momentum`.

    Args: as :class:`Momentum`.
    """

    _rule = staticmethod(nesterov_update)
    _fused_rule = staticmethod(nesterov_fused)
    _scalars = {"shift": 0.0, "velocity_scale": 0.0}
    interim_point = True

    def _scales(self, group: dict[str, Any], velocity_scale: float) -> tuple[float, float]:
        """``(p, p')``: a fresh (zero) buffer takes the scale ``ε``, so that ``p' = ε``."""
        scale = velocity_scale or group["lr"]
        return scale, math.sqrt(group["lr"] * scale)

    def _hyper(self, group: dict[str, Any], shift: float, velocity_scale: float) -> dict[str, Any]:
        scale, new_scale = self._scales(group, velocity_scale)
        return dict(
            lr=group["lr"],
            momentum=group["momentum"],
            # A fresh buffer is zero, so its shift is immaterial: take α (the kernel's form).
            shift=shift if velocity_scale else group["momentum"],
            scale=scale,
            new_scale=new_scale,
            weight_decay=group["weight_decay"],
        )

    def _advance(
        self, group: dict[str, Any], shift: float, velocity_scale: float
    ) -> dict[str, Any]:
        _, new_scale = self._scales(group, velocity_scale)
        return {"shift": group["momentum"], "velocity_scale": new_scale}

    def _interim_offset(self, state: dict[str, Any]) -> tuple[Tensor, float]:
        # θ̃ = θ + s·v = θ - s·p·u.
        return state["momentum_buffer"], state["shift"] * state["velocity_scale"]
