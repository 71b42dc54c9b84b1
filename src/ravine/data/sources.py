r"""Where a training run's minibatches come from: tensors, a torch Dataset or DataLoader, a stream.

:func:`ravine.fit` turns its ``train`` argument into a :class:`Source` with :func:`training_source`
and its ``val`` / ``test`` arguments into batch iterators with :func:`eval_batches`:

============================================  ==================================================
what the user passes                          how ravine batches it
============================================  ==================================================
``ArrayDataset``, a pair ``(x, y)`` of         in memory: every batch is one gather ``x[idx]``
tensors, or a two-tensor ``TensorDataset``     on the device (the fast path)
any other map-style ``Dataset``               ravine's sampler (:class:`~ravine.data.EpochBatches`
                                              or :class:`~ravine.data.RandomBatches`) drives a
                                              ``DataLoader`` that ravine builds (``num_workers``,
                                              ``pin_memory``, ``prefetch``); same order as the
                                              tensors of the same data, hence bit-identical runs
a ``DataLoader``                              used as given: its sampler decides the order
an ``IterableDataset`` (a stream)             a ``DataLoader`` of ``batch_size`` over it; epochs
                                              are ``steps_per_epoch`` steps
============================================  ==================================================

Every source yields, per optimizer step, the list of its ``accumulate`` micro-batches (this
rank's share of the step's minibatch, split in ``accumulate`` parts) and the size of the whole
step's minibatch over all ranks, which the loop needs to weight the micro-batches' losses so
that their summed gradient is the gradient of the step's mean loss.

Exact resume
------------
A source's ``state_dict()`` says where the run is (epoch and step within it); a source built the
same way and given that state yields exactly the remaining batches.

* Tensors and map-style Datasets: ravine's samplers make every epoch's order a function of
  ``(seed, epoch)``, so resuming is exact at any step, whatever ``num_workers`` (workers
  prefetch ahead, but the source counts the batches the loop has *used*).
* A user's DataLoader or a stream: ravine records, when it opens an iterator over the loader,
  torch's global random state and the loader's ``generator`` state (they decide a
  ``RandomSampler``'s permutation and the workers' seeds) and the sampler's ``state_dict()``
  when it has one (ravine's samplers do). Resuming restores them, opens the iterator again and
  skips the batches already used. That is exact for loaders whose order and content follow from
  those states (``shuffle=True/False``, ravine's samplers, seeded augmentation in workers); it
  re-reads the skipped batches (a cost proportional to the position in the epoch or stream),
  and it is not exact for a sampler or dataset with other hidden state (e.g. drawing from
  Python's ``random`` in the main process, or reading a changing file).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset
from torch.utils.data._utils.collate import default_collate

from ravine._checks import check_int
from ravine.data.arrays import ArrayDataset, _IndexLists
from ravine.data.batching import EpochBatches, RandomBatches, _derived_seed, batches

__all__ = [
    "Source",
    "TensorSource",
    "MapSource",
    "LoaderSource",
    "LoaderOptions",
    "training_source",
    "eval_batches",
    "as_tensors",
    "to_device",
    "batch_examples",
    "first_item",
    "fixed_examples",
    "EVAL_BATCH_SIZE",
    "CPU_EVAL_BATCH_SIZE",
]

# Evaluation of in-memory tensors runs without gradients, so it can use far larger batches.
EVAL_BATCH_SIZE = 2048
# On a CPU, chunks whose activations stay in cache are faster: the MNIST-1D CNN evaluates 1000
# examples in 27 ms in chunks of 256-512 and 43 ms in one chunk; an MLP gains little past 512.
CPU_EVAL_BATCH_SIZE = 512
Step = tuple[list[Any], int | None]


def to_device(batch: Any, device: torch.device, non_blocking: bool = False) -> Any:
    """``batch`` with every tensor moved to ``device`` (recursing into dicts, tuples, lists)."""
    if isinstance(batch, Tensor):
        return batch.to(device, non_blocking=non_blocking)
    if isinstance(batch, Mapping):
        return type(batch)({k: to_device(v, device, non_blocking) for k, v in batch.items()})
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # namedtuple
        return type(batch)(*(to_device(v, device, non_blocking) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device, non_blocking) for v in batch)
    return batch


def _first_tensor(batch: Any) -> Tensor | None:
    if isinstance(batch, Tensor):
        return batch
    values = batch.values() if isinstance(batch, Mapping) else (
        batch if isinstance(batch, (list, tuple)) else ())
    for value in values:
        found = _first_tensor(value)
        if found is not None:
            return found
    return None


def batch_examples(batch: Any) -> int:
    """Number of examples in a batch: the leading size of its first tensor (depth first).

    Used to weight per-batch means into epoch means; a batch without tensors counts as one.
    """
    tensor = _first_tensor(batch)
    if tensor is None or tensor.dim() == 0:
        return 1
    return int(tensor.shape[0])


def as_tensors(data: Any) -> tuple[Tensor, Tensor] | None:
    """``(x, y)`` when ``data`` is in-memory tensors (ArrayDataset, pair, 2-tensor TensorDataset).

    Raises:
        ValueError: a pair whose parts are not tensors or differ in length.
    """
    if isinstance(data, ArrayDataset):
        return data.x, data.y
    if isinstance(data, TensorDataset) and len(data.tensors) == 2:
        return data.tensors[0], data.tensors[1]
    if isinstance(data, (tuple, list)) and len(data) == 2 and not isinstance(data, Dataset):
        x, y = data
        if not isinstance(x, Tensor) or not isinstance(y, Tensor):
            raise ValueError(
                f"a pair (x, y) must hold tensors, got {type(x).__name__}, {type(y).__name__}"
            )
        return x, y
    return None


def first_item(data: Any) -> Any:
    """One example (map-style Dataset) or one batch (DataLoader, stream) of ``data``, or None."""
    if isinstance(data, DataLoader):
        if not isinstance(data.dataset, IterableDataset) and len(data.dataset) > 0:
            return default_collate([data.dataset[0]]) if data.collate_fn is default_collate \
                else data.collate_fn([data.dataset[0]])
        return None
    if isinstance(data, IterableDataset):
        return next(iter(data), None)
    if isinstance(data, Dataset):
        return data[0] if len(data) > 0 else None  # type: ignore[arg-type]
    return None


class LoaderOptions(dict):
    """Keyword arguments for the DataLoaders ravine builds (``num_workers``, ``pin_memory``,
    ``prefetch_factor``, ``collate_fn``, ``persistent_workers``); worker seeding is ravine's."""

    def build(self, dataset: Any, seed: int, **kw: Any) -> DataLoader:
        options = {k: v for k, v in self.items() if v is not None}
        if not options.get("num_workers"):
            options.pop("prefetch_factor", None)
            options.pop("persistent_workers", None)
        # The base seed of the workers' random streams comes from this generator, not from
        # the training's global stream: the same seed gives the same augmentation.
        generator = torch.Generator().manual_seed(seed)
        return DataLoader(dataset, generator=generator, **options, **kw)


class Source:
    """Training batches of one rank, step by step, with a resumable position.

    Iterating yields the remaining steps of the current epoch (``epoch``), each as
    ``(micro_batches, global_size)``, then advances ``epoch``; a step counts as used when it is
    yielded, so ``state_dict()`` taken while it is processed resumes at the next one.
    ``global_size`` is the step's minibatch size over all ranks, or ``None`` when unknown (a
    user's DataLoader: then every rank's share is taken to be equal).
    """

    epoch: int
    position: int
    accumulate: int

    def __len__(self) -> int:
        raise NotImplementedError

    def __iter__(self) -> Iterator[Step]:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def load_state_dict(self, state: dict[str, Any]) -> None:
        raise NotImplementedError

    def examples(self, count: int, seed: int) -> Any:
        """A fixed set of about ``count`` training examples as one batch (for diagnostics)."""
        raise NotImplementedError


def fixed_examples(n: int, count: int, seed: int) -> Tensor:
    """The indices of the fixed set of ``count`` examples (of ``n``) that diagnostics measure:
    drawn once from ``seed``, the same for tensors and for a Dataset; all of them, in order,
    when ``count >= n``."""
    if count >= n:
        return torch.arange(n)
    generator = torch.Generator().manual_seed(seed + 7919)
    return torch.randperm(n, generator=generator)[:count]


def _micro(idx: Tensor, k: int) -> list[Tensor]:
    return [idx] if k == 1 else list(torch.tensor_split(idx, k))


class _IndexedSource(Source):
    """Batches chosen by one of ravine's samplers (exact resume at any step)."""

    def __init__(self, sampler: EpochBatches | RandomBatches, accumulate: int) -> None:
        self.sampler = sampler
        self.accumulate = accumulate

    @property
    def epoch(self) -> int:  # type: ignore[override]
        return self.sampler.epoch

    @property
    def position(self) -> int:  # type: ignore[override]
        return self.sampler.position

    def __len__(self) -> int:
        return len(self.sampler)

    def _load(self, index_batches: Iterator[Tensor]) -> Iterator[Any]:
        """One batch per index tensor, lazily."""
        raise NotImplementedError

    def __iter__(self) -> Iterator[Step]:
        sampler, k = self.sampler, self.accumulate
        epoch, start = sampler.epoch, sampler.position
        micro_indices = (part for idx in sampler.epoch_batches(epoch, start)
                         for part in _micro(idx, k))
        loaded = self._load(micro_indices)
        for step in range(start, len(sampler)):
            micro = [next(loaded) for _ in range(k)]
            sampler.epoch, sampler._position = epoch, step + 1
            yield micro, sum(sampler.shard_sizes(step)) if sampler.world_size > 1 else (
                None if k == 1 else sum(batch_examples(b) for b in micro))
        sampler.epoch, sampler._position = epoch + 1, 0

    def state_dict(self) -> dict[str, Any]:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state)


class TensorSource(_IndexedSource):
    """In-memory ``(x, y)`` on the training device: a batch is one gather ``x[idx], y[idx]``."""

    def __init__(self, x: Tensor, y: Tensor, sampler: EpochBatches | RandomBatches,
                 accumulate: int = 1) -> None:
        super().__init__(sampler, accumulate)
        self.x, self.y = x, y

    def _load(self, index_batches: Iterator[Tensor]) -> Iterator[Any]:
        x, y, device = self.x, self.y, self.x.device
        for idx in index_batches:
            idx = idx.to(device)
            yield x[idx], y[idx]

    def examples(self, count: int, seed: int) -> tuple[Tensor, Tensor]:
        if count >= self.x.shape[0]:
            return self.x, self.y
        idx = fixed_examples(self.x.shape[0], count, seed).to(self.x.device)
        return self.x[idx], self.y[idx]


class MapSource(_IndexedSource):
    """A map-style Dataset batched by ravine's sampler through a DataLoader ravine builds.

    The loader's ``batch_sampler`` receives exactly the index batches the tensor path would
    gather, so the same data as tensors and as a Dataset give the same minibatches. Batches are
    moved to ``device`` by the loop. ``generator`` seeds the workers from ``(seed, epoch)``.
    """

    def __init__(self, dataset: Dataset, sampler: EpochBatches | RandomBatches,
                 options: LoaderOptions, seed: int, accumulate: int = 1) -> None:
        super().__init__(sampler, accumulate)
        self.dataset, self.options, self.seed = dataset, options, seed

    def _load(self, index_batches: Iterator[Tensor]) -> Iterator[Any]:
        loader = self.options.build(
            self.dataset, _derived_seed(self.seed, self.sampler.epoch),
            batch_sampler=_IndexLists(index_batches),
        )
        yield from loader

    def examples(self, count: int, seed: int) -> Any:
        idx = fixed_examples(len(self.dataset), count, seed)  # type: ignore[arg-type]
        return default_collate([self.dataset[i] for i in idx.tolist()])


class LoaderSource(Source):
    """A user's DataLoader (its sampler decides the order), or a stream of batches.

    Epoch mode (a loader with a length, ``steps_per_epoch=None``): an epoch is one pass of the
    loader, ``⌈len(loader) / accumulate⌉`` steps. Stream mode (``steps_per_epoch`` given, e.g.
    an ``IterableDataset``): one iterator runs on across epochs, reopened when exhausted; an
    epoch is ``steps_per_epoch`` steps. Resume replays (module docstring).
    """

    def __init__(self, loader: Iterable[Any], accumulate: int = 1,
                 steps_per_epoch: int | None = None) -> None:
        self.loader = loader
        self.accumulate = accumulate
        self.stream = steps_per_epoch is not None
        if steps_per_epoch is None:
            try:
                batches_per_pass = len(loader)  # type: ignore[arg-type]
            except TypeError:
                raise ValueError(
                    "train is a loader without a length (an IterableDataset); pass "
                    "steps_per_epoch= (the number of optimizer steps that make an epoch)"
                ) from None
            if batches_per_pass == 0:
                raise ValueError(
                    "train DataLoader yields no batches (an empty dataset, or drop_last=True "
                    "with fewer examples than batch_size)"
                )
            steps_per_epoch = math.ceil(batches_per_pass / accumulate)
        self.steps_per_epoch = steps_per_epoch
        self.epoch = 0
        self.position = 0
        self._iterator: Iterator[Any] | None = None
        self._opened: dict[str, Any] | None = None
        self._consumed = 0
        self._skip = 0

    def __len__(self) -> int:
        return self.steps_per_epoch

    def _sampler(self) -> Any:
        for name in ("batch_sampler", "sampler"):
            sampler = getattr(self.loader, name, None)
            if sampler is not None and hasattr(sampler, "state_dict") and hasattr(
                    sampler, "load_state_dict"):
                return sampler
        return None

    def _open(self, opened: dict[str, Any] | None = None) -> None:
        """Open an iterator over the loader, recording (or restoring) what decides its order."""
        generator = getattr(self.loader, "generator", None)
        sampler = self._sampler()
        if opened is None:
            opened = {
                "rng": torch.get_rng_state(),
                "generator": None if generator is None else generator.get_state(),
                "sampler": None if sampler is None else sampler.state_dict(),
            }
            self._iterator = iter(self.loader)
        else:
            current = torch.get_rng_state()
            torch.set_rng_state(opened["rng"])
            if generator is not None and opened["generator"] is not None:
                generator.set_state(opened["generator"])
            if sampler is not None and opened["sampler"] is not None:
                sampler.load_state_dict(opened["sampler"])
            try:
                self._iterator = iter(self.loader)
            finally:
                torch.set_rng_state(current)
        self._opened = opened
        self._consumed = 0

    def _next(self) -> Any:
        if self._iterator is None:
            self._open(self._opened if self._skip else None)
            skip, self._skip = self._skip, 0
            for _ in range(skip):
                self._draw()
        return self._draw()

    def _draw(self) -> Any:
        assert self._iterator is not None
        batch = next(self._iterator)
        self._consumed += 1
        return batch

    def __iter__(self) -> Iterator[Step]:
        epoch, start = self.epoch, self.position
        for step in range(start, self.steps_per_epoch):
            micro = []
            for _ in range(self.accumulate):
                try:
                    micro.append(self._next())
                except StopIteration:
                    self._iterator = None
                    if not self.stream:
                        break
                    try:
                        micro.append(self._next())
                    except StopIteration:
                        raise ValueError("train stream yields no batches") from None
            if not micro:
                break
            self.position = step + 1
            yield micro, None
        if not self.stream:
            self._iterator = None
        self.epoch, self.position = epoch + 1, 0

    def state_dict(self) -> dict[str, Any]:
        return {"kind": "loader", "epoch": self.epoch, "position": self.position,
                "stream": self.stream, "steps_per_epoch": self.steps_per_epoch,
                "opened": self._opened if self._iterator is not None else None,
                "consumed": self._consumed if self._iterator is not None else 0}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("kind", "stream", "steps_per_epoch"):
            expected = {"kind": "loader", "stream": self.stream,
                        "steps_per_epoch": self.steps_per_epoch}[key]
            if state.get(key) != expected:
                raise ValueError(f"batches state was saved with {key}={state.get(key)!r}, "
                                 f"this run has {key}={expected!r}")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._iterator = None
        self._opened = state["opened"]
        self._skip = int(state["consumed"]) if state["opened"] is not None else 0

    def examples(self, count: int, seed: int) -> Any:
        """The first batches of a fresh pass (without touching the training's iterator)."""
        taken: list[Any] = []
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 7919)
            for batch in self.loader:
                taken.append(batch)
                if sum(batch_examples(b) for b in taken) >= count:
                    break
        return _concat(taken)


def _concat(batches_: Sequence[Any]) -> Any:
    first = batches_[0]
    if isinstance(first, Tensor):
        return torch.cat(list(batches_))
    if isinstance(first, Mapping):
        return {k: _concat([b[k] for b in batches_]) for k in first}
    if isinstance(first, (list, tuple)):
        return type(first)(_concat([b[i] for b in batches_]) for i in range(len(first)))
    return first


def training_source(
    data: Any,
    *,
    batch_size: int,
    batching: str,
    seed: int,
    rank: int,
    world_size: int,
    device: torch.device,
    accumulate: int = 1,
    drop_last: bool = False,
    steps_per_epoch: int | None = None,
    loader_options: LoaderOptions | None = None,
) -> Source:
    """The :class:`Source` for fit's ``train`` argument (see the module docstring).

    Raises:
        ValueError: data of another kind, empty data, or options that do not fit it.
    """
    options = loader_options if loader_options is not None else LoaderOptions()
    if isinstance(data, DataLoader) or (isinstance(data, IterableDataset)):
        if isinstance(data, IterableDataset):
            if steps_per_epoch is None:
                raise ValueError(
                    "train is an IterableDataset (a stream without epochs); pass "
                    "steps_per_epoch= (the number of optimizer steps that make an epoch)"
                )
            if batch_size % accumulate:
                raise ValueError(f"batch_size={batch_size} must be divisible by "
                                 f"accumulate={accumulate}")
            data = options.build(data, seed, batch_size=batch_size // accumulate)
        return LoaderSource(data, accumulate, steps_per_epoch)
    if steps_per_epoch is not None and batching != "random":
        raise ValueError("steps_per_epoch applies to streams and to batching='random'; "
                         "an epoch over a dataset is one pass")
    tensors = as_tensors(data)
    n = tensors[0].shape[0] if tensors is not None else _length(data, "train")
    if tensors is not None and tensors[1].shape[0] != n:
        raise ValueError(f"train must hold the same number of inputs and targets, got "
                         f"{n} and {tensors[1].shape[0]}")
    if n == 0:
        raise ValueError("train holds no examples")
    kw: dict[str, Any] = {"rank": rank, "world_size": world_size}
    if batching == "epoch":
        kw["drop_last"] = drop_last
    elif steps_per_epoch is not None:
        kw["steps_per_epoch"] = steps_per_epoch
    sampler = batches(batching, n, batch_size, seed=seed, **kw)
    check_int("accumulate", accumulate, 1)
    if tensors is not None:
        return TensorSource(tensors[0].to(device), tensors[1].to(device), sampler, accumulate)
    return MapSource(data, sampler, options, seed, accumulate)


def _length(data: Any, name: str) -> int:
    if not isinstance(data, Dataset):
        raise ValueError(
            f"{name} must be a pair (x, y) of tensors, a ravine.data.ArrayDataset, a torch "
            f"Dataset, IterableDataset or DataLoader, got {type(data).__name__}"
        )
    try:
        return len(data)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError(f"{name} is a Dataset without __len__; give it one or make it an "
                         "IterableDataset") from None


def eval_batches(
    data: Any,
    *,
    name: str,
    batch_size: int,
    rank: int,
    world_size: int,
    device: torch.device,
    loader_options: LoaderOptions | None = None,
) -> Iterator[Any]:
    """This rank's share of ``data``'s batches for evaluation, in order.

    In-memory tensors are cut into chunks of this rank's strided share (:data:`EVAL_BATCH_SIZE`
    examples, :data:`CPU_EVAL_BATCH_SIZE` on a CPU); a map-style Dataset goes through a
    DataLoader over the same share; a user's DataLoader is iterated as given (under
    data-parallel training its sampler must shard, e.g. torch's ``DistributedSampler``); a
    stream is batched by ``batch_size``.
    """
    options = loader_options if loader_options is not None else LoaderOptions()
    tensors = as_tensors(data)
    if tensors is not None:
        x, y = tensors
        x, y = x[rank::world_size].to(device), y[rank::world_size].to(device)
        size = CPU_EVAL_BATCH_SIZE if x.device.type == "cpu" else EVAL_BATCH_SIZE
        for start in range(0, x.shape[0], size):
            yield x[start : start + size], y[start : start + size]
        return
    if isinstance(data, DataLoader):
        yield from data
        return
    if isinstance(data, IterableDataset):
        yield from options.build(data, 0, batch_size=batch_size)
        return
    n = _length(data, name)
    share = list(range(rank, n, world_size))
    yield from options.build(data, 0, batch_size=batch_size, sampler=share)
