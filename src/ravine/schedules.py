r"""Learning-rate schedules: the lecture's step-size rules for any torch optimizer.

Stochastic approximation theory asks for step sizes :math:`\epsilon_k` with

.. math::
    \sum_{k=1}^{\infty} \epsilon_k = \infty, \qquad \sum_{k=1}^{\infty} \epsilon_k^2 < \infty

(the Robbins-Monro conditions): large enough in total to reach any point, shrinking fast
enough to average out the minibatch noise. Each schedule below says whether it meets them.

* :func:`linear_decay` / :class:`LinearDecay` -- the lecture's practical rule, decaying
  linearly from :math:`\alpha` to :math:`\beta` over :math:`t` steps, then holding
  :math:`\beta`; defaults :math:`\beta = 0.01\alpha` and :math:`t = 100` epochs.
* :func:`inverse_time` / :class:`InverseTime` -- :math:`\epsilon_k = \alpha / (1 + k/\tau)`,
  proportional to :math:`1/k` for large :math:`k`.
* :func:`linear_warmup` / :class:`LinearWarmup` -- a linear ramp put in front of any schedule.
* constant, step and cosine come from torch's own ``LambdaLR``, ``StepLR`` and
  ``CosineAnnealingLR`` through :func:`create`; ``reduce-on-plateau`` from torch's
  ``ReduceLROnPlateau``, stepped once per epoch by :class:`EpochStepped`.

The schedulers are ordinary :class:`torch.optim.lr_scheduler.LRScheduler` objects, so
they work with every torch optimizer (ravine's or ``torch.optim``'s), respect
per-parameter-group learning rates (each group decays from its own base rate
:math:`\alpha`, ``group["initial_lr"]``) and save and resume through
``state_dict()`` / ``load_state_dict()``. Step counts are optimizer steps: call
``sched.step()`` once after every ``opt.step()``; step :math:`k = 0` is the first
optimizer step. A schedule that moves once per epoch instead (``reduce-on-plateau``, or a
user's scheduler wrapped by :func:`wrap_user_scheduler` with ``interval="epoch"``) also has
``sched.epoch_end(value)``, called once after each epoch's evaluation with the monitored
value; :func:`is_epoch_driven` tells which kind a schedule is.

Example:
    >>> import torch
    >>> from ravine import schedules
    >>> opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    >>> sched = schedules.create("linear-decay", opt, warmup_steps=10, total_steps=1000)
    >>> round(opt.param_groups[0]["lr"], 6)  # warmup: 0.1 * 1/11 at the first step
    0.009091
"""

from __future__ import annotations

import copy
import math
import numbers
import warnings
from collections.abc import Callable, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import (
    CosineAnnealingLR,
    LambdaLR,
    LRScheduler,
    ReduceLROnPlateau,
    StepLR,
)

from ravine._checks import suggest

__all__ = [
    "linear_decay",
    "inverse_time",
    "linear_warmup",
    "LinearDecay",
    "InverseTime",
    "LinearWarmup",
    "EpochStepped",
    "is_epoch_driven",
    "wrap_user_scheduler",
    "create",
    "names",
    "trace",
    "plot",
]

FINAL_LR_RATIO = 0.01
"""The lecture's default :math:`\\beta = 0.01\\alpha`."""
DECAY_EPOCHS = 100
"""The lecture's default :math:`t = 100 N/m`, i.e. 100 epochs of steps."""


def _int_at_least(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _real(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def _positive(name: str, value: Any) -> float:
    value = _real(name, value)
    if value <= 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    return value


def _non_negative(name: str, value: Any) -> float:
    value = _real(name, value)
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")
    return value


def _base_lrs(optimizer: Optimizer) -> list[float]:
    """Each group's base rate alpha, as the LRScheduler constructor is about to record it."""
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"{type(optimizer).__name__} is not a torch.optim.Optimizer")
    return [float(group.get("initial_lr", group["lr"])) for group in optimizer.param_groups]


def _set_lr(group: dict[str, Any], value: float | torch.Tensor) -> None:
    # A tensor lr (capturable / compiled optimizers) must be updated in place, not replaced.
    if isinstance(group["lr"], torch.Tensor):
        group["lr"].fill_(float(value))
    else:
        group["lr"] = value


def _ramp(optimizer: Optimizer, targets: list[Any], step: int, warmup_steps: int) -> None:
    """Set the rates of step ``step <= warmup_steps`` of a linear warmup towards ``targets``."""
    for group, target in zip(optimizer.param_groups, targets, strict=True):
        if step < warmup_steps:
            _set_lr(group, linear_warmup(step, lr=float(target), warmup_steps=warmup_steps))
        else:
            _set_lr(group, target)


# ---------------------------------------------------------------------------------------
# Pure step -> rate functions


def linear_decay(
    step: int, *, lr: float, decay_steps: int, final_lr: float | None = None
) -> float:
    r"""The lecture's linear decay from :math:`\alpha` to :math:`\beta` over :math:`t` steps.

    .. math::
        \epsilon_k = \begin{cases}
            (1 - \frac{k}{t})\,\alpha + \frac{k}{t}\,\beta & k \le t \\
            \beta & k > t
        \end{cases}

    Robbins-Monro: **not satisfied**. With :math:`\beta > 0` the rate never goes to zero,
    so :math:`\sum \epsilon_k^2 = \infty`; with :math:`\beta = 0` the sum
    :math:`\sum \epsilon_k` is finite. The lecture uses it anyway: it works well in practice.

    Args:
        step: :math:`k \ge 0`, the number of optimizer steps already taken.
        lr: :math:`\alpha \ge 0`, the initial rate.
        decay_steps: :math:`t \ge 1`; the lecture suggests :math:`t \approx 100 N/m` (100 epochs).
        final_lr: :math:`\beta \in [0, \alpha]`; ``None`` gives the lecture's :math:`0.01\alpha`.
    """
    step = _int_at_least("step", step, 0)
    lr = _non_negative("lr", lr)
    t = _int_at_least("decay_steps", decay_steps, 1)
    beta = FINAL_LR_RATIO * lr if final_lr is None else _non_negative("final_lr", final_lr)
    if beta > lr:
        raise ValueError(
            f"final_lr must be in [0, lr={lr!r}] (the rate decays from lr to final_lr), "
            f"got {final_lr!r}"
        )
    if step > t:
        return beta
    return (1 - step / t) * lr + (step / t) * beta


def inverse_time(step: int, *, lr: float, decay_steps: float) -> float:
    r"""Inverse-time decay :math:`\epsilon_k = \alpha / (1 + k/\tau)`.

    Robbins-Monro: **satisfied**. For large :math:`k`, :math:`\epsilon_k \approx \alpha\tau/k`,
    and :math:`\sum 1/k = \infty` while :math:`\sum 1/k^2 < \infty`. The rate halves after
    :math:`\tau` steps.

    Args:
        step: :math:`k \ge 0`, the number of optimizer steps already taken.
        lr: :math:`\alpha \ge 0`, the initial rate.
        decay_steps: :math:`\tau > 0`.
    """
    step = _int_at_least("step", step, 0)
    lr = _non_negative("lr", lr)
    tau = _positive("decay_steps", decay_steps)
    return lr / (1 + step / tau)


def linear_warmup(step: int, *, lr: float, warmup_steps: int) -> float:
    r"""Linear warmup to :math:`\alpha` over :math:`w` steps.

    .. math::
        \epsilon_k = \alpha\,\frac{k + 1}{w + 1} \quad (k < w), \qquad
        \epsilon_k = \alpha \quad (k \ge w)

    The ramp never uses a zero rate and reaches :math:`\alpha` at :math:`k = w`, where the
    following schedule takes over. Changing finitely many steps does not change whether a
    schedule meets the Robbins-Monro conditions.

    Args:
        step: :math:`k \ge 0`.
        lr: :math:`\alpha \ge 0`, the rate at the end of the warmup.
        warmup_steps: :math:`w \ge 1`.
    """
    step = _int_at_least("step", step, 0)
    lr = _non_negative("lr", lr)
    w = _int_at_least("warmup_steps", warmup_steps, 1)
    return lr * (step + 1) / (w + 1) if step < w else lr


# ---------------------------------------------------------------------------------------
# LRScheduler wrappers


class LinearDecay(LRScheduler):
    r"""Scheduler form of :func:`linear_decay`, for any torch optimizer.

    Group :math:`i` follows :math:`\epsilon_k = (1 - k/t)\,\alpha_i + (k/t)\,\beta_i` for
    :math:`k \le t`, then :math:`\beta_i`, where :math:`\alpha_i` is the group's base rate.
    Robbins-Monro: not satisfied (see :func:`linear_decay`).

    Args:
        optimizer: any torch optimizer.
        decay_steps: :math:`t \ge 1`. Takes precedence over ``steps_per_epoch``.
        final_lr: :math:`\beta`, an absolute rate applied to every group (like torch's
            ``eta_min``); it must lie in :math:`[0, \alpha_i]` for every group.
            ``None`` (default) gives each group the lecture's :math:`\beta_i = 0.01\,\alpha_i`.
        steps_per_epoch: :math:`N/m`; when ``decay_steps`` is not given it defaults to the
            lecture's :math:`t = 100 N/m`.

    Raises:
        ValueError: if neither ``decay_steps`` nor ``steps_per_epoch`` is given, or either
            is not an integer >= 1, or ``final_lr`` is negative or above a group's rate.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        decay_steps: int | None = None,
        final_lr: float | None = None,
        *,
        steps_per_epoch: int | None = None,
    ) -> None:
        if steps_per_epoch is not None:
            steps_per_epoch = _int_at_least("steps_per_epoch", steps_per_epoch, 1)
        if decay_steps is None:
            if steps_per_epoch is None:
                raise ValueError(
                    "LinearDecay needs decay_steps (the lecture's t) or steps_per_epoch "
                    f"(t then defaults to {DECAY_EPOCHS} * steps_per_epoch)"
                )
            decay_steps = DECAY_EPOCHS * steps_per_epoch
        self.decay_steps = _int_at_least("decay_steps", decay_steps, 1)
        bases = _base_lrs(optimizer)
        if final_lr is None:
            self.final_lrs = [FINAL_LR_RATIO * base for base in bases]
        else:
            beta = _non_negative("final_lr", final_lr)
            for i, base in enumerate(bases):
                if beta > base:
                    raise ValueError(
                        f"final_lr must be <= the base lr {base!r} of param group {i} "
                        f"(the rate decays from lr to final_lr), got {final_lr!r}"
                    )
            self.final_lrs = [beta] * len(bases)
        super().__init__(optimizer)

    def get_lr(self) -> list[float]:
        """Rates at step ``last_epoch``, in closed form from the base rates."""
        return [
            linear_decay(
                self.last_epoch, lr=float(base), decay_steps=self.decay_steps, final_lr=final
            )
            for base, final in zip(self.base_lrs, self.final_lrs, strict=True)
        ]


class InverseTime(LRScheduler):
    r"""Scheduler form of :func:`inverse_time`: :math:`\epsilon_k = \alpha_i / (1 + k/\tau)`.

    Robbins-Monro: satisfied (:math:`\epsilon_k \propto 1/k` for large :math:`k`).

    Args:
        optimizer: any torch optimizer; each group decays from its own base rate :math:`\alpha_i`.
        decay_steps: :math:`\tau > 0`, the number of steps after which the rate has halved.
    """

    def __init__(self, optimizer: Optimizer, decay_steps: float) -> None:
        self.decay_steps = _positive("decay_steps", decay_steps)
        super().__init__(optimizer)

    def get_lr(self) -> list[float]:
        """Rates at step ``last_epoch``, in closed form from the base rates."""
        return [
            inverse_time(self.last_epoch, lr=float(base), decay_steps=self.decay_steps)
            for base in self.base_lrs
        ]


class _Wrapper(LRScheduler):
    """A scheduler that drives another one, ``self.schedule``, and saves both states."""

    def __init__(self, schedule: LRScheduler, warmup_steps: int) -> None:
        self.warmup_steps = warmup_steps
        self.schedule = schedule
        # Captured before LRScheduler.__init__ takes the first step (and maybe ramps).
        self.start_lrs = [
            copy.deepcopy(group["lr"]) for group in schedule.optimizer.param_groups
        ]
        super().__init__(schedule.optimizer)

    def _next_step(self) -> int:
        self._step_count += 1
        self.last_epoch += 1
        return self.last_epoch

    def _record_rates(self) -> None:
        self._last_lr = [copy.deepcopy(group["lr"]) for group in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        """The wrapper's state; the wrapped scheduler's ``state_dict()`` is under ``"schedule"``."""
        state = {k: v for k, v in self.__dict__.items() if k not in ("optimizer", "schedule")}
        state["schedule"] = self.schedule.state_dict()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a state produced by :meth:`state_dict`."""
        state = dict(state_dict)
        inner = state.pop("schedule")
        self.__dict__.update(state)
        self.schedule.load_state_dict(inner)


class LinearWarmup(_Wrapper):
    r"""Put a linear warmup of :math:`w` steps in front of any schedule.

    With :math:`\epsilon^{s}_j` the rates the wrapped schedule gives on its own,

    .. math::
        \epsilon_k = \epsilon^{s}_0 \frac{k + 1}{w + 1} \quad (k < w), \qquad
        \epsilon_k = \epsilon^{s}_{k - w} \quad (k \ge w),

    per parameter group. Exact: at step :math:`w` the wrapped schedule is put back in
    the state it had when it was wrapped (its own ``state_dict`` and rates), so from then
    on it produces bit for bit the rates it would have produced alone, whatever its
    update rule (closed form or recursive, like torch's cosine). Robbins-Monro: as the
    wrapped schedule (a finite prefix does not matter).

    Build the wrapped schedule on the optimizer first, then wrap it; step only the
    wrapper. ``state_dict()`` contains the wrapped schedule's state.

    Args:
        schedule: any per-step scheduler; not ``ReduceLROnPlateau`` nor another epoch-driven
            schedule (give :class:`EpochStepped` its ``warmup_steps`` instead).
        warmup_steps: :math:`w \ge 1`.
    """

    def __init__(self, schedule: LRScheduler, warmup_steps: int) -> None:
        if not isinstance(schedule, LRScheduler) or isinstance(schedule, ReduceLROnPlateau):
            raise TypeError(
                "schedule must be a torch LRScheduler other than ReduceLROnPlateau, "
                f"got {type(schedule).__name__}"
            )
        if is_epoch_driven(schedule):
            raise TypeError(
                f"LinearWarmup cannot wrap the epoch-driven {type(schedule).__name__}; "
                "give it warmup_steps itself (EpochStepped(..., warmup_steps=w))"
            )
        warmup_steps = _int_at_least("warmup_steps", warmup_steps, 1)
        self.start_state = copy.deepcopy(schedule.state_dict())
        super().__init__(schedule, warmup_steps)

    def step(self) -> None:  # type: ignore[override]
        """Advance one optimizer step."""
        k = self._next_step()
        if k == self.warmup_steps:
            self.schedule.load_state_dict(copy.deepcopy(self.start_state))
        if k <= self.warmup_steps:
            _ramp(self.optimizer, self.start_lrs, k, self.warmup_steps)
        else:
            self.schedule.step()
        self._record_rates()


class EpochStepped(_Wrapper):
    r"""Step a scheduler once per epoch, under the per-step interface of the other schedules.

    The training loop calls :meth:`step` after every optimizer step, as for any schedule; it
    changes no rate (except during the warmup below). After each epoch's evaluation the loop
    calls :meth:`epoch_end` with the monitored value (e.g. the validation loss): a torch
    ``ReduceLROnPlateau`` receives that value (``schedule.step(value)``), any other scheduler
    takes one ``schedule.step()``, i.e. its own counter then counts epochs. The rates are
    entirely the wrapped scheduler's: nothing of torch's logic is re-implemented here.

    With ``warmup_steps`` :math:`= w \ge 1`, the first :math:`w` optimizer steps ramp each
    group linearly up to the rate it had when wrapped (:func:`linear_warmup`); at step
    :math:`w` that rate is restored, and only epochs that end after it reach the wrapped
    scheduler (earlier :meth:`epoch_end` calls are ignored: a plateau's patience starts when
    the warmup is over).

    :func:`trace` and :func:`plot` show the per-step rates as if no epoch ended (the warmup,
    then a constant rate): the epochs' effect depends on values not yet seen.

    Args:
        schedule: a torch ``LRScheduler`` or ``ReduceLROnPlateau`` built on the optimizer.
        warmup_steps: :math:`w \ge 0` optimizer steps of linear warmup.

    Example:
        >>> import torch
        >>> from torch.optim.lr_scheduler import ReduceLROnPlateau
        >>> opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
        >>> sched = EpochStepped(ReduceLROnPlateau(opt, factor=0.5, patience=0))
        >>> sched.epoch_end(1.0); sched.epoch_end(2.0)  # no improvement: halve the rate
        >>> opt.param_groups[0]["lr"]
        0.05
    """

    def __init__(self, schedule: LRScheduler, *, warmup_steps: int = 0) -> None:
        if not isinstance(schedule, LRScheduler):
            raise TypeError(f"schedule must be a torch LRScheduler, got {type(schedule).__name__}")
        if is_epoch_driven(schedule):
            raise TypeError(f"{type(schedule).__name__} is already stepped once per epoch")
        super().__init__(schedule, _int_at_least("warmup_steps", warmup_steps, 0))

    def step(self) -> None:  # type: ignore[override]
        """Advance one optimizer step (moves the rate only during the warmup)."""
        k = self._next_step()
        if k <= self.warmup_steps:
            _ramp(self.optimizer, self.start_lrs, k, self.warmup_steps)
        self._record_rates()

    def epoch_end(self, value: float | None = None) -> None:
        """End an epoch: step the wrapped scheduler once, with ``value`` if it monitors one.

        Raises:
            ValueError: the wrapped scheduler is a ``ReduceLROnPlateau`` and ``value`` is None.
        """
        plateau = isinstance(self.schedule, ReduceLROnPlateau)
        if plateau and value is None:
            raise ValueError(
                "ReduceLROnPlateau needs the monitored value: call epoch_end(value), e.g. "
                "with the validation loss"
            )
        if self.last_epoch < self.warmup_steps:
            return
        if plateau:
            self.schedule.step(float(value))
        else:
            self.schedule.step()
        self._record_rates()


def is_epoch_driven(schedule: object) -> bool:
    """Whether ``schedule`` moves once per epoch, i.e. has an ``epoch_end(value)`` method.

    The convention of every schedule :func:`create` and :func:`wrap_user_scheduler` return:
    ``step()`` is called after every optimizer step; an epoch-driven schedule's
    ``epoch_end(value)`` is also called after every epoch's evaluation, with the monitored
    value. Other schedules have no ``epoch_end``.
    """
    return callable(getattr(schedule, "epoch_end", None))


INTERVALS = ("step", "epoch")
"""How often :func:`wrap_user_scheduler` steps a user's scheduler."""


def wrap_user_scheduler(schedule: LRScheduler, interval: str | None = None) -> LRScheduler:
    """Give a user's own torch scheduler the interface of the schedules :func:`create` builds.

    Args:
        schedule: a ``torch.optim.lr_scheduler.LRScheduler`` (``ReduceLROnPlateau`` included)
            already built on the run's optimizer.
        interval: ``"step"``: step it after every optimizer step -- the scheduler itself is
            returned, it already has that interface. ``"epoch"``: step it once per epoch,
            through :class:`EpochStepped` (its ``epoch_end(value)`` steps the scheduler, passing
            ``value`` to a ``ReduceLROnPlateau``). ``None`` (default): ``"epoch"`` for a
            ``ReduceLROnPlateau``, ``"step"`` for every other scheduler. A schedule that is
            already epoch-driven (:func:`is_epoch_driven`) is returned as it is.

    Returns:
        A scheduler whose ``state_dict()`` / ``load_state_dict()`` include the user's
        scheduler's own, for exact resume.

    Raises:
        TypeError: ``schedule`` is not a torch scheduler.
        ValueError: an unknown ``interval``, or ``"step"`` for a ``ReduceLROnPlateau``.
    """
    if not isinstance(schedule, LRScheduler):
        raise TypeError(
            "schedule must be a torch.optim.lr_scheduler.LRScheduler, "
            f"got {type(schedule).__name__}"
        )
    if interval is not None and interval not in INTERVALS:
        hint = suggest(str(interval), INTERVALS)
        raise ValueError(f"interval must be 'step' or 'epoch', got {interval!r}{hint}")
    if is_epoch_driven(schedule):
        return schedule
    plateau = isinstance(schedule, ReduceLROnPlateau)
    if interval is None:
        interval = "epoch" if plateau else "step"
    if interval == "step":
        if plateau:
            raise ValueError(
                "interval='step' cannot drive a ReduceLROnPlateau: it needs the monitored "
                "value, known once per epoch; use interval='epoch'"
            )
        return schedule
    return EpochStepped(schedule)


# ---------------------------------------------------------------------------------------
# Factory


def _constant_factor(step: int) -> float:
    return 1.0


def _check_below_base(name: str, value: float, optimizer: Optimizer) -> None:
    for i, base in enumerate(_base_lrs(optimizer)):
        if value > base:
            raise ValueError(
                f"{name} must be <= the base lr {base!r} of param group {i}, got {value!r}"
            )


def _constant(
    optimizer: Optimizer, warmup: int, total: int | None, per_epoch: int | None
) -> LRScheduler:
    return LambdaLR(optimizer, _constant_factor)


def _linear_decay(
    optimizer: Optimizer,
    warmup: int,
    total: int | None,
    per_epoch: int | None,
    decay_steps: int | None = None,
    final_lr: float | None = None,
) -> LRScheduler:
    if decay_steps is None:
        decay_steps = DECAY_EPOCHS * per_epoch if per_epoch is not None else total
    if decay_steps is None:
        raise ValueError(
            "linear-decay needs decay_steps (the lecture's t), steps_per_epoch "
            f"(t = {DECAY_EPOCHS} * steps_per_epoch) or total_steps (t = total_steps)"
        )
    t = _int_at_least("decay_steps", decay_steps, 1)
    if warmup >= t:
        raise ValueError(
            f"warmup_steps must be < decay_steps={t} (the decay ends at step t, warmup "
            f"included), got {warmup}"
        )
    return LinearDecay(optimizer, t - warmup, final_lr)


def _inverse_time(
    optimizer: Optimizer,
    warmup: int,
    total: int | None,
    per_epoch: int | None,
    decay_steps: float | None = None,
) -> LRScheduler:
    if decay_steps is None:
        decay_steps = per_epoch
    if decay_steps is None:
        raise ValueError(
            "inverse-time needs decay_steps (tau) or steps_per_epoch (tau = one epoch)"
        )
    return InverseTime(optimizer, decay_steps)


def _step(
    optimizer: Optimizer,
    warmup: int,
    total: int | None,
    per_epoch: int | None,
    step_size: int | None = None,
    gamma: float = 0.1,
) -> LRScheduler:
    if step_size is None:
        raise ValueError("step needs step_size (steps between two decays by gamma)")
    step_size = _int_at_least("step_size", step_size, 1)
    gamma = _positive("gamma", gamma)
    if gamma > 1:
        raise ValueError(f"gamma must be in (0, 1], got {gamma!r}")
    return StepLR(optimizer, step_size, gamma)


def _cosine(
    optimizer: Optimizer,
    warmup: int,
    total: int | None,
    per_epoch: int | None,
    T_max: int | None = None,
    eta_min: float = 0.0,
) -> LRScheduler:
    if T_max is None:
        if total is None:
            raise ValueError("cosine needs T_max or total_steps (T_max = total_steps - warmup)")
        T_max = total - warmup
    T_max = _int_at_least("T_max", T_max, 1)
    eta_min = _non_negative("eta_min", eta_min)
    _check_below_base("eta_min", eta_min, optimizer)
    return CosineAnnealingLR(optimizer, T_max, eta_min)


PLATEAU_MODES = ("min", "max")


def _reduce_on_plateau(
    optimizer: Optimizer,
    warmup: int,
    total: int | None,
    per_epoch: int | None,
    factor: float = 0.1,
    patience: int = 10,
    threshold: float = 1e-4,
    mode: str = "min",
    min_lr: float = 0.0,
    cooldown: int = 0,
) -> LRScheduler:
    factor = _positive("factor", factor)
    if factor >= 1:
        raise ValueError(f"factor must be in (0, 1) (the rate is multiplied by it), got {factor!r}")
    patience = _int_at_least("patience", patience, 0)
    threshold = _non_negative("threshold", threshold)
    if mode not in PLATEAU_MODES:
        raise ValueError(
            f"mode must be 'min' or 'max', got {mode!r}{suggest(str(mode), PLATEAU_MODES)}"
        )
    min_lr = _non_negative("min_lr", min_lr)
    _check_below_base("min_lr", min_lr, optimizer)
    cooldown = _int_at_least("cooldown", cooldown, 0)
    plateau = ReduceLROnPlateau(
        optimizer, mode=mode, factor=factor, patience=patience, threshold=threshold,
        min_lr=min_lr, cooldown=cooldown,
    )
    return EpochStepped(plateau, warmup_steps=warmup)


_FACTORIES: dict[str, Callable[..., LRScheduler]] = {
    "constant": _constant,
    "linear-decay": _linear_decay,
    "inverse-time": _inverse_time,
    "step": _step,
    "cosine": _cosine,
    "reduce-on-plateau": _reduce_on_plateau,
}
_OPTIONS: dict[str, tuple[str, ...]] = {
    "constant": (),
    "linear-decay": ("decay_steps", "final_lr"),
    "inverse-time": ("decay_steps",),
    "step": ("step_size", "gamma"),
    "cosine": ("T_max", "eta_min"),
    "reduce-on-plateau": ("factor", "patience", "threshold", "mode", "min_lr", "cooldown"),
}


def option_names(name: str) -> tuple[str, ...]:
    """The options schedule ``name`` takes besides ``warmup_steps`` (see :func:`create`)."""
    return _OPTIONS[name]


def names() -> list[str]:
    """Schedule names accepted by :func:`create`."""
    return list(_FACTORIES)


def create(
    name: str,
    optimizer: Optimizer,
    *,
    warmup_steps: int = 0,
    total_steps: int | None = None,
    steps_per_epoch: int | None = None,
    **kw: Any,
) -> LRScheduler:
    r"""Build a schedule by name, optionally behind a :class:`LinearWarmup`.

    All counts are optimizer steps; call ``sched.step()`` once per optimizer step. The one
    epoch-driven schedule, ``reduce-on-plateau``, also has ``sched.epoch_end(value)``, to call
    once after each epoch's evaluation with the monitored value; the others have no
    ``epoch_end`` (:func:`is_epoch_driven` tells them apart).

    ``constant``
        torch ``LambdaLR`` with factor 1: :math:`\epsilon_k = \alpha`. No options.
        Robbins-Monro: not satisfied (:math:`\sum \epsilon_k^2 = \infty`).
    ``linear-decay``
        :class:`LinearDecay`. Options ``decay_steps`` (:math:`t`) and ``final_lr``
        (:math:`\beta`). :math:`t` is the step at which the rate reaches :math:`\beta`,
        counted from the first step *including* the warmup (the decay itself lasts
        :math:`t - w` steps, so ``warmup_steps >= t`` is an error). Default :math:`t`:
        ``100 * steps_per_epoch`` (the lecture) when ``steps_per_epoch`` is given, else
        ``total_steps``. Robbins-Monro: not satisfied.
    ``inverse-time``
        :class:`InverseTime`. Option ``decay_steps`` (:math:`\tau`), counted from the end
        of the warmup; default one epoch (``steps_per_epoch``), i.e. the rate after
        :math:`e` epochs is :math:`\alpha / (1 + e)`. Robbins-Monro: satisfied.
    ``step``
        torch ``StepLR``: :math:`\epsilon_k = \alpha\,\gamma^{\lfloor k/s \rfloor}`. Options
        ``step_size`` (:math:`s \ge 1`, required) and ``gamma`` (in :math:`(0, 1]`, default
        0.1). Robbins-Monro: not satisfied (geometric decay has :math:`\sum \epsilon_k < \infty`).
    ``cosine``
        torch ``CosineAnnealingLR``:
        :math:`\epsilon_k = \eta_{min} + \tfrac12(\alpha - \eta_{min})(1 + \cos(\pi k/T_{max}))`.
        Options ``T_max`` (default ``total_steps - warmup_steps``, so the rate reaches
        :math:`\eta_{min}` at ``total_steps``) and ``eta_min`` (default 0, at most every
        group's rate). torch's cosine is periodic: past :math:`T_{max}` it rises again.
        Robbins-Monro: not satisfied.
    ``reduce-on-plateau``
        torch ``ReduceLROnPlateau`` inside :class:`EpochStepped`: ``sched.step()`` changes
        nothing (past the warmup); ``sched.epoch_end(value)`` passes the monitored value to
        torch, which multiplies every rate by ``factor`` once the value has not improved by
        more than ``threshold`` (relative) for more than ``patience`` epochs. Options ``factor``
        (in :math:`(0, 1)`, default 0.1), ``patience`` (epochs, :math:`\ge 0`, default 10),
        ``threshold`` (:math:`\ge 0`, default 1e-4), ``mode`` (``"min"`` for a loss, ``"max"``
        for an accuracy; default ``"min"``), ``min_lr`` (floor, default 0, at most every
        group's rate) and ``cooldown`` (epochs to wait after a reduction, default 0). With
        ``warmup_steps``, values of epochs that end during the warmup are ignored.
        :func:`trace` shows its rates as if the value kept improving. Robbins-Monro: not
        satisfied (the rate depends on the run).

    Args:
        name: one of :func:`names`.
        optimizer: any torch optimizer; every group follows the schedule from its own rate.
        warmup_steps: :math:`w \ge 0` steps of :func:`linear_warmup` before the schedule
            (which then starts at its own step 0).
        total_steps: planned length of the run, used for the defaults above; must exceed
            ``warmup_steps``.
        steps_per_epoch: :math:`N/m`, used for the defaults above.
        **kw: the schedule's options listed above.

    Raises:
        ValueError: unknown name or option (the closest valid one is suggested), a bad
            value (named with its allowed range) or a missing horizon.
    """
    if name not in _FACTORIES:
        raise ValueError(
            f"unknown schedule {name!r}{suggest(str(name), names())} "
            f"(choose from {', '.join(names())})"
        )
    _base_lrs(optimizer)
    warmup_steps = _int_at_least("warmup_steps", warmup_steps, 0)
    if total_steps is not None:
        total_steps = _int_at_least("total_steps", total_steps, 1)
        if warmup_steps >= total_steps:
            raise ValueError(
                f"warmup_steps must be < total_steps={total_steps}, got {warmup_steps}"
            )
    if steps_per_epoch is not None:
        steps_per_epoch = _int_at_least("steps_per_epoch", steps_per_epoch, 1)
    allowed = _OPTIONS[name]
    for key in kw:
        if key not in allowed:
            options = ", ".join(allowed) if allowed else "none"
            raise ValueError(
                f"unknown option {key!r} for schedule {name!r}{suggest(key, allowed)} "
                f"(options: {options})"
            )
    options = {key: value for key, value in kw.items() if value is not None}
    schedule = _FACTORIES[name](optimizer, warmup_steps, total_steps, steps_per_epoch, **options)
    if warmup_steps and not is_epoch_driven(schedule):
        return LinearWarmup(schedule, warmup_steps)
    return schedule


# ---------------------------------------------------------------------------------------
# Inspection


class _ScratchOptimizer(Optimizer):
    """Holds copies of another optimizer's param-group hyperparameters and no real tensors."""

    def __init__(self, groups: list[dict[str, Any]]) -> None:
        super().__init__(
            [{**group, "params": [torch.zeros(0)]} for group in groups], defaults={}
        )

    def step(self, closure: Callable[[], float] | None = None) -> None:
        return None


def _hyperparameters(optimizer: Optimizer) -> list[dict[str, Any]]:
    return [
        {key: copy.deepcopy(value) for key, value in group.items() if key != "params"}
        for group in optimizer.param_groups
    ]


def trace(schedule: LRScheduler, steps: int) -> list[list[float]]:
    """Learning rates a schedule will set over its next ``steps`` steps, without running it.

    The schedule is deep-copied onto a scratch optimizer that carries copies of the real
    optimizer's param-group settings but none of its parameters; the live schedule,
    optimizer and model are left untouched.

    An epoch-driven schedule (:func:`is_epoch_driven`, e.g. ``reduce-on-plateau``) is traced
    over its per-step calls only, as if no epoch ended in between: its warmup, then a constant
    rate. A bare torch ``ReduceLROnPlateau`` is rejected (wrap it with :class:`EpochStepped`).

    Args:
        schedule: any scheduler except a bare ``ReduceLROnPlateau``.
        steps: number of steps :math:`\\ge 1`.

    Returns:
        ``rates[i][g]``: the rate of param group ``g`` at the schedule's current step + ``i``
        (``rates[0]`` are the rates in force now).
    """
    if not isinstance(schedule, LRScheduler) or isinstance(schedule, ReduceLROnPlateau):
        raise TypeError(
            "schedule must be a torch LRScheduler other than ReduceLROnPlateau, "
            f"got {type(schedule).__name__}"
        )
    steps = _int_at_least("steps", steps, 1)
    scratch = _ScratchOptimizer(_hyperparameters(schedule.optimizer))
    # The memo maps the real optimizer to the scratch one everywhere in the copy,
    # including inside wrapped schedules.
    clone = copy.deepcopy(schedule, {id(schedule.optimizer): scratch})
    rates = []
    with warnings.catch_warnings():
        # The scratch optimizer is never stepped; torch's step-order check would complain.
        warnings.filterwarnings("ignore", message=r"Seems like `optimizer.step\(\)`")
        warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)`")
        for i in range(steps):
            if i:
                clone.step()
            rates.append([float(group["lr"]) for group in scratch.param_groups])
    return rates


def _label(schedule: LRScheduler) -> str:
    if isinstance(schedule, LinearWarmup):
        return f"{_label(schedule.schedule)} + warmup {schedule.warmup_steps}"
    if isinstance(schedule, EpochStepped):
        warmup = f" + warmup {schedule.warmup_steps}" if schedule.warmup_steps else ""
        return f"{_label(schedule.schedule)} per epoch{warmup}"
    return type(schedule).__name__


def plot(
    schedule: str | LRScheduler | Sequence[str | LRScheduler],
    steps: int,
    path: str | PathLike[str],
    *,
    lr: float = 1.0,
    **create_kw: Any,
) -> Path:
    """Draw learning rate against step to a PNG file.

    Schedulers are simulated with :func:`trace`, so plotting a live schedule does not
    change it or its optimizer; its curve starts at its current step. A schedule *name*
    is built with :func:`create` on a scratch one-group optimizer with rate ``lr``
    (default 1, so the curve shows the factor applied to the base rate), passing it
    ``create_kw`` (e.g. ``total_steps=``, ``warmup_steps=``). Several schedules go on one
    figure; a schedule with several param groups gets one line per group.

    Args:
        schedule: a scheduler, a name from :func:`names`, or a sequence of them.
        steps: number of steps to draw, :math:`\\ge 1`.
        path: output file; written as PNG whatever its suffix, parent folders created.
        lr: base rate for schedules given by name.
        **create_kw: options for :func:`create`, only with names.

    Returns:
        The path written.
    """
    from matplotlib.figure import Figure

    items = [schedule] if isinstance(schedule, (str, LRScheduler)) else list(schedule)
    if not items:
        raise ValueError("schedule must name at least one schedule, got an empty sequence")
    if create_kw and not any(isinstance(item, str) for item in items):
        raise ValueError(
            f"options {', '.join(sorted(create_kw))} only apply to schedules given by name"
        )
    steps = _int_at_least("steps", steps, 1)
    lr = _positive("lr", lr)

    figure = Figure(figsize=(6.4, 4.0), layout="constrained")
    axes = figure.add_subplot()
    for item in items:
        if isinstance(item, str):
            scratch = _ScratchOptimizer([{"lr": lr}])
            item_schedule, label = create(item, scratch, **create_kw), item
        elif isinstance(item, LRScheduler):
            item_schedule, label = item, _label(item)
        else:
            raise TypeError(f"cannot plot a {type(item).__name__}; give a scheduler or a name")
        rates = trace(item_schedule, steps)
        start = item_schedule.last_epoch
        ks = range(start, start + steps)
        per_group = list(zip(*rates, strict=True))
        for g, ys in enumerate(per_group):
            suffix = f" (group {g})" if len(per_group) > 1 else ""
            axes.plot(ks, ys, label=label + suffix)
    axes.set_xlabel("step k")
    axes.set_ylabel("learning rate")
    axes.grid(alpha=0.3)
    axes.legend()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", dpi=120)
    return path
