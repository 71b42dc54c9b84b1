r"""One optimizer step: minibatch -> closure (loss and gradient) -> ``optimizer.step`` -> schedule.

The closure recomputes the loss and gradient at the current parameters (the interim point
``θ + αv`` for ravine's Nesterov methods); closure-based optimizers such as L-BFGS call it
several times, and the first call (the loss before the update) is what gets logged. A
non-finite loss raises before ``backward`` (after it in a data-parallel run, where the ranks
must first agree), so the optimizer never updates.

Micro-batches and ranks
-----------------------
A step's minibatch of ``b`` examples may arrive as ``k`` micro-batches (``accumulate=k``) and,
in a data-parallel run of ``W`` processes, as this rank's share of it. Micro-batch ``j`` of
``b_j`` examples contributes the gradient of

.. math:: \ell_j = \frac{b_j W}{b} \cdot \frac{1}{b_j} \sum_{i \in j} L_i ,

so the sum over micro-batches, averaged over ranks by DDP, is :math:`\frac1b \sum_i \nabla L_i`:
the gradient of the whole minibatch's mean loss. With ``k = W = 1`` the weight is exactly 1 and
is not applied. Only the last micro-batch's backward synchronizes gradients across ranks
(``no_sync`` before it).
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ravine import optim
from ravine.data.sources import batch_examples
from ravine.train.checkpoint import CheckpointError, load_checkpoint
from ravine.train.loop import Loop
from ravine.train.state import RunState

__all__ = ["train_step", "NonFiniteLossError"]


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite and ``on_nonfinite="stop"``."""


class _NonFiniteLoss(Exception):
    """Raised inside the closure, before the optimizer updates."""

    def __init__(self, value: float) -> None:
        super().__init__(value)
        self.value = value


def _make_closure(
    loop: Loop, state: RunState, micro: list[Any], global_size: int | None
) -> tuple[Callable[[], Tensor], dict[str, Any]]:
    """The closure handed to ``optimizer.step`` and the dict where it leaves its first
    evaluation (``loss``, ``count``, ``correct``, ``extra``)."""
    first: dict[str, Any] = {}
    net, opt, comm, objective = loop.net, state.optimizer, loop.comm, loop.objective
    scaler = state.scaler
    k = len(micro)

    def record_norm() -> None:
        if scaler is not None and (loop.clip_in_closure or loop.measure_norm):
            scaler.unscale_(opt)
        if loop.clip_in_closure:
            first["norm"] = optim.clip_grad_norm_(loop.model.parameters(),
                                                  loop.options.clip_norm)
        elif loop.measure_norm:
            first["norm"] = float(torch.nn.utils.get_total_norm(
                [p.grad for p in loop.model.parameters() if p.grad is not None]
            ))

    def backward(loss: Tensor) -> None:
        (scaler.scale(loss) if scaler is not None else loss).backward()

    def simple() -> Tensor:
        # One process, one micro-batch: the fast path (no weighting, no collectives).
        opt.zero_grad(set_to_none=True)
        with loop.autocast():
            loss, n, correct, extra = objective.train_forward(net, micro[0])
        # One read of the loss serves the finiteness check and the step's record (a
        # torch.isfinite would be one more op, and bool() of it the same host sync).
        value = loss.item()
        if not math.isfinite(value):
            raise _NonFiniteLoss(value)
        if "loss" not in first:
            first.update(loss=value, count=n, extra={
                name: float(v) * n for name, v in extra.items()})
            if correct is not None:
                first["correct"] = correct
        backward(loss)
        record_norm()
        return loss

    def general() -> Tensor:
        opt.zero_grad(set_to_none=True)
        stats: list[Tensor] = []
        extras: dict[str, float] = {}
        local = 0
        pending = None
        totals = None
        size = global_size if global_size is not None else _equal_shares(micro, comm.world_size)
        for j, batch in enumerate(micro):
            last = j == k - 1
            with comm.no_sync(net) if not last else contextlib.nullcontext():
                with loop.autocast():
                    loss, n, correct, extra = objective.train_forward(net, batch)
                local += n
                if not comm.parallel and not torch.isfinite(loss):
                    raise _NonFiniteLoss(loss.item())
                stats.append(torch.stack([
                    loss.detach().double() * n,
                    torch.as_tensor(0 if correct is None else correct, dtype=torch.float64,
                                    device=loss.device),
                ]))
                for name, value in extra.items():
                    extras[name] = extras.get(name, 0.0) + float(value) * n
                if last:
                    totals = torch.stack(stats).sum(0)
                    totals = torch.cat([totals, totals.new_tensor([float(local)])])
                    pending = comm.all_reduce_async(totals)
                weight = n * comm.world_size / size if size else 0.0
                backward(loss if weight == 1 else loss * weight)
        assert pending is not None and totals is not None
        pending.wait()
        loss_sum, correct_sum, count = totals.tolist()
        value = loss_sum / count if count else math.nan
        if not math.isfinite(value):
            raise _NonFiniteLoss(value)
        mean = torch.tensor(value, dtype=torch.float64)
        if "loss" not in first:
            first.update(loss=value, count=int(count), extra=extras)
            if objective.classification:
                first["correct"] = int(correct_sum)
        record_norm()
        return mean

    return (simple if k == 1 and not comm.parallel else general), first


def _equal_shares(micro: list[Any], world_size: int) -> int:
    """The whole step's minibatch when every rank's share is taken to be equal."""
    return sum(batch_examples(b) for b in micro) * world_size


def train_step(loop: Loop, state: RunState, micro: list[Any], global_size: int | None) -> None:
    """Take one optimizer step on ``micro`` (this rank's micro-batches) and log it."""
    opt, options = state.optimizer, loop.options
    lr_used = float(opt.param_groups[0]["lr"])
    # A skipped step must leave no trace, but its forward pass already updated buffers such
    # as batch-norm running statistics (with NaNs).
    buffers = _copy_buffers(loop.model) if options.on_nonfinite == "skip" else None
    closure, first = _make_closure(loop, state, micro, global_size)
    try:
        if state.scaler is not None:
            closure()
            state.scaler.step(opt)
            state.scaler.update()
        else:
            opt.step(closure)
        skipped = False
    except _NonFiniteLoss as bad:
        if options.on_nonfinite == "stop":
            # Every rank raises this, so every rank must word it the same.
            last = None if loop.files is None and loop.run_dir is None else loop.last_path
            kept = last is not None and _intact(last)
            raise NonFiniteLossError(
                f"non-finite training loss ({bad.value}) at step {state.step + 1} "
                f"(epoch {state.epoch + 1}); stopped"
                + (f"; the last good checkpoint is {last}" if kept else "")
            ) from None
        opt.zero_grad(set_to_none=True)
        _restore_buffers(loop.model, buffers)
        first.clear()
        skipped = True
    state.schedule.step()
    state.step += 1

    grad_norm = None if skipped else (
        opt.last_grad_norm if loop.norm_from_optimizer else first.get("norm"))
    clipped = options.clip_norm is not None and grad_norm is not None and (
        grad_norm > options.clip_norm)
    loss_value = state.sums.add_step(first, lr_used, grad_norm, clipped)
    if state.step == 1 and loss_value == 0.0 and grad_norm == 0.0:
        _warn_nothing_to_learn(loop)
    if state.step % options.log_every == 0:
        if loop.loggers:
            loop.log({"kind": "step", "epoch": state.epoch + 1, "step": state.step,
                      "loss": loss_value, "lr": lr_used, "grad_norm": grad_norm,
                      "clipped": clipped, "skipped": skipped})
        loop.progress.step(state.step, state.epoch, loss_value, lr_used, grad_norm)


def _intact(path: Path) -> bool:
    """Whether ``path`` holds a checkpoint that loads and matches its checksum."""
    try:
        load_checkpoint(path)
    except CheckpointError:
        return False
    return True


def _warn_nothing_to_learn(loop: Loop) -> None:
    """A loss of exactly 0 with a zero gradient at the first step means the objective cannot
    move the weights (e.g. cross-entropy over a single output column): say so, once."""
    message = ("the training loss is exactly 0 with a zero gradient at step 1: nothing will "
               "train; check that loss= suits the targets (mse for regression)")
    loop.log({"kind": "warning", "step": 1, "message": message})
    if loop.comm.is_main:
        print(f"ravine: warning: {message}", file=sys.stderr)


def _copy_buffers(model: torch.nn.Module) -> list[Tensor]:
    return [b.detach().clone() for b in model.buffers()]


def _restore_buffers(model: torch.nn.Module, saved: list[Tensor] | None) -> None:
    if saved is not None:
        with torch.no_grad():
            for buffer, copy in zip(model.buffers(), saved, strict=True):
                buffer.copy_(copy)
