"""Train / validation / test :class:`Splits` and the steps every source shares to make them.

Splitting (:func:`split_indices`): ``test_fraction`` of the examples go to the test set and
``val_fraction`` of the rest to the validation set, by a seeded random permutation (not
stratified); each split keeps the original row order, and ``splits.info["split_indices"]`` says
which rows went where. ``batch_size=m`` checks that the training split holds at least one
minibatch.

Standardization (:func:`make_splits`, ``standardize=True``): every feature is rescaled to zero
mean and unit variance with the mean and standard deviation of the *training split only*
(features constant on it are only centred), the same transformation then being applied to
validation and test; the statistics are in ``info``.

Labels (:func:`encode_labels`): class names (strings) or integer-valued numbers make a
classification problem, labels remapped to ``0..K-1`` in sorted order (the original labels are
``splits.info["classes"]``); any other numbers make a regression problem with float targets of
shape (N, k) (k = 1 for a single column). ``task="classification"`` or ``"regression"`` overrides
the guess.

The ``check_*`` functions validate the source options all loaders share (fractions, flags,
``batch_size``, ``dtype``, ``task``) with one-line messages naming the option and its value.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ravine._checks import suggest
from ravine.data.arrays import ArrayDataset

__all__ = [
    "Splits",
    "as_dtype",
    "check_batch_size",
    "check_bool",
    "check_fraction",
    "check_task",
    "encode_labels",
    "make_splits",
    "split_arrays",
    "split_indices",
]


@dataclass
class Splits:
    """Train / validation / test splits of one problem.

    Attributes:
        train, val, test: the splits, map-style torch datasets of ``(x, y)`` pairs: an in-memory
            :class:`ArrayDataset` for most sources, lazily loaded ones for an image folder;
            ``val`` is ``None`` when ``val_fraction == 0``.
        num_features: features per example (``int``), or the shape of one example (``tuple``) for
            multi-dimensional inputs such as ``(1, 8, 8)`` images.
        num_classes: number of classes K (labels ``0..K-1``); 0 for regression.
            (:attr:`num_outputs` gives the model's output width for either task.)
        task: ``"classification"`` or ``"regression"``.
        name: the dataset name, or the file name for user data.
        info: source-specific facts, e.g. ``classes`` (original labels), ``split_indices``,
            standardization ``mean``/``std``, the quadratic problem's ``hessian_eigenvalues``.
    """

    train: Dataset
    val: Dataset | None
    test: Dataset
    num_features: int | tuple[int, ...]
    num_classes: int
    task: str
    name: str
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def num_outputs(self) -> int:
        """The model's output width: ``num_classes`` for classification, else the number of target
        values per example (k for targets of shape (N, k), 1 for 1-D targets of shape (N,))."""
        if self.task == "classification":
            return self.num_classes
        if isinstance(self.train, ArrayDataset):
            target_shape = self.train.y.shape[1:]
        else:
            target_shape = torch.as_tensor(self.train[0][1]).shape
        return math.prod(target_shape)


# --------------------------------------------------------------------------- validation helpers


def check_fraction(name: str, value: Any, *, allow_zero: bool) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    low = 0 <= value if ok and allow_zero else ok and 0 < value
    if not (ok and low and value < 1):
        interval = "[0, 1)" if allow_zero else "(0, 1)"
        raise ValueError(f"{name} must be a number in {interval}, got {value!r}")


def check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")


def check_batch_size(batch_size: Any) -> None:
    if batch_size is not None and (
        not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1
    ):
        raise ValueError(f"batch_size must be None or an integer >= 1, got {batch_size!r}")


_DTYPES = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "float64": torch.float64,
}


def as_dtype(dtype: Any) -> torch.dtype:
    if isinstance(dtype, torch.dtype) and dtype.is_floating_point:
        return dtype
    if isinstance(dtype, str) and dtype in _DTYPES:
        return _DTYPES[dtype]
    raise ValueError(
        f"dtype must be a floating torch.dtype or one of {', '.join(_DTYPES)}, got {dtype!r}"
        f"{suggest(str(dtype), _DTYPES)}"
    )


def check_task(task: Any) -> None:
    if task not in (None, "classification", "regression"):
        raise ValueError(
            f"task must be None, 'classification' or 'regression', got {task!r}"
            f"{suggest(str(task), ['classification', 'regression'])}"
        )


# --------------------------------------------------------------------------- splitting


def split_indices(
    total: int,
    *,
    seed: int,
    val_fraction: float,
    test_fraction: float,
    batch_size: int | None,
    where: str,
) -> dict[str, np.ndarray]:
    """Seeded random train / val / test row indices, each sorted (rows keep their file order).

    ``round(test_fraction·N)`` test rows and ``round(val_fraction·(N - n_test))`` validation rows,
    at least one of each when the fraction is positive; the rest is training data.
    """
    n_test = max(1, round(test_fraction * total)) if test_fraction > 0 else 0
    n_val = max(1, round(val_fraction * (total - n_test))) if val_fraction > 0 else 0
    n_train = total - n_test - n_val
    if n_train < 1:
        raise ValueError(
            f"{where}: {total} examples are too few to split with test_fraction={test_fraction} "
            f"and val_fraction={val_fraction} (no training examples would be left)"
        )
    if batch_size is not None and n_train < batch_size:
        raise ValueError(
            f"{where}: the training split has {n_train} examples ({total} minus {n_val} validation "
            f"and {n_test} test), fewer than one batch (batch_size={batch_size})"
        )
    order = np.random.default_rng(seed).permutation(total)
    return {
        "train": np.sort(order[n_test + n_val :]),
        "val": np.sort(order[n_test : n_test + n_val]),
        "test": np.sort(order[:n_test]),
    }


def make_splits(
    name: str,
    parts: dict[str, tuple[np.ndarray, np.ndarray] | None],
    *,
    task: str,
    num_classes: int,
    standardize: bool,
    dtype: torch.dtype,
    info: dict[str, Any],
) -> Splits:
    """Standardize (statistics of the training split only) and wrap the arrays as tensors."""
    if standardize:
        train_x = parts["train"][0]  # type: ignore[index]
        mean = train_x.mean(axis=0)
        std = train_x.std(axis=0)
        # A feature constant on the training split carries no scale to normalize by.
        std = np.where(std > 0, std, 1.0)
        parts = {k: None if p is None else ((p[0] - mean) / std, p[1]) for k, p in parts.items()}
        info = {**info, "mean": mean, "std": std}
    y_dtype = torch.int64 if task == "classification" else dtype
    datasets = {
        k: None
        if p is None
        else ArrayDataset(torch.as_tensor(p[0], dtype=dtype), torch.as_tensor(p[1], dtype=y_dtype))
        for k, p in parts.items()
    }
    shape = tuple(parts["train"][0].shape[1:])  # type: ignore[index]
    return Splits(
        train=datasets["train"],  # type: ignore[arg-type]
        val=datasets["val"],
        test=datasets["test"],  # type: ignore[arg-type]
        num_features=shape[0] if len(shape) == 1 else shape,
        num_classes=num_classes,
        task=task,
        name=name,
        info=info,
    )


def split_arrays(
    name: str,
    x: np.ndarray,
    y: np.ndarray,
    *,
    task: str,
    num_classes: int,
    seed: int,
    val_fraction: float,
    test_fraction: float,
    standardize: bool,
    batch_size: int | None,
    dtype: Any,
    info: dict[str, Any],
    where: str,
    locate_x: Callable[[tuple[int, ...]], str] | None = None,
    locate_y: Callable[[int], str] | None = None,
) -> Splits:
    """Split the examples ``x``, ``y`` at random (:func:`split_indices`) and :func:`make_splits`.

    Values that would overflow ``dtype`` (1e300 is finite in float64, ``inf`` in float32) are
    refused here, in one line naming the entry (``locate_x(index)``, ``locate_y(row)``; by
    default ``x[i, j]`` and ``y[i]``), rather than as a non-finite loss at the first step.
    """
    check_fraction("test_fraction", test_fraction, allow_zero=False)
    check_bool("standardize", standardize)
    check_batch_size(batch_size)
    dtype = as_dtype(dtype)
    idx = split_indices(
        len(x),
        seed=seed,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        batch_size=batch_size,
        where=where,
    )
    locate_x = locate_x or (lambda index: f"x[{', '.join(map(str, index))}]")
    _check_fits(x, dtype, where, locate_x, idx["train"] if standardize else None)
    if task == "regression":
        _check_fits(
            y, dtype, where, lambda index: (locate_y or (lambda i: f"y[{i}]"))(index[0]), None
        )
    parts = {k: (x[i], y[i]) if len(i) else None for k, i in idx.items()}
    return make_splits(
        name,
        parts,
        task=task,
        num_classes=num_classes,
        standardize=standardize,
        dtype=dtype,
        info={**info, "split_indices": idx},
    )


def _check_fits(
    a: np.ndarray,
    dtype: torch.dtype,
    where: str,
    locate: Callable[[tuple[int, ...]], str],
    train: np.ndarray | None,
) -> None:
    """Raise ``ValueError`` for the first entry of the float64 array ``a`` that overflows
    ``dtype``; with ``train`` (standardization on), for an entry whose feature cannot be
    standardized (its variance overflows float64) or whose standardized value overflows."""
    limit = float(torch.finfo(dtype).max)
    name = str(dtype).removeprefix("torch.")
    values = a
    if train is not None:
        with np.errstate(over="ignore", invalid="ignore"):
            std = a[train].std(axis=0)
        wide = np.argwhere(~np.isfinite(std))
        if len(wide):
            column = (slice(None), *map(int, wide[0]))
            row = int(train[np.argmax(np.abs(a[train][column]))])
            index = (row, *map(int, wide[0]))
            raise ValueError(
                f"{where}: {locate(index)}: value {float(a[index]):g} is too large "
                "to standardize (its feature's variance overflows float64); "
                "rescale that feature"
            )
        values = (a - a[train].mean(axis=0)) / np.where(std > 0, std, 1.0)
    bad = np.argwhere(~(np.abs(values) <= limit))
    if len(bad):
        index = tuple(int(i) for i in bad[0])
        raise ValueError(
            f"{where}: {locate(index)}: value {float(a[index]):g} overflows {name} "
            f"(largest {limit:.4g}); rescale it, or use dtype float64"
        )


# --------------------------------------------------------------------------- labels


def encode_labels(
    raw: np.ndarray, task: str | None, where: str, locate: Callable[[int], str]
) -> tuple[np.ndarray, str, int, list[Any] | None]:
    """Decide the task and encode labels: ``(y, task, num_classes, classes)``.

    ``raw`` is either numeric (float64, shape (N,) or (N, k), already checked finite) or an array
    of strings (class names). ``locate(i)`` names row i in error messages.
    """
    if raw.ndim == 2 and raw.shape[1] == 1:
        raw = raw[:, 0]  # one label per example, stored as a column
    if raw.dtype.kind in "US":
        if raw.ndim != 1:
            raise ValueError(
                f"{where}: class-name labels must be one per example, got shape {tuple(raw.shape)}"
            )
        if task == "regression":
            raise ValueError(
                f"{where}: {locate(0)}: non-numeric label {str(raw[0])!r} with task='regression'"
            )
        classes, y = np.unique(raw, return_inverse=True)
        return y.reshape(-1), "classification", len(classes), [str(c) for c in classes]
    integral = raw == np.round(raw)
    if task is None:
        task = "classification" if raw.ndim == 1 and bool(integral.all()) else "regression"
    if task == "regression":
        return raw.reshape(len(raw), -1), task, 0, None
    if raw.ndim != 1:
        raise ValueError(
            f"{where}: classification labels must be one value per example, got shape "
            f"{tuple(raw.shape)}"
        )
    if not integral.all():
        i = int(np.argmin(integral))
        raise ValueError(
            f"{where}: {locate(i)}: non-integer label {float(raw[i])} with task='classification'"
        )
    classes, y = np.unique(raw.astype(np.int64), return_inverse=True)
    return y.reshape(-1), task, len(classes), [int(c) for c in classes]
