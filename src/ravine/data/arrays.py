"""In-memory examples (:class:`ArrayDataset`) and :func:`iterate`: index batches to minibatches.

An :class:`ArrayDataset` holds all examples in two tensors and is indexed with a whole index tensor
per minibatch (one gather, no per-example Python). :func:`iterate` does that for an
:class:`ArrayDataset` and hands any other map-style dataset to torch's
:class:`~torch.utils.data.DataLoader` with the same index batches as its ``batch_sampler``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

__all__ = ["ArrayDataset", "iterate"]


class ArrayDataset(Dataset):
    """Examples held in two tensors, ``x`` (N, ...) and ``y`` (N, ...).

    Indexing with an index tensor returns the whole minibatch ``(x[idx], y[idx])`` in one tensor
    operation; :func:`iterate` uses that instead of a per-example DataLoader.
    """

    def __init__(self, x: Tensor | np.ndarray, y: Tensor | np.ndarray) -> None:
        x, y = torch.as_tensor(x), torch.as_tensor(y)
        if x.ndim == 0 or y.ndim == 0:
            raise ValueError(
                f"x and y must have a leading example dimension, got shapes "
                f"{tuple(x.shape)} and {tuple(y.shape)}"
            )
        if x.shape[0] != y.shape[0]:
            raise ValueError(
                f"x and y must hold the same number of examples, got {x.shape[0]} and {y.shape[0]}"
            )
        self.x = x
        self.y = y

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, index: Any) -> tuple[Tensor, Tensor]:
        return self.x[index], self.y[index]

    def to(self, device: torch.device | str) -> ArrayDataset:
        """A copy with both tensors on ``device`` (e.g. to index on the GPU without transfers)."""
        return ArrayDataset(self.x.to(device), self.y.to(device))

    def __repr__(self) -> str:
        return (
            f"ArrayDataset(n={len(self)}, x={tuple(self.x.shape[1:])} {self.x.dtype}, "
            f"y={tuple(self.y.shape[1:])} {self.y.dtype})"
        )


class _IndexLists:
    """Index tensors as the lists of ints a DataLoader ``batch_sampler`` hands to the dataset."""

    def __init__(self, index_batches: Iterable[Tensor]) -> None:
        self.index_batches = index_batches

    def __iter__(self) -> Iterator[list[int]]:
        for idx in self.index_batches:
            yield idx.tolist()

    def __len__(self) -> int:
        return len(self.index_batches)  # type: ignore[arg-type]


def iterate(
    dataset: Dataset, index_batches: Iterable[Tensor], **loader_kwargs: Any
) -> Iterator[Any]:
    """Minibatches of ``dataset`` for a stream of index tensors (an ``EpochBatches`` /
    ``RandomBatches`` epoch).

    An :class:`ArrayDataset` is indexed with each whole index tensor (one gather per batch, no
    per-example Python). Any other map-style dataset goes through
    ``torch.utils.data.DataLoader(dataset, batch_sampler=..., **loader_kwargs)`` with the same
    index batches, so its per-example ``__getitem__`` and collation (and ``num_workers``,
    ``pin_memory``, ...) are torch's; ``loader_kwargs`` only apply to this path.

    Note:
        With ``num_workers > 0`` the DataLoader draws indices ahead of the batches it has
        delivered, so a sampler's ``state_dict()`` is then exact only between epochs.
    """
    if isinstance(dataset, ArrayDataset):
        for idx in index_batches:
            yield dataset[idx]
        return
    yield from DataLoader(dataset, batch_sampler=_IndexLists(index_batches), **loader_kwargs)
