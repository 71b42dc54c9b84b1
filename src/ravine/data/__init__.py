"""Data for ravine: minibatch index streams and train / validation / test datasets.

* :class:`EpochBatches` (shuffle once per epoch, then contiguous blocks) and :class:`RandomBatches`
  (a fresh sample every step) yield index tensors, resumable mid-epoch and shardable across
  data-parallel ranks; :func:`batches` builds one by name.
* :func:`load` returns :class:`Splits` of :class:`ArrayDataset` s for ``mnist1d``, ``digits``,
  ``quadratic`` or a user ``.csv`` / ``.npz`` file, and of lazily decoded image datasets for an
  ``image-folder`` (class folders of image files, as torchvision's ``ImageFolder`` reads them).
* :func:`iterate` turns index batches into minibatches: an :class:`ArrayDataset` by tensor
  indexing, any other dataset through torch's DataLoader.

Example:
    >>> from ravine import data
    >>> splits = data.load("digits", seed=0)
    >>> sampler = data.EpochBatches(len(splits.train), 64, seed=0)
    >>> for x, y in data.iterate(splits.train, sampler):
    ...     pass
"""

from ravine.data.arrays import ArrayDataset, iterate
from ravine.data.batching import EpochBatches, RandomBatches, batches
from ravine.data.builtin import cache_dir, quadratic_problem
from ravine.data.loading import load, names
from ravine.data.splits import Splits

__all__ = [
    "ArrayDataset",
    "EpochBatches",
    "RandomBatches",
    "Splits",
    "batches",
    "cache_dir",
    "iterate",
    "load",
    "names",
    "quadratic_problem",
]
