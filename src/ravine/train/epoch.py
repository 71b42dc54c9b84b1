"""An epoch: its steps, then evaluate -> diagnostics -> callbacks -> early stopping -> checkpoint.

Evaluation, diagnostics and the best weights are taken at the true parameters ``θ`` (ravine's
Nesterov methods keep the interim point ``θ + αv`` in the parameters between steps; see
:func:`ravine.optim.true_params`). Diagnostics run on a forked random stream, so measuring never
changes the training.
"""

from __future__ import annotations

import torch

from ravine import optim, schedules
from ravine.train.loop import Loop
from ravine.train.state import EpochSums, RunState
from ravine.train.step import NonFiniteLossError, train_step

__all__ = ["run_epoch", "end_epoch"]


def run_epoch(loop: Loop, state: RunState) -> None:
    """Take the remaining steps of the current epoch (fewer if ``max_steps`` is reached)."""
    options = loop.options
    for micro, global_size in state.source:
        train_step(loop, state, [loop.batch(b) for b in micro], global_size)
        if options.checkpoint_every_steps is not None and (
                state.step % options.checkpoint_every_steps == 0):
            loop.checkpoint(state)
        if options.val_every_steps is not None and loop.val is not None and (
                state.step % options.val_every_steps == 0):
            with optim.true_params(state.optimizer):
                record = loop.evaluate(loop.val, "val")
            loop.log({"kind": "val", "epoch": state.epoch + 1, "step": state.step, **record})
        if options.max_steps is not None and state.step >= options.max_steps:
            break


def end_epoch(loop: Loop, state: RunState) -> None:
    """Close the epoch just trained: its record, evaluation, stopping decision, checkpoint."""
    sums, options = state.sums, loop.options
    # The epoch just trained; the source has moved on unless max_steps cut it short.
    epoch = state.history[-1]["epoch"] + 1 if state.history else 1
    if sums.steps and sums.skipped == sums.steps:
        raise NonFiniteLossError(f"every step of epoch {epoch} had a non-finite loss; stopped")
    # Evaluation and the best weights use rank 0's running statistics everywhere.
    loop.comm.sync_buffers(loop.model)
    record = sums.record(epoch, state.step, loop.objective.classification is not None)
    finishing = loop.done(state)
    if loop.val is not None and (epoch % options.val_every == 0 or finishing):
        with optim.true_params(state.optimizer):
            record.update(loop.evaluate(loop.val, "val"))
    if loop.diag is not None and loop.diag.due(epoch):
        # At the true θ, and without drawing from the training's random streams.
        with optim.true_params(state.optimizer), torch.random.fork_rng(
            devices=[loop.device] if loop.device.type == "cuda" else []
        ):
            record.update(loop.diag.measure(
                loop.model, loop.objective.mean_loss, loop.diag_batch,
                lr=record["lr"], batch_size=options.batch_size, seed=options.seed))
    record["time"] = loop.elapsed()
    state.history.append(record)
    loop.log({"kind": "epoch", **record})
    loop.progress.epoch(record)
    state.sums = EpochSums()
    for callback in loop.callbacks:
        callback(epoch, record)
    monitored = record.get(state.tracker.monitor)
    if schedules.is_epoch_driven(state.schedule) and monitored is not None:
        # reduce-on-plateau (and a user's scheduler stepped per epoch) sees the monitored value
        state.schedule.epoch_end(monitored)
    # Both snapshots (best.pt, then last.pt, which holds the best weights too) are taken before
    # the background thread starts pickling the first, so the two do not take turns at the GIL.
    with loop.writer.held():
        if state.tracker.monitor in record and state.tracker.update(epoch, record):
            loop.save_best(state, epoch)
        checkpoint_every = options.checkpoint_every
        if loop.done(state) or (checkpoint_every is not None and epoch % checkpoint_every == 0):
            loop.checkpoint(state)
