r"""Minibatch index streams: the lecture's shuffle-then-blocks epochs and fresh random samples.

Both samplers yield *index tensors* (``torch.long``); the examples themselves are gathered by
:func:`ravine.data.iterate`, which indexes an in-memory :class:`~ravine.data.ArrayDataset` with
the whole index tensor at once (no per-example Python) and sends any other dataset through
torch's :class:`~torch.utils.data.DataLoader`.

Two ways of forming minibatches of size m from N examples (Goodfellow et al., ch. 8.1.3):

* :class:`EpochBatches` — shuffle once per epoch, then walk the permutation in contiguous blocks
  of m. Every example is used exactly once per epoch.
* :class:`RandomBatches` — draw a fresh sample of m distinct examples at every step, independently
  of all other steps, so an example may appear in several batches of one "epoch" and not at all in
  others.

Iteration protocol (shared by both)
-----------------------------------
``for idx in batches:`` yields the batches of the *current* epoch (``batches.epoch``) that have not
been yielded yet, then advances ``batches.epoch`` by one. A batch counts as consumed the moment it
is yielded, so ``state_dict()`` taken while a batch is being processed resumes at the *next* batch,
and ``load_state_dict`` followed by iteration yields exactly the remaining batches of the
interrupted epoch (none, if the state was taken after its last batch but before the loop ended;
the following iteration then starts the next epoch). Breaking out of a loop early leaves the
position where it was, so the next loop continues the same epoch. One iterator at a time.

Every epoch's batches depend only on ``(seed, epoch)`` — never on what was iterated before — so
epoch e is reproducible on its own, by any process.

Data-parallel sharding
----------------------
With ``world_size = W > 1``, ``batch_size`` is the *global* minibatch m and must be divisible by W.
Every rank builds the same global batch (same seed) and rank r keeps its contiguous slice of it,
with :func:`numpy.array_split` semantics: a global batch of b examples gives the first ``b mod W``
ranks ``⌊b/W⌋ + 1`` examples and the others ``⌊b/W⌋``. Full batches therefore split into equal
slices of m/W, and the union over ranks of step k is exactly the single-process batch k. Only a
final partial batch (``drop_last=False``, N not a multiple of m) can split unevenly, and when it has
fewer than W examples some ranks receive an *empty* index tensor. To reproduce the single-process
gradient exactly under DDP (which averages gradients over ranks), rank r should use the loss

.. math:: \ell_r = \frac{W}{b_k} \sum_{i \in \text{shard}_r} L_i ,

since :math:`\frac{1}{W}\sum_r \ell_r = \frac{1}{b_k}\sum_{i \in \text{batch}_k} L_i`;
:meth:`shard_sizes` gives every rank's share of a step and therefore :math:`b_k`. Use
``drop_last=True`` to avoid uneven (and possibly empty) shards altogether.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ravine._checks import check_int, suggest

__all__ = ["EpochBatches", "RandomBatches", "batches"]


def _derived_seed(*entropy: int) -> int:
    """A 64-bit torch seed mixed from several integers (``numpy.random.SeedSequence``).

    Mixing, rather than adding, keeps e.g. ``(seed=1, epoch=0)`` and ``(seed=0, epoch=1)``
    from sharing a stream.
    """
    return int(np.random.SeedSequence(list(entropy)).generate_state(1, dtype=np.uint64)[0])


class _IndexBatches:
    """Iteration, resumable position and data-parallel sharding shared by both samplers."""

    _kind: str

    def __init__(self, n: int, batch_size: int, *, seed: int, rank: int, world_size: int) -> None:
        check_int("n", n, 1)
        check_int("batch_size", batch_size, 1)
        check_int("seed", seed, 0)
        check_int("world_size", world_size, 1)
        if (
            not isinstance(rank, (int, np.integer))
            or isinstance(rank, bool)
            or not (0 <= rank < world_size)
        ):
            raise ValueError(
                f"rank must be an integer in [0, world_size) = [0, {world_size}), got {rank!r}"
            )
        if batch_size % world_size != 0:
            raise ValueError(
                f"batch_size is the global minibatch and must be divisible by world_size, "
                f"got batch_size={batch_size}, world_size={world_size}"
            )
        self.n = int(n)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.epoch = 0
        self._position = 0

    def __len__(self) -> int:
        raise NotImplementedError

    def _global_batch_size(self, step: int) -> int:
        raise NotImplementedError

    def _epoch_batches(self, epoch: int, start: int) -> Iterator[Tensor]:
        """The global batches of ``epoch`` from in-epoch step ``start`` on."""
        raise NotImplementedError

    def _config(self) -> dict[str, Any]:
        """The settings a saved position is only meaningful for (``rank``/``world_size`` excluded:
        the global batches do not depend on them, so a run may resume on another world size)."""
        return {"n": self.n, "batch_size": self.batch_size, "seed": self.seed}

    @property
    def position(self) -> int:
        """Number of batches of the current epoch already yielded (the next step's index)."""
        return self._position

    def __iter__(self) -> Iterator[Tensor]:
        epoch, start = self.epoch, self._position
        for step, shard in enumerate(self.epoch_batches(epoch, start), start):
            self._position = step + 1
            yield shard
        self.epoch = epoch + 1
        self._position = 0

    def epoch_batches(self, epoch: int, start: int = 0) -> Iterator[Tensor]:
        """This rank's shares of the batches of ``epoch`` from in-epoch step ``start`` on.

        A pure function of the settings and its arguments: it neither reads nor moves the
        position, so a consumer that buffers ahead (a DataLoader's prefetching) can keep its
        own count of what it has used.
        """
        for global_batch in self._epoch_batches(epoch, start):
            yield self._shard(global_batch)

    def shard_sizes(self, step: int) -> list[int]:
        """Sizes of every rank's share of the global batch at in-epoch ``step`` (0-based).

        ``sum(shard_sizes(k))`` is the global batch size b_k; entry r is what rank r receives
        (array_split semantics, see the module docstring).
        """
        if not isinstance(step, (int, np.integer)) or not 0 <= step < len(self):
            raise ValueError(f"step must be an integer in [0, {len(self)}), got {step!r}")
        b = self._global_batch_size(int(step))
        base, extra = divmod(b, self.world_size)
        return [base + (1 if r < extra else 0) for r in range(self.world_size)]

    def _shard(self, global_batch: Tensor) -> Tensor:
        if self.world_size == 1:
            return global_batch
        base, extra = divmod(global_batch.numel(), self.world_size)
        start = self.rank * base + min(self.rank, extra)
        return global_batch[start : start + base + (1 if self.rank < extra else 0)]

    def state_dict(self) -> dict[str, Any]:
        """Position (epoch, batches already yielded) plus the settings it is valid for."""
        position = {"epoch": self.epoch, "position": self._position}
        return {"kind": self._kind, **position, **self._config()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a position saved by :meth:`state_dict` of an identically configured sampler.

        Raises ``ValueError`` if the state belongs to another kind of sampler or other settings
        (other N, batch size, seed, ...), since its position would then mean different batches.
        """
        if state.get("kind") != self._kind:
            raise ValueError(
                f"state_dict was saved with kind={state.get('kind')!r}, but this "
                f"{type(self).__name__} has kind={self._kind!r}"
            )
        expected = self._config()
        missing = sorted((set(expected) | {"epoch", "position"}) - set(state))
        if missing:
            raise ValueError(f"state_dict is missing keys {missing}")
        for key, value in expected.items():
            if state[key] != value:
                raise ValueError(
                    f"state_dict was saved with {key}={state[key]!r}, but this "
                    f"{type(self).__name__} has {key}={value!r}"
                )
        check_int("state_dict['epoch']", state["epoch"], 0)
        position = state["position"]
        if not isinstance(position, (int, np.integer)) or not 0 <= position <= len(self):
            raise ValueError(
                f"state_dict['position'] must be an integer in [0, {len(self)}], got {position!r}"
            )
        self.epoch = int(state["epoch"])
        self._position = int(position)

    def __repr__(self) -> str:
        settings = ", ".join(f"{k}={v!r}" for k, v in self._config().items())
        shard = f", rank={self.rank}, world_size={self.world_size}" if self.world_size > 1 else ""
        where = f"epoch={self.epoch}, position={self.position}"
        return f"{type(self).__name__}({settings}{shard}, {where})"


class EpochBatches(_IndexBatches):
    """Shuffle once per epoch, then walk the permutation in contiguous blocks of ``batch_size``.

    Epoch e uses the permutation ``torch.randperm(n, generator=g)`` with ``g`` seeded from
    ``(seed, e)`` (see :meth:`order`); batch k of the epoch is ``order[k·m : (k+1)·m]``. There are
    ``⌈N/m⌉`` batches per epoch (the last one holds the ``N mod m`` leftover examples), or
    ``⌊N/m⌋`` with ``drop_last=True`` (the leftovers of an epoch are skipped; a new permutation
    each epoch means different examples are skipped each time).

    Args:
        n: number of examples N.
        batch_size: the global minibatch size m (divisible by ``world_size``). May exceed N
            without ``drop_last``: every epoch is then one batch of all N examples.
        shuffle: ``False`` walks ``0, 1, ..., N-1`` in order every epoch.
        drop_last: drop the final partial batch of every epoch.
        seed: base seed (integer >= 0).
        rank, world_size: this process's share for data-parallel training (module docstring).

    Example:
        >>> b = EpochBatches(5, 2, seed=0)
        >>> len(b), [len(idx) for idx in b], b.epoch
        (3, [2, 2, 1], 1)
    """

    _kind = "epoch"

    def __init__(
        self,
        n: int,
        batch_size: int,
        *,
        shuffle: bool = True,
        drop_last: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        super().__init__(n, batch_size, seed=seed, rank=rank, world_size=world_size)
        if not isinstance(shuffle, bool):
            raise ValueError(f"shuffle must be True or False, got {shuffle!r}")
        if not isinstance(drop_last, bool):
            raise ValueError(f"drop_last must be True or False, got {drop_last!r}")
        if drop_last and batch_size > n:
            raise ValueError(
                f"batch_size must be <= n when drop_last=True (otherwise no batch is left), "
                f"got batch_size={batch_size}, n={n}"
            )
        self.shuffle = shuffle
        self.drop_last = drop_last

    def __len__(self) -> int:
        if self.drop_last:
            return self.n // self.batch_size
        return math.ceil(self.n / self.batch_size)

    def _global_batch_size(self, step: int) -> int:
        return min(self.batch_size, self.n - step * self.batch_size)

    def _config(self) -> dict[str, Any]:
        return {**super()._config(), "shuffle": self.shuffle, "drop_last": self.drop_last}

    def order(self, epoch: int) -> Tensor:
        """The example order of ``epoch``: a permutation of ``0..N-1`` (identity without shuffle).

        Seeded with ``SeedSequence((seed, epoch))`` alone, so any epoch can be reproduced without
        replaying the ones before it.
        """
        check_int("epoch", epoch, 0)
        if not self.shuffle:
            return torch.arange(self.n)
        generator = torch.Generator().manual_seed(_derived_seed(self.seed, epoch))
        return torch.randperm(self.n, generator=generator)

    def _epoch_batches(self, epoch: int, start: int) -> Iterator[Tensor]:
        order = self.order(epoch)
        m = self.batch_size
        for step in range(start, len(self)):
            yield order[step * m : (step + 1) * m]


class RandomBatches(_IndexBatches):
    """A fresh sample of ``batch_size`` distinct examples at every step.

    Step s of epoch e draws ``torch.randperm(n, generator=g)[:m]`` with ``g`` seeded from
    ``(seed, e, s)``: uniformly random without replacement *within* a batch, independent
    *across* steps (so, across steps, examples are drawn with replacement). An "epoch" is just a
    bookkeeping unit of ``steps_per_epoch`` steps, by default ``⌈N/m⌉`` so that it costs as many
    gradient evaluations as one pass of :class:`EpochBatches`.

    Args:
        n: number of examples N.
        batch_size: the global minibatch size m, 1 <= m <= N, divisible by ``world_size``.
        seed: base seed (integer >= 0).
        steps_per_epoch: steps per epoch (>= 1); default ``⌈N/m⌉``.
        rank, world_size: this process's share for data-parallel training (module docstring).
    """

    _kind = "random"

    def __init__(
        self,
        n: int,
        batch_size: int,
        *,
        seed: int = 0,
        steps_per_epoch: int | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        super().__init__(n, batch_size, seed=seed, rank=rank, world_size=world_size)
        if batch_size > n:
            raise ValueError(
                f"batch_size must be <= n (examples are drawn without replacement within a "
                f"batch), got batch_size={batch_size}, n={n}"
            )
        if steps_per_epoch is None:
            steps_per_epoch = math.ceil(n / batch_size)
        check_int("steps_per_epoch", steps_per_epoch, 1)
        self.steps_per_epoch = int(steps_per_epoch)

    def __len__(self) -> int:
        return self.steps_per_epoch

    def _global_batch_size(self, step: int) -> int:
        return self.batch_size

    def _config(self) -> dict[str, Any]:
        return {**super()._config(), "steps_per_epoch": self.steps_per_epoch}

    def sample(self, epoch: int, step: int) -> Tensor:
        """The global batch of ``step`` in ``epoch`` (seeded with ``SeedSequence((seed, epoch,
        step))``)."""
        check_int("epoch", epoch, 0)
        check_int("step", step, 0)
        generator = torch.Generator().manual_seed(_derived_seed(self.seed, epoch, step))
        return torch.randperm(self.n, generator=generator)[: self.batch_size]

    def _epoch_batches(self, epoch: int, start: int) -> Iterator[Tensor]:
        for step in range(start, len(self)):
            yield self.sample(epoch, step)


_SAMPLERS: dict[str, type[_IndexBatches]] = {"epoch": EpochBatches, "random": RandomBatches}


def batches(
    name: str, n: int, batch_size: int, *, seed: int, **kw: Any
) -> EpochBatches | RandomBatches:
    """Build a sampler by name: ``"epoch"`` (:class:`EpochBatches`) or ``"random"``
    (:class:`RandomBatches`); ``kw`` are that class's other keyword options."""
    if name not in _SAMPLERS:
        raise ValueError(
            f"unknown batching {name!r}{suggest(name, _SAMPLERS)} (valid: {', '.join(_SAMPLERS)})"
        )
    cls = _SAMPLERS[name]
    allowed = [p for p in inspect.signature(cls).parameters if p not in ("n", "batch_size", "seed")]
    for key in kw:
        if key not in allowed:
            raise ValueError(
                f"batches({name!r}) got an unknown option {key!r}{suggest(key, allowed)} "
                f"(valid: {', '.join(allowed)})"
            )
    return cls(n, batch_size, seed=seed, **kw)
