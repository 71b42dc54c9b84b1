"""Is the learning rate too large for the curvature? Step-size measurements for every optimizer.

On the local quadratic model ``R(θ + δ) ≈ R + gᵀδ + ½ δᵀHδ`` an optimizer with a fixed
(diagonal) preconditioner ``P`` moves each eigen-direction of ``P^{-1/2} H P^{-1/2}`` on its own,
so its stability depends on one number, the largest eigenvalue λ of that operator (the
*sharpness*; ``P = I`` for the SGD family), and on the optimizer's momentum:

==================  =====================================  ================================
optimizer           largest stable learning rate           λ is the top eigenvalue of
==================  =====================================  ================================
sgd                 ``2 / λ``                              ``H``
momentum (8.2)      ``2(1+α) / λ``                         ``H``
nesterov (8.3)      ``2(1+α) / ((1+2α) λ)``                ``H``
adagrad, rmsprop    ``2 / λ`` (``2(1+μ)/λ``, torch μ)      ``P^{-1/2} H P^{-1/2}``
rmsprop-nesterov    ``2(1+α) / ((1+2α) λ)``                ``P^{-1/2} H P^{-1/2}``
adam, adamw         ``2(1+β₁) / ((1-β₁) λ)``               ``P^{-1/2} H P^{-1/2}``
==================  =====================================  ================================

Derivations (one eigen-direction with curvature λ, ``h = ελ``; a 2x2 linear iteration on
``(θ, v)`` is stable iff its characteristic polynomial ``z² - Tz + D`` has both roots inside
the unit circle, i.e. ``|D| < 1`` and ``|T| < 1 + D`` (Jury)):

* Heavy ball, ``v ← αv - hθ; θ ← θ + v``: ``T = 1 + α - h``, ``D = α``; ``|T| < 1 + α`` gives
  ``h < 2(1+α)``.
* Nesterov as in Algorithm 8.3, ``v ← αv - h(θ + αv); θ ← θ + v``: ``T = (1-h)(1+α)``,
  ``D = α(1-h)``. Near the bound ``h > 1``, so ``T < 0`` and ``|T| < 1 + D`` reads
  ``(h-1)(1+α) < 1 + α - αh``, i.e. ``h < 2(1+α)/(1+2α)`` (and ``|D| < 1`` holds there, since
  ``2(1+α)/(1+2α) < 1 + 1/α``). torch's Nesterov SGD has the same ``T`` and ``D``.
* An exponential moving average of the gradient, ``m ← βm + (1-β)g; θ ← θ - εm`` (Adam's first
  moment, torch's dampened SGD momentum with ``β = α``, ``1-β = 1-dampening``), is the heavy ball
  with ``h`` replaced by ``(1-β)h``: ``h < 2(1+β)/(1-β)``, which is ``38/ε`` at ``β = 0.9``
  (Cohen et al., 2022, "Adaptive gradient methods at the edge of stability", whose λ is the
  preconditioned sharpness below).
* With a frozen preconditioner ``P`` the update ``θ ← θ - ε P^{-1} g`` in the coordinates
  ``φ = P^{1/2} θ`` is the unpreconditioned method on ``P^{-1/2} H P^{-1/2}``: AdaGrad and
  RMSProp take the SGD bound, RMSProp with Nesterov momentum (Algorithm 8.6) the Nesterov bound,
  torch's RMSprop with momentum μ (``b ← μb + g/P``) the heavy-ball bound.

These are bounds for the quadratic model with ``P`` held fixed. Adam's bias correction
``1/(1-β₁ᵗ)`` enlarges early steps and is left out (it tends to 1); L2 weight decay adds ``λ_wd``
to the curvature of every decayed parameter and AdamW's decoupled decay damps each step, and
neither is included: the sharpness is that of ``loss_fn`` as given.

The lecture's ill-conditioning test (ch. 8): a step ``-εg`` changes the loss by
``-ε gᵀg + ½ ε² gᵀHg`` to second order, so the step *increases* the loss once
``½ ε² gᵀHg > ε gᵀg``; the best step along ``-g`` is ``ε* = gᵀg / gᵀHg``
(:func:`curvature_along_gradient`).

For Nesterov and RMSProp-Nesterov the model's parameters hold the interim point ``θ + αv``
between steps (see :mod:`ravine.optim.base`); everything here is measured at the parameters as
they are, which is where the next gradient is taken.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from ravine._checks import check_int, check_positive
from ravine.diagnostics.findings import lr_bound
from ravine.diagnostics.hvp import HessianOperator, LossFn
from ravine.diagnostics.spectrum import ExtremesResult, operator_extremes
from ravine.optim import (
    SGD,
    AdaGrad,
    Adam,
    AdamW,
    Momentum,
    Nesterov,
    RMSProp,
    RMSPropNesterov,
)

__all__ = [
    "KINDS",
    "OptimizerView",
    "optimizer_view",
    "stability_bound",
    "preconditioned_extremes",
    "AlongGradient",
    "curvature_along_gradient",
    "step_size",
]

KINDS = ("sgd", "momentum", "nesterov", "adagrad", "rmsprop", "rmsprop-nesterov", "adam", "adamw")
ADAPTIVE = frozenset({"adagrad", "rmsprop", "rmsprop-nesterov", "adam", "adamw"})

_RAVINE: dict[type[Optimizer], str] = {
    SGD: "sgd",
    Momentum: "momentum",
    Nesterov: "nesterov",
    AdaGrad: "adagrad",
    RMSProp: "rmsprop",
    RMSPropNesterov: "rmsprop-nesterov",
    Adam: "adam",
    AdamW: "adamw",
}
# torch.optim.AdamW subclasses torch.optim.Adam; the exact class is looked up first.
_TORCH: tuple[type[Optimizer], ...] = (
    torch.optim.SGD,
    torch.optim.Adagrad,
    torch.optim.RMSprop,
    torch.optim.AdamW,
    torch.optim.Adam,
)


def _number(x: Any) -> float:
    return float(x.item()) if isinstance(x, Tensor) else float(x)


# ---------------------------------------------------------------------------- optimizer view


@dataclass(frozen=True)
class OptimizerView:
    """What the step-size measurements need from an optimizer, in the book's terms.

    Attributes:
        kind: one of :data:`KINDS` (torch's SGD with momentum is "momentum", with
            ``nesterov=True`` "nesterov"; ``torch.optim.Adam(decoupled_weight_decay=True)`` is
            "adamw").
        lr: the learning rate ``ε`` (the ``lr`` argument of :func:`optimizer_view` if given; for
            ``torch.optim.Adagrad`` with ``lr_decay`` the rate of its next step).
        momentum: heavy-ball / Nesterov ``α``, Adam's ``β₁``, torch RMSprop's ``momentum``;
            0 without momentum.
        beta2: the decay of the squared-gradient average (Adam's ``β₂``, RMSProp's ``ρ``, torch
            RMSprop's ``alpha``); ``None`` for the SGD family and AdaGrad (a plain sum).
        eps: the ``δ`` that keeps the denominator positive; ``None`` for the SGD family.
        adaptive: whether the optimizer divides by a per-parameter denominator.
        source: "ravine" or "torch".
        dampening: torch SGD's dampening ``d`` (``b ← αb + (1-d)g``); 0 elsewhere.
        centered: torch RMSprop's ``centered`` (denominator ``√(r - ḡ²) + eps``).
        amsgrad: torch Adam's ``amsgrad`` (denominator from the running maximum of ``v``).
        optimizer: the optimizer read (its state is read again by :meth:`preconditioner`).
    """

    kind: str
    lr: float
    momentum: float = 0.0
    beta2: float | None = None
    eps: float | None = None
    adaptive: bool = False
    source: str = "ravine"
    dampening: float = 0.0
    centered: bool = False
    amsgrad: bool = False
    optimizer: Optimizer | None = field(default=None, repr=False, compare=False)

    def preconditioner(
        self,
        params: Sequence[Tensor],
        grads: Sequence[Tensor | None] | None = None,
    ) -> list[Tensor] | None:
        """The diagonal ``P`` the optimizer divides by, one tensor per parameter (float64).

        Without ``grads``: the denominator held in the optimizer's state, i.e. the one its last
        step divided by (``None`` for a non-adaptive optimizer, or before any step: "no adaptive
        state yet"). Each implementation's own form is used:

        * AdaGrad (ravine and torch): ``P = δ + √r``, ``r = Σ g⊙g``.
        * RMSProp, RMSProp-Nesterov (ravine, δ inside the root as Algorithm 8.5): ``P = √(δ + r)``;
          torch RMSprop: ``P = √r + eps``, centered ``P = √(r - ḡ⊙ḡ) + eps``.
        * Adam, AdamW: ``P = √v̂ + δ`` with ``v̂ = v / (1 - β₂ᵗ)`` (``t`` the step count; torch's
          ``amsgrad`` uses the running maximum of ``v``).

        With ``grads`` (one per parameter, ``None`` = no gradient): the denominator the *next*
        step will divide by when it receives these gradients: the gradient (plus ``λθ`` for L2
        weight decay, as the optimizer adds it; gradient clipping is not applied) is first folded
        into the average and ``t`` advanced, exactly as the step does. This also gives the
        first step's denominator when there is no state. A parameter without a gradient keeps
        its current denominator.

        Raises ``ValueError`` for a parameter the optimizer does not hold.
        """
        if not self.adaptive or self.optimizer is None:
            return None
        opt = self.optimizer
        params = list(params)
        if grads is not None and len(grads) != len(params):
            raise ValueError(
                f"grads must have one entry per parameter ({len(params)}), got {len(grads)}"
            )
        groups = {id(p): group for group in opt.param_groups for p in group["params"]}
        for i, p in enumerate(params):
            if id(p) not in groups:
                raise ValueError(
                    f"parameter {i} (shape {tuple(p.shape)}) is not in the optimizer's param groups"
                )
        if grads is None and not any(self._stepped(opt.state.get(p)) for p in params):
            return None
        out = []
        for i, p in enumerate(params):
            g = None if grads is None else grads[i]
            group = groups[id(p)]
            state = opt.state.get(p) or {}
            with torch.no_grad():
                out.append(self._denominator(p, state, group, g))
        return out

    @staticmethod
    def _stepped(state: dict[str, Any] | None) -> bool:
        # torch's Adagrad creates its state (step 0) at construction.
        return bool(state) and _number(state.get("step", 1)) > 0

    def _denominator(
        self, p: Tensor, state: dict[str, Any], group: dict[str, Any], g: Tensor | None
    ) -> Tensor:
        def buffer(name: str) -> Tensor:
            value = state.get(name)
            return (
                torch.zeros_like(p, dtype=torch.float64)
                if value is None
                else value.detach().to(torch.float64)
            )

        eps = float(group["eps"])
        if g is not None:
            g = g.detach().to(torch.float64)
            decay = float(group["weight_decay"])
            if decay and self.kind != "adamw":
                g = g + decay * p.detach().to(torch.float64)
        if self.kind == "adagrad":
            r = buffer("sum_sq" if self.source == "ravine" else "sum")
            if g is not None:
                r = r + g * g
            return r.sqrt() + eps
        if self.kind in ("rmsprop", "rmsprop-nesterov"):
            rho = float(self.beta2)  # type: ignore[arg-type]
            r = buffer("sq_avg" if self.source == "ravine" else "square_avg")
            if g is not None:
                r = rho * r + (1 - rho) * g * g
            if self.source == "ravine":
                return (r + eps).sqrt()
            if self.centered:
                mean = buffer("grad_avg")
                if g is not None:
                    mean = rho * mean + (1 - rho) * g
                r = r - mean * mean
            return r.sqrt() + eps
        beta2 = float(group["betas"][1])
        v = buffer("exp_avg_sq")
        t = _number(state.get("step", 0))
        if g is not None:
            v = beta2 * v + (1 - beta2) * g * g
            t += 1
            if self.amsgrad:
                v = torch.maximum(buffer("max_exp_avg_sq"), v)
        elif self.amsgrad:
            v = buffer("max_exp_avg_sq")
        if t == 0:
            return torch.full_like(v, eps)
        return v.sqrt() / math.sqrt(1 - beta2**t) + eps


def _torch_fields(opt: Optimizer, group: dict[str, Any]) -> dict[str, Any]:
    name = type(opt).__name__
    if group.get("maximize", False):
        raise ValueError(f"torch.optim.{name} with maximize=True ascends; not supported")
    if isinstance(opt, torch.optim.SGD):
        momentum = float(group["momentum"])
        kind = "sgd" if momentum == 0 else ("nesterov" if group["nesterov"] else "momentum")
        dampening = float(group["dampening"]) if momentum else 0.0
        return dict(kind=kind, momentum=momentum, dampening=dampening)
    if isinstance(opt, torch.optim.Adagrad):
        return dict(kind="adagrad", eps=float(group["eps"]))
    if isinstance(opt, torch.optim.RMSprop):
        return dict(
            kind="rmsprop",
            momentum=float(group["momentum"]),
            beta2=float(group["alpha"]),
            eps=float(group["eps"]),
            centered=bool(group["centered"]),
        )
    beta1, beta2 = (float(b) for b in group["betas"])
    decoupled = isinstance(opt, torch.optim.AdamW) or group.get("decoupled_weight_decay", False)
    return dict(
        kind="adamw" if decoupled else "adam",
        momentum=beta1,
        beta2=beta2,
        eps=float(group["eps"]),
        amsgrad=bool(group["amsgrad"]),
    )


def _ravine_fields(kind: str, group: dict[str, Any]) -> dict[str, Any]:
    if kind == "sgd":
        return dict(kind=kind)
    if kind in ("momentum", "nesterov"):
        return dict(kind=kind, momentum=float(group["momentum"]))
    if kind == "adagrad":
        return dict(kind=kind, eps=float(group["eps"]))
    if kind in ("rmsprop", "rmsprop-nesterov"):
        return dict(
            kind=kind,
            momentum=float(group.get("momentum", 0.0)),
            beta2=float(group["rho"]),
            eps=float(group["eps"]),
        )
    beta1, beta2 = (float(b) for b in group["betas"])
    return dict(kind=kind, momentum=beta1, beta2=beta2, eps=float(group["eps"]))


def _classify(optimizer: Any) -> tuple[str, str | None]:
    """``("ravine" | "torch", ravine kind or None)`` from the class (its nearest known base)."""
    for cls in type(optimizer).__mro__:
        if cls in _RAVINE:
            return "ravine", _RAVINE[cls]
        if cls in _TORCH:
            return "torch", None
    known = (
        ", ".join(c.__name__ for c in _RAVINE)
        + " (ravine.optim); "
        + ", ".join(c.__name__ for c in _TORCH)
        + " (torch.optim)"
    )
    cls = type(optimizer)
    raise ValueError(
        f"cannot read the step size of optimizer class {cls.__module__}.{cls.__qualname__}; "
        f"known: {known}"
    )


def optimizer_view(optimizer: Optimizer, *, lr: float | None = None) -> OptimizerView:
    """Read an optimizer's kind, learning rate, momentum and denominator settings.

    Reads every ravine optimizer (:mod:`ravine.optim`, all paths: foreach, fused, flat,
    compiled) and ``torch.optim.SGD`` (momentum, nesterov, dampening), ``Adagrad`` (``lr_decay``
    folded into :attr:`OptimizerView.lr`), ``RMSprop`` (momentum, centered), ``Adam``
    (amsgrad, ``decoupled_weight_decay``) and ``AdamW``. A subclass is read as its nearest known
    base class.

    Args:
        optimizer: the optimizer.
        lr: if given (> 0), replaces the optimizer's learning rate (to ask "what if").

    Raises ``ValueError`` (one line) for an unknown class, ``maximize=True``, or param groups
    that disagree on a hyperparameter the view holds (the learning rate may differ when ``lr``
    is given).
    """
    if lr is not None:
        check_positive("lr", lr)
    source, kind = _classify(optimizer)
    if not optimizer.param_groups:
        raise ValueError("optimizer has no param groups")
    per_group = [
        _ravine_fields(kind, g) if kind is not None else _torch_fields(optimizer, g)
        for g in optimizer.param_groups
    ]
    lrs = [_number(g["lr"]) for g in optimizer.param_groups]
    for key in per_group[0]:
        values = [fields[key] for fields in per_group]
        if any(v != values[0] for v in values):
            raise ValueError(f"param groups differ in {key} ({values}); the view needs one value")
    if lr is None and any(v != lrs[0] for v in lrs):
        raise ValueError(f"param groups differ in lr ({lrs}); pass lr= to choose one")
    fields = per_group[0]
    rate = lrs[0] if lr is None else float(lr)
    if lr is None and isinstance(optimizer, torch.optim.Adagrad):
        # torch's Adagrad steps with lr / (1 + (t-1)·lr_decay) at its t-th step.
        group = optimizer.param_groups[0]
        steps = [
            _number(optimizer.state[p]["step"]) for p in group["params"] if p in optimizer.state
        ]
        rate /= 1 + (max(steps) if steps else 0.0) * float(group["lr_decay"])
    return OptimizerView(
        lr=rate,
        adaptive=fields["kind"] in ADAPTIVE,
        source=source,
        optimizer=optimizer,
        **fields,
    )


# ---------------------------------------------------------------------------- bounds


def stability_bound(view: OptimizerView | None, sharpness: float) -> float:
    """The largest stable learning rate on the local quadratic (see the module docstring).

    ``sharpness`` is λmax of ``H`` for the SGD family and of ``P^{-1/2} H P^{-1/2}`` for adaptive
    optimizers; ``view=None`` means plain gradient descent (``2/λ``). Returns ``inf`` when
    ``sharpness <= 0`` (no direction curves upwards) or when torch SGD's dampening is 1.

    ===================  =================================
    sgd, adagrad         ``2 / λ``
    momentum             ``2(1+α) / ((1-d) λ)`` (d: torch's dampening, else 0)
    nesterov             ``2(1+α) / ((1+2α) λ)``
    rmsprop              ``2(1+μ) / λ`` (μ: torch RMSprop's momentum, else 0)
    rmsprop-nesterov     ``2(1+α) / ((1+2α) λ)``
    adam, adamw          ``2(1+β₁) / ((1-β₁) λ)``
    ===================  =================================
    """
    if (
        isinstance(sharpness, bool)
        or not isinstance(sharpness, (int, float))
        or not math.isfinite(sharpness)
    ):
        raise ValueError(f"sharpness must be a finite number, got {sharpness!r}")
    if view is None:
        return lr_bound(sharpness)
    return lr_bound(sharpness, view.kind, view.momentum, view.dampening)


# ---------------------------------------------------------------------------- preconditioned


def _flat_preconditioner(op: HessianOperator, preconditioner: Sequence[Tensor] | Tensor) -> Tensor:
    if isinstance(preconditioner, Tensor):
        flat = preconditioner.detach().to(op.device, torch.float64)
        if flat.ndim != 1 or flat.numel() != op.dim:
            raise ValueError(
                f"preconditioner must be 1-D with {op.dim} entries (the trainable parameters), "
                f"got shape {tuple(flat.shape)}"
            )
    else:
        pieces = list(preconditioner)
        if len(pieces) != len(op.params):
            raise ValueError(
                f"preconditioner must have one tensor per trainable parameter "
                f"({len(op.params)}), got {len(pieces)}"
            )
        for i, (piece, p) in enumerate(zip(pieces, op.params, strict=True)):
            if piece.numel() != p.numel():
                raise ValueError(
                    f"preconditioner entry {i} must have {p.numel()} elements like parameter "
                    f"{op.names[i]!r}, got {piece.numel()}"
                )
        flat = op.flatten([piece.detach() for piece in pieces], torch.float64)
    if not bool(torch.isfinite(flat).all()) or bool((flat <= 0).any()):
        raise ValueError("preconditioner entries must be finite and > 0")
    return flat


def _scaled_matvec(op: HessianOperator, inv_sqrt: Tensor) -> Callable[[Tensor], Tensor]:
    def matvec(v: Tensor) -> Tensor:
        return inv_sqrt * op.matvec(inv_sqrt * v)

    return matvec


def _top(op: HessianOperator, matvec: Callable[[Tensor], Tensor], **lanczos: Any) -> ExtremesResult:
    return operator_extremes(
        matvec,
        op.dim,
        which="max",
        device=op.device,
        eps=float(torch.finfo(op.dtype).eps),
        **lanczos,
    )


def preconditioned_extremes(
    model: nn.Module,
    loss_fn: LossFn,
    data: Any,
    preconditioner: Sequence[Tensor] | Tensor,
    *,
    mode: str = "eval",
    seed: int = 0,
    tol: float = 1e-3,
    max_hvps: int = 100,
    backend: str = "auto",
) -> ExtremesResult:
    """Extreme eigenvalues of the preconditioned Hessian ``P^{-1/2} H P^{-1/2}`` by Lanczos.

    The operator is symmetric and has the eigenvalues of ``P^{-1} H`` (similar matrices), the
    curvature an adaptive optimizer's step ``-ε P^{-1} g`` sees; its product is
    ``v ↦ p^{-1/2} ⊙ H (p^{-1/2} ⊙ v)``, one Hessian-vector product, no dense matrix.

    Args:
        model, loss_fn, data, mode, backend: as :func:`~ravine.diagnostics.hessian_extremes`.
        preconditioner: ``P``'s diagonal, one tensor per trainable parameter (as
            :meth:`OptimizerView.preconditioner` returns) or one flat vector; entries > 0.
        seed: the Lanczos start vector (and dropout masks in "train" mode).
        tol: relative residual at which the top Ritz value counts as converged (Lanczos stops
            on the top end; ``lambda_min`` is a by-product).
        max_hvps: at most this many products.
    """
    check_int("max_hvps", max_hvps, 1)
    op = HessianOperator(model, loss_fn, data, mode=mode, backend=backend, seed=seed)
    inv_sqrt = _flat_preconditioner(op, preconditioner).rsqrt()
    return _top(op, _scaled_matvec(op, inv_sqrt), tol=tol, max_steps=max_hvps, seed=seed)


# ---------------------------------------------------------------------------- along a direction


@dataclass(frozen=True)
class AlongGradient:
    """The loss change of one step ``-ε d`` predicted to second order (lecture, ch. 8).

    ``R(θ - εd) - R(θ) ≈ -ε gᵀd + ½ ε² dᵀHd``; with ``d = g`` the lecture's test
    ``½ ε² gᵀHg > ε gᵀg`` (the step increases the loss) for ill-conditioning.

    Attributes:
        lr: ``ε``.
        loss: ``R(θ)``.
        gTg, gHg: ``gᵀg`` and ``gᵀHg`` of the gradient ``g``.
        gTd, dHd: the same along ``d`` (equal to ``gTg``, ``gHg`` when ``d = g``).
        first_order: ``-ε gᵀd``.
        second_order: ``½ ε² dᵀHd``.
        predicted_change: their sum.
        lr_star: ``gᵀd / dᵀHd``, the step minimizing the quadratic along ``-d`` (``inf`` when
            ``dᵀHd <= 0``: no upward curvature along d; negative when ``-d`` ascends).
        along: "gradient" or "direction" (a given ``d``).
        hvps: Hessian-vector products used.
    """

    lr: float
    loss: float
    gTg: float
    gHg: float
    gTd: float
    dHd: float
    first_order: float
    second_order: float
    predicted_change: float
    lr_star: float
    along: str
    hvps: int

    def to_dict(self) -> dict[str, float | int | str]:
        """Flat JSON-friendly numbers (``lr_star`` may be ``inf``)."""
        return {
            "lr": self.lr,
            "loss": self.loss,
            "gTg": self.gTg,
            "gHg": self.gHg,
            "gTd": self.gTd,
            "dHd": self.dHd,
            "first_order": self.first_order,
            "second_order": self.second_order,
            "predicted_change": self.predicted_change,
            "lr_star": self.lr_star,
            "along": self.along,
            "hvps": self.hvps,
        }


def _lr_star(gd: float, dhd: float) -> float:
    return gd / dhd if dhd > 0 else math.inf


def _along(
    op: HessianOperator,
    loss: float,
    g: Tensor,
    lr: float,
    direction: Tensor | None,
) -> AlongGradient:
    before = op.hvps
    hg = op.matvec(g)
    gtg, ghg = float(g @ g), float(g @ hg)
    gtd, dhd = gtg, ghg
    if direction is not None:
        gtd, dhd = float(g @ direction), float(direction @ op.matvec(direction))
    first, second = -lr * gtd, 0.5 * lr * lr * dhd
    return AlongGradient(
        lr=lr,
        loss=loss,
        gTg=gtg,
        gHg=ghg,
        gTd=gtd,
        dHd=dhd,
        first_order=first,
        second_order=second,
        predicted_change=first + second,
        lr_star=_lr_star(gtd, dhd),
        along="gradient" if direction is None else "direction",
        hvps=op.hvps - before,
    )


def _flat_direction(op: HessianOperator, direction: Sequence[Tensor] | Tensor) -> Tensor:
    if isinstance(direction, Tensor):
        if direction.ndim != 1 or direction.numel() != op.dim:
            raise ValueError(
                f"direction must be 1-D with {op.dim} entries (the trainable parameters), "
                f"got shape {tuple(direction.shape)}"
            )
        flat = direction.detach().to(op.device, torch.float64)
    else:
        pieces = list(direction)
        if len(pieces) != len(op.params) or any(
            d.numel() != p.numel() for d, p in zip(pieces, op.params, strict=False)
        ):
            raise ValueError(
                f"direction must hold one tensor per trainable parameter ({len(op.params)}), "
                "each shaped like it"
            )
        flat = op.flatten([d.detach() for d in pieces], torch.float64)
    if not bool(torch.isfinite(flat).all()):
        raise ValueError("direction holds non-finite values")
    return flat


def curvature_along_gradient(
    model: nn.Module,
    loss_fn: LossFn,
    data: Any,
    lr: float,
    *,
    mode: str = "eval",
    seed: int = 0,
    direction: Sequence[Tensor] | Tensor | None = None,
) -> AlongGradient:
    """The lecture's ill-conditioning test at the current parameters, for learning rate ``lr``.

    Computes ``g = ∇R(θ)`` and ``Hg`` (one product) over ``data`` and reports ``gᵀg``, ``gᵀHg``,
    the first- and second-order terms of the change ``R(θ - εg) - R(θ)`` and ``ε* = gᵀg/gᵀHg``.

    Args:
        model, loss_fn, data, mode: as :func:`~ravine.diagnostics.hessian_extremes`.
        lr: ``ε > 0``.
        seed: dropout masks in "train" mode.
        direction: ``d`` with the step ``-ε d`` (flat, or one tensor per trainable parameter).
            Adaptive optimizers do not step along ``-g``: for RMSProp or AdaGrad (and Adam
            ignoring its first moment) pass ``d = P^{-1} g`` with ``P`` from
            :meth:`OptimizerView.preconditioner`, e.g. ``[gi / pi for gi, pi in ...]``; to
            include momentum pass the whole step divided by ``-ε``. One more product.
    """
    check_positive("lr", lr)
    op = HessianOperator(model, loss_fn, data, mode=mode, seed=seed)
    d = None if direction is None else _flat_direction(op, direction)
    loss, g = op.loss_and_gradient()
    return _along(op, loss, g, float(lr), d)


# ---------------------------------------------------------------------------- all together


def step_size(
    model: nn.Module,
    loss_fn: LossFn,
    data: Any,
    optimizer: Optimizer | None = None,
    *,
    lr: float | None = None,
    mode: str = "eval",
    seed: int = 0,
    tol: float = 1e-3,
    max_hvps: int = 100,
    hessian_top: ExtremesResult | None = None,
    deadline: float | None = None,
) -> dict[str, Any]:
    """Is the learning rate stable for the current curvature? Flat numbers for logs and advice.

    Measures the sharpness λ (Lanczos; of ``H``, or of ``P^{-1/2} H P^{-1/2}`` for an adaptive
    optimizer with ``P`` its current denominator), the stability bound for the optimizer
    (:func:`stability_bound`) and the second-order change of one step (the lecture's test,
    :func:`curvature_along_gradient`), on ``data`` at the current parameters.

    Keys (other modules code against these names):

    * ``optimizer`` (its kind, or "none"), ``adaptive``, ``lr``, ``momentum``;
    * ``sharpness``, ``sharpness_kind`` ("hessian" | "preconditioned"), ``lanczos_converged``;
    * ``lr_bound`` (:func:`stability_bound`; plain gradient descent's ``2/λ`` without an
      optimizer), ``lr_ratio`` = ``lr / lr_bound`` (> 1: unstable on the quadratic model);
    * ``gTg``, ``gHg`` (of the gradient), ``first_order``, ``second_order``,
      ``predicted_change``, ``lr_star`` along the step direction ``d``: ``g`` for the SGD family
      (momentum ignored), ``P^{-1} g`` for adaptive optimizers (their step for the current
      gradient, first moment and momentum ignored), with ``gTd``, ``dHd`` then added;
    * ``preconditioner`` (adaptive only): "state" (read from the optimizer) or "first-step"
      (no adaptive state yet: the denominator the first step would use with the full-batch
      gradient of ``data``);
    * ``loss``, ``hvps`` (Hessian-vector products used).

    Without an optimizer and without ``lr`` only the curvature keys are returned: ``optimizer``
    ("none"), ``adaptive``, ``sharpness``, ``sharpness_kind``, ``lanczos_converged``,
    ``lr_bound``, ``gTg``, ``gHg``, ``lr_star``, ``loss``, ``hvps``.

    Args:
        model, loss_fn, data, mode: as :func:`~ravine.diagnostics.hessian_extremes`.
        optimizer: a ravine or torch optimizer over the model's trainable parameters.
        lr: overrides the optimizer's learning rate (or gives one without an optimizer).
        seed: the Lanczos start vector (and dropout masks in "train" mode).
        tol, max_hvps: Lanczos tolerance and budget for the sharpness.
        hessian_top: λmax of ``H`` already measured on the same data (a Lanczos result, e.g.
            both ends of the spectrum at once); used as the sharpness of the SGD family instead
            of a second Lanczos run. Ignored for adaptive optimizers, whose sharpness is the
            preconditioned one.
        deadline: a ``time.perf_counter()`` value at which the Lanczos run stops early.
    """
    if lr is not None:
        check_positive("lr", lr)
    check_int("max_hvps", max_hvps, 1)
    view = optimizer_view(optimizer, lr=lr) if optimizer is not None else None
    op = HessianOperator(model, loss_fn, data, mode=mode, seed=seed)
    if optimizer is not None:
        held = {id(p) for group in optimizer.param_groups for p in group["params"]}
        missing = [n for n, p in zip(op.names, op.params, strict=True) if id(p) not in held]
        if missing:
            raise ValueError(f"parameter {missing[0]!r} of the model is not in the optimizer")
    loss, g = op.loss_and_gradient()
    adaptive = view is not None and view.adaptive
    out: dict[str, Any] = {"optimizer": "none" if view is None else view.kind, "adaptive": adaptive}
    if view is not None:
        out["lr"] = view.lr
        out["momentum"] = view.momentum
    elif lr is not None:
        out["lr"] = float(lr)
        out["momentum"] = 0.0
    matvec = op.matvec
    direction = None
    if adaptive:
        assert view is not None
        pre = view.preconditioner(op.params)
        out["preconditioner"] = "state"
        if pre is None:
            pre = view.preconditioner(op.params, grads=op.unflatten(g))
            out["preconditioner"] = "first-step"
        p_flat = _flat_preconditioner(op, pre)  # type: ignore[arg-type]
        matvec = _scaled_matvec(op, p_flat.rsqrt())
        direction = g / p_flat
    if hessian_top is not None and not adaptive:
        ext = hessian_top
    else:
        ext = _top(op, matvec, tol=tol, max_steps=max_hvps, seed=seed, deadline=deadline)
    out["sharpness"] = ext.lambda_max
    out["sharpness_kind"] = "preconditioned" if adaptive else "hessian"
    out["lanczos_converged"] = ext.converged
    out["lr_bound"] = stability_bound(view, ext.lambda_max)
    if "lr" in out:
        out["lr_ratio"] = out["lr"] / out["lr_bound"]
    along = _along(op, loss, g, out.get("lr", 1.0), direction)
    out["gTg"], out["gHg"] = along.gTg, along.gHg
    if adaptive:
        out["gTd"], out["dHd"] = along.gTd, along.dHd
    if "lr" in out:
        out["first_order"] = along.first_order
        out["second_order"] = along.second_order
        out["predicted_change"] = along.predicted_change
    out["lr_star"] = along.lr_star
    out["loss"] = loss
    out["hvps"] = op.hvps
    return out
