"""Adaptive step sizes: AdaGrad, RMSProp, RMSProp with Nesterov momentum, Adam (Algs 8.4-8.7)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from ravine.optim.base import (
    BETAS,
    NON_NEGATIVE,
    POSITIVE,
    UNIT_INTERVAL,
    RavineOptimizer,
    add_scaled_,
    addcdiv_scaled_,
)
from ravine.optim.sgd import l2

__all__ = [
    "AdaGrad",
    "RMSProp",
    "RMSPropNesterov",
    "Adam",
    "AdamW",
    "adagrad_update",
    "rmsprop_update",
    "rmsprop_nesterov_update",
    "adam_update",
]


def adagrad_update(
    params: list[Tensor],
    grads: list[Tensor],
    sum_sq: list[Tensor],
    *,
    lr: float | Tensor,
    eps: float,
    weight_decay: float,
) -> None:
    """Algorithm 8.4: ``r ← r + g⊙g``; ``θ ← θ - ε g / (δ + √r)``."""
    grads = l2(grads, params, weight_decay)
    torch._foreach_addcmul_(sum_sq, grads, grads)
    denom = torch._foreach_sqrt(sum_sq)
    torch._foreach_add_(denom, eps)
    addcdiv_scaled_(params, grads, denom, -lr)


def rmsprop_update(
    params: list[Tensor],
    grads: list[Tensor],
    sq_avg: list[Tensor],
    *,
    lr: float | Tensor,
    rho: float,
    eps: float,
    weight_decay: float,
) -> None:
    """Algorithm 8.5: ``r ← ρr + (1-ρ) g⊙g``; ``θ ← θ - ε g / √(δ + r)``."""
    grads = l2(grads, params, weight_decay)
    torch._foreach_mul_(sq_avg, rho)
    torch._foreach_addcmul_(sq_avg, grads, grads, value=1.0 - rho)
    denom = torch._foreach_add(sq_avg, eps)
    torch._foreach_sqrt_(denom)
    addcdiv_scaled_(params, grads, denom, -lr)


def rmsprop_nesterov_update(
    params: list[Tensor],
    grads: list[Tensor],
    sq_avg: list[Tensor],
    velocity: list[Tensor],
    *,
    lr: float | Tensor,
    rho: float,
    momentum: float,
    shift: float | Tensor,
    eps: float,
    weight_decay: float,
) -> None:
    """Algorithm 8.6 with the parameters holding the interim point ``θ̃ = θ + s·v``.

    ``g`` was taken at ``θ̃``: ``r ← ρr + (1-ρ) g⊙g``; ``v ← αv - ε g / √(δ + r)``;
    ``θ ← θ + v``; then the parameters move to the next interim point ``θ + αv``.
    """
    grads = l2(grads, params, weight_decay)
    add_scaled_(params, velocity, -shift)
    torch._foreach_mul_(sq_avg, rho)
    torch._foreach_addcmul_(sq_avg, grads, grads, value=1.0 - rho)
    denom = torch._foreach_add(sq_avg, eps)
    torch._foreach_sqrt_(denom)
    torch._foreach_mul_(velocity, momentum)
    addcdiv_scaled_(velocity, grads, denom, -lr)
    torch._foreach_add_(params, velocity, alpha=1.0 + momentum)


def adam_update(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avg: list[Tensor],
    exp_avg_sq: list[Tensor],
    *,
    lr: float | Tensor,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    decoupled_decay: float,
    bias_correction1: float | Tensor,
    bias_correction2_sqrt: float | Tensor,
) -> None:
    """Algorithm 8.7: ``s ← ρ₁s + (1-ρ₁)g``; ``r ← ρ₂r + (1-ρ₂)g⊙g``;
    ``θ ← θ - ε ŝ / (√r̂ + δ)`` with ``ŝ = s/(1-ρ₁ᵗ)``, ``r̂ = r/(1-ρ₂ᵗ)``.

    ``decoupled_decay`` is AdamW's ``θ ← θ(1 - ελ)``, applied before the update (as torch).
    """
    if decoupled_decay != 0:
        torch._foreach_mul_(params, 1.0 - lr * decoupled_decay)
    grads = l2(grads, params, weight_decay)
    torch._foreach_lerp_(exp_avg, grads, 1.0 - beta1)
    torch._foreach_mul_(exp_avg_sq, beta2)
    torch._foreach_addcmul_(exp_avg_sq, grads, grads, value=1.0 - beta2)
    denom = torch._foreach_sqrt(exp_avg_sq)
    torch._foreach_div_(denom, bias_correction2_sqrt)
    torch._foreach_add_(denom, eps)
    addcdiv_scaled_(params, exp_avg, denom, -lr / bias_correction1)


def _step_tensors(params: list[Tensor], step: int) -> list[Tensor]:
    """The step count as torch's fused kernels take it (one float32 tensor, shared)."""
    t = torch.tensor(float(step), dtype=torch.float32, device=params[0].device)
    return [t] * len(params)


def adagrad_fused(
    params: list[Tensor],
    grads: list[Tensor],
    sum_sq: list[Tensor],
    *,
    lr: float,
    eps: float,
    weight_decay: float,
    step: int,
) -> None:
    """Algorithm 8.4 through ``torch._fused_adagrad_`` (one pass over the tensors)."""
    torch._fused_adagrad_(
        params, grads, sum_sq, _step_tensors(params, step),
        lr=lr, lr_decay=0.0, weight_decay=weight_decay, eps=eps, maximize=False,
    )


def adam_fused(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avg: list[Tensor],
    exp_avg_sq: list[Tensor],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    decoupled: bool,
    step: int,
) -> None:
    """Algorithm 8.7 through ``torch._fused_adam_`` / ``_fused_adamw_`` (one pass)."""
    kernel = torch._fused_adamw_ if decoupled else torch._fused_adam_
    kernel(
        params, grads, exp_avg, exp_avg_sq, [], _step_tensors(params, step),
        lr=lr, beta1=beta1, beta2=beta2, weight_decay=weight_decay, eps=eps,
        amsgrad=False, maximize=False,
    )


class AdaGrad(RavineOptimizer):
    r"""AdaGrad, Algorithm 8.4.

    .. math::
        r \leftarrow r + g \odot g, \qquad
        \theta \leftarrow \theta - \frac{\epsilon}{\delta + \sqrt{r}} \odot g

    Args:
        params: parameters or parameter groups.
        lr: global learning rate ``ε > 0``.
        eps: ``δ > 0`` (the book suggests ``1e-7``), added outside the root as in the box.
        weight_decay, clip_norm, track_grad_norm, compile, flat: as in :class:`ravine.optim.SGD`.
        fused: ``None`` (default) runs torch's fused AdaGrad kernel on CPU/CUDA unless
            ``compile`` is set; ``False`` uses the multi-tensor path.

    Equals ``torch.optim.Adagrad(lr_decay=0, initial_accumulator_value=0, eps=δ)``
    (torch's default ``eps`` is ``1e-10``).
    """

    _rule = staticmethod(adagrad_update)
    _fused_rule = staticmethod(adagrad_fused)
    _buffers = ("sum_sq",)
    _scalars = {"step": 0}
    _checks = {"lr": POSITIVE, "eps": POSITIVE, "weight_decay": NON_NEGATIVE}

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 0.01,
        *,
        eps: float = 1e-7,
        weight_decay: float = 0.0,
        clip_norm: float | None = None,
        track_grad_norm: bool = False,
        compile: bool | str = False,
        fused: bool | None = None,
        flat: bool | None = None,
    ) -> None:
        super().__init__(
            params,
            dict(lr=lr, eps=eps, weight_decay=weight_decay),
            clip_norm=clip_norm,
            track_grad_norm=track_grad_norm,
            compile=compile,
            flat=flat,
            fused=fused,
        )

    def _hyper(self, group: dict[str, Any], step: int) -> dict[str, Any]:
        return dict(lr=group["lr"], eps=group["eps"], weight_decay=group["weight_decay"])

    def _fused_hyper(self, group: dict[str, Any], step: int) -> dict[str, Any]:
        return dict(self._hyper(group, step), step=step + 1)

    def _advance(self, group: dict[str, Any], step: int) -> dict[str, Any]:
        return {"step": step + 1}


class RMSProp(RavineOptimizer):
    r"""RMSProp, Algorithm 8.5.

    .. math::
        r \leftarrow \rho r + (1 - \rho)\, g \odot g, \qquad
        \theta \leftarrow \theta - \frac{\epsilon}{\sqrt{\delta + r}} \odot g

    .. warning:: ``δ`` sits *inside* the square root, as in the book (suggested ``1e-6``).
       ``torch.optim.RMSprop`` adds its ``eps`` outside, ``ε g / (√r + eps)``, and calls ``ρ``
       ``alpha``. The two agree when ``δ`` is negligible against ``r``.

    Args:
        params: parameters or parameter groups.
        lr: global learning rate ``ε > 0``.
        rho: decay rate ``ρ`` in ``[0, 1)``.
        eps: ``δ > 0``.
        weight_decay, clip_norm, track_grad_norm, compile, flat: as in :class:`ravine.optim.SGD`.
    """

    _rule = staticmethod(rmsprop_update)
    _buffers = ("sq_avg",)
    _checks = {"lr": POSITIVE, "rho": UNIT_INTERVAL, "eps": POSITIVE, "weight_decay": NON_NEGATIVE}

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        *,
        rho: float = 0.9,
        eps: float = 1e-6,
        weight_decay: float = 0.0,
        clip_norm: float | None = None,
        track_grad_norm: bool = False,
        compile: bool | str = False,
        flat: bool | None = None,
    ) -> None:
        super().__init__(
            params,
            dict(lr=lr, rho=rho, eps=eps, weight_decay=weight_decay),
            clip_norm=clip_norm,
            track_grad_norm=track_grad_norm,
            compile=compile,
            flat=flat,
        )

    def _hyper(self, group: dict[str, Any]) -> dict[str, Any]:
        return dict(
            lr=group["lr"], rho=group["rho"], eps=group["eps"], weight_decay=group["weight_decay"]
        )


class RMSPropNesterov(RavineOptimizer):
    r"""RMSProp with Nesterov momentum, Algorithm 8.6.

    .. math::
        \tilde\theta \leftarrow \theta + \alpha v, \quad
        g \leftarrow \nabla J(\tilde\theta), \quad
        r \leftarrow \rho r + (1-\rho)\, g \odot g, \quad
        v \leftarrow \alpha v - \frac{\epsilon}{\sqrt{\delta + r}} \odot g, \quad
        \theta \leftarrow \theta + v

    The box divides by ``√r``; ravine adds ``δ`` inside the root as Algorithm 8.5 does, so a
    zero gradient component cannot divide by zero. The accumulator ``r`` is fed by the gradient
    at the interim point, literally as in the box. Between steps the parameters hold the interim
    point (see :class:`ravine.optim.Nesterov` and :meth:`true_params`).

    Args:
        params: parameters or parameter groups.
        lr: global learning rate ``ε > 0``.
        rho: decay rate ``ρ`` in ``[0, 1)``.
        momentum: ``α`` in ``[0, 1)``.
        eps: ``δ > 0``.
        weight_decay, clip_norm, track_grad_norm, compile, flat: as in :class:`ravine.optim.SGD`.
    """

    _rule = staticmethod(rmsprop_nesterov_update)
    _buffers = ("sq_avg", "velocity")
    _scalars = {"shift": 0.0}
    _checks = {
        "lr": POSITIVE,
        "rho": UNIT_INTERVAL,
        "momentum": UNIT_INTERVAL,
        "eps": POSITIVE,
        "weight_decay": NON_NEGATIVE,
    }
    interim_point = True

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        *,
        rho: float = 0.9,
        momentum: float = 0.9,
        eps: float = 1e-6,
        weight_decay: float = 0.0,
        clip_norm: float | None = None,
        track_grad_norm: bool = False,
        compile: bool | str = False,
        flat: bool | None = None,
    ) -> None:
        super().__init__(
            params,
            dict(lr=lr, rho=rho, momentum=momentum, eps=eps, weight_decay=weight_decay),
            clip_norm=clip_norm,
            track_grad_norm=track_grad_norm,
            compile=compile,
            flat=flat,
        )

    def _hyper(self, group: dict[str, Any], shift: float) -> dict[str, Any]:
        return dict(
            lr=group["lr"],
            rho=group["rho"],
            momentum=group["momentum"],
            shift=shift,
            eps=group["eps"],
            weight_decay=group["weight_decay"],
        )

    def _advance(self, group: dict[str, Any], shift: float) -> dict[str, Any]:
        return {"shift": group["momentum"]}


class Adam(RavineOptimizer):
    r"""Adam, Algorithm 8.7 (with bias correction).

    .. math::
        t \leftarrow t + 1, \quad
        s \leftarrow \rho_1 s + (1-\rho_1) g, \quad
        r \leftarrow \rho_2 r + (1-\rho_2)\, g \odot g, \\
        \hat s = \frac{s}{1-\rho_1^t}, \quad \hat r = \frac{r}{1-\rho_2^t}, \quad
        \theta \leftarrow \theta - \epsilon \frac{\hat s}{\sqrt{\hat r} + \delta}

    Args:
        params: parameters or parameter groups.
        lr: step size ``ε > 0``.
        betas: ``(ρ₁, ρ₂)``, each in ``[0, 1)``.
        eps: ``δ > 0``.
        weight_decay: ``λ >= 0``, L2 regularization (``λθ`` added to the gradient).
        clip_norm, track_grad_norm, compile, flat: as in :class:`ravine.optim.SGD`.
        fused: ``None`` (default) runs torch's fused Adam kernel (the same update in one pass)
            on CPU/CUDA unless ``compile`` is set; ``False`` uses the multi-tensor path.

    Equals ``torch.optim.Adam`` with the same arguments.
    """

    _rule = staticmethod(adam_update)
    _fused_rule = staticmethod(adam_fused)
    _buffers = ("exp_avg", "exp_avg_sq")
    _scalars = {"step": 0}
    _checks = {"lr": POSITIVE, "betas": BETAS, "eps": POSITIVE, "weight_decay": NON_NEGATIVE}
    _decoupled = False

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        *,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        clip_norm: float | None = None,
        track_grad_norm: bool = False,
        compile: bool | str = False,
        fused: bool | None = None,
        flat: bool | None = None,
    ) -> None:
        super().__init__(
            params,
            dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay),
            clip_norm=clip_norm,
            track_grad_norm=track_grad_norm,
            compile=compile,
            flat=flat,
            fused=fused,
        )

    def _hyper(self, group: dict[str, Any], step: int) -> dict[str, Any]:
        beta1, beta2 = group["betas"]
        t = step + 1
        decay = group["weight_decay"]
        return dict(
            lr=group["lr"],
            beta1=beta1,
            beta2=beta2,
            eps=group["eps"],
            weight_decay=0.0 if self._decoupled else decay,
            decoupled_decay=decay if self._decoupled else 0.0,
            bias_correction1=1.0 - beta1**t,
            bias_correction2_sqrt=(1.0 - beta2**t) ** 0.5,
        )

    def _fused_hyper(self, group: dict[str, Any], step: int) -> dict[str, Any]:
        beta1, beta2 = group["betas"]
        return dict(
            lr=group["lr"],
            beta1=beta1,
            beta2=beta2,
            eps=group["eps"],
            weight_decay=group["weight_decay"],
            decoupled=self._decoupled,
            step=step + 1,
        )

    def _advance(self, group: dict[str, Any], step: int) -> dict[str, Any]:
        return {"step": step + 1}


class AdamW(Adam):
    r"""Adam with decoupled weight decay (Loshchilov & Hutter, 2019).

    .. math:: \theta \leftarrow \theta (1 - \epsilon\lambda), \text{ then the Adam update of
       Algorithm 8.7 with the unregularized gradient.}

    Args: as :class:`Adam`; ``weight_decay`` defaults to ``1e-2`` (torch's default) and is
    decoupled rather than added to the gradient. Equals ``torch.optim.AdamW``.
    """

    _decoupled = True

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        *,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        clip_norm: float | None = None,
        track_grad_norm: bool = False,
        compile: bool | str = False,
        fused: bool | None = None,
        flat: bool | None = None,
    ) -> None:
        super().__init__(
            params,
            lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            clip_norm=clip_norm,
            track_grad_norm=track_grad_norm,
            compile=compile,
            flat=flat,
            fused=fused,
        )
