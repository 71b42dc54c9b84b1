"""Datasets: in-memory :class:`ArrayDataset`, :func:`iterate`, and the loaders behind :func:`load`.

``load(name_or_path, seed=..., val_fraction=...)`` returns a :class:`Splits` of train / validation /
test :class:`ArrayDataset` s. Built-in sources:

``mnist1d``
    The MNIST-1D benchmark (Greydanus 2020), generated offline by the ``mnist1d`` package with
    its standard arguments: 5000 signals of length 40 in 10 classes, the first 4000 for training
    and the last 1000 as the standard test set. The validation split is carved from the 4000 at
    random (``seed``). The package reseeds Python's and NumPy's global generators; ravine restores
    both afterwards, so loading never changes the caller's random streams. The generated arrays
    are cached in :func:`cache_dir` (written atomically: temporary file, then rename).
``digits``
    scikit-learn's bundled 8x8 handwritten digits (1797 images, 10 classes), scaled to [0, 1] by
    dividing by 16; flat ``(N, 64)`` vectors for MLPs or ``(N, 1, 8, 8)`` images for CNNs
    (``as_images=True``).
``quadratic``
    Linear regression whose least-squares Hessian has condition number exactly ``kappa``
    (``kappa=100``, ``dim=20``, ``n=1000``, ``noise=0``; see :func:`quadratic_problem`). The ``n``
    training rows have exactly that Hessian; ``round(val_fraction·n)`` validation and
    ``round(test_fraction·n)`` test rows are fresh draws from the population with the same second
    moment, x ~ N(0, H). Targets have shape (N, 1).

User data:

``*.csv``
    A header row, numeric feature columns and a label column (``label="label"``), parsed with
    :mod:`csv`. Error messages give row numbers as line numbers of the file, so the header is
    row 1 and the first data row is row 2; blank lines are skipped.
``*.npz``
    Arrays ``x`` (N, ...) and ``y`` (N,) or (N, k); error messages locate entries with 0-based
    array indices, e.g. ``x[12, 3]``.

Labels: class names (strings) or integer-valued numbers make a classification problem, labels
remapped to ``0..K-1`` in sorted order (the original labels are ``splits.info["classes"]``); any
other numbers make a regression problem with float targets of shape (N, k) (k = 1 for a single
column). ``task="classification"`` or ``"regression"`` overrides the guess.

Splitting: ``test_fraction`` (default 0.2) of the examples go to the test set and ``val_fraction``
of the rest to the validation set, by a seeded random permutation (not stratified); each split
keeps the original row order, and ``splits.info["split_indices"]`` says which rows went where.
``standardize=True`` rescales every feature to zero mean and unit variance with the mean and
standard deviation of the *training split only* (features constant on it are only centred), the
same transformation then being applied to validation and test; the statistics are in ``info``.
``batch_size=m`` checks that the training split holds at least one minibatch.
"""

from __future__ import annotations

import contextlib
import csv
import difflib
import importlib.metadata
import inspect
import math
import os
import random
import uuid
import warnings
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

__all__ = [
    "ArrayDataset",
    "Splits",
    "cache_dir",
    "iterate",
    "load",
    "names",
    "quadratic_problem",
]


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


@dataclass
class Splits:
    """Train / validation / test splits of one problem.

    Attributes:
        train, val, test: the splits; ``val`` is ``None`` when ``val_fraction == 0``.
        num_features: features per example (``int``), or the shape of one example (``tuple``) for
            multi-dimensional inputs such as ``(1, 8, 8)`` images.
        num_classes: number of classes K (labels ``0..K-1``); 0 for regression.
        task: ``"classification"`` or ``"regression"``.
        name: the dataset name, or the file name for user data.
        info: source-specific facts, e.g. ``classes`` (original labels), ``split_indices``,
            standardization ``mean``/``std``, the quadratic problem's ``hessian_eigenvalues``.
    """

    train: ArrayDataset
    val: ArrayDataset | None
    test: ArrayDataset
    num_features: int | tuple[int, ...]
    num_classes: int
    task: str
    name: str
    info: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- validation helpers


def _closest(value: str, options: Iterable[str]) -> str:
    close = difflib.get_close_matches(str(value), list(options), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _check_fraction(name: str, value: Any, *, allow_zero: bool) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    low = 0 <= value if ok and allow_zero else ok and 0 < value
    if not (ok and low and value < 1):
        interval = "[0, 1)" if allow_zero else "(0, 1)"
        raise ValueError(f"{name} must be a number in {interval}, got {value!r}")


def _check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")


def _check_batch_size(batch_size: Any) -> None:
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


def _as_dtype(dtype: Any) -> torch.dtype:
    if isinstance(dtype, torch.dtype) and dtype.is_floating_point:
        return dtype
    if isinstance(dtype, str) and dtype in _DTYPES:
        return _DTYPES[dtype]
    raise ValueError(
        f"dtype must be a floating torch.dtype or one of {', '.join(_DTYPES)}, got {dtype!r}"
        f"{_closest(str(dtype), _DTYPES)}"
    )


def _check_task(task: Any) -> None:
    if task not in (None, "classification", "regression"):
        raise ValueError(
            f"task must be None, 'classification' or 'regression', got {task!r}"
            f"{_closest(str(task), ['classification', 'regression'])}"
        )


# --------------------------------------------------------------------------- splitting


def _split_indices(
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


def _finish(
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


def _split_and_finish(
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
) -> Splits:
    _check_fraction("test_fraction", test_fraction, allow_zero=False)
    _check_bool("standardize", standardize)
    _check_batch_size(batch_size)
    dtype = _as_dtype(dtype)
    idx = _split_indices(
        len(x),
        seed=seed,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        batch_size=batch_size,
        where=where,
    )
    parts = {k: (x[i], y[i]) if len(i) else None for k, i in idx.items()}
    return _finish(
        name,
        parts,
        task=task,
        num_classes=num_classes,
        standardize=standardize,
        dtype=dtype,
        info={**info, "split_indices": idx},
    )


# --------------------------------------------------------------------------- labels


def _encode_labels(
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


# --------------------------------------------------------------------------- built-in problems


def cache_dir() -> Path:
    """Where generated datasets are cached: ``$RAVINE_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/ravine``, else ``~/.cache/ravine``."""
    if os.environ.get("RAVINE_CACHE_DIR"):
        return Path(os.environ["RAVINE_CACHE_DIR"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "ravine"
    return Path.home() / ".cache" / "ravine"


_MNIST1D_ARRAYS = ("x", "y", "x_test", "y_test")


def _generate_mnist1d() -> dict[str, np.ndarray]:
    """Run the package's own generator with its standard arguments, leaving global RNGs as found."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        from mnist1d.data import get_dataset_args, make_dataset

        data = make_dataset(get_dataset_args())
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
    return {k: np.asarray(data[k]) for k in _MNIST1D_ARRAYS}


def _write_atomic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write an .npz so that readers see either no file or the complete one (tmp + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # A unique name per writer (so concurrent writers never share one), created with the
    # default permissions (umask) rather than mkstemp's owner-only ones, so shared caches work.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "xb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _mnist1d_arrays() -> tuple[dict[str, np.ndarray], Path]:
    try:
        version = importlib.metadata.version("mnist1d")
    except importlib.metadata.PackageNotFoundError:
        raise ValueError("mnist1d: the 'mnist1d' package is not installed") from None
    # The standard arguments are fixed per package version, so the version is the cache key;
    # checking the cache this way avoids importing the package (and matplotlib) on a hit.
    path = cache_dir() / f"mnist1d-{version}.npz"
    if path.exists():
        try:
            with np.load(path, allow_pickle=False) as cached:
                return {k: cached[k] for k in _MNIST1D_ARRAYS}, path
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            pass  # an unreadable cache file (e.g. damaged by hand) is regenerated below
    arrays = _generate_mnist1d()
    try:
        _write_atomic(path, arrays)
    except OSError as error:
        warnings.warn(f"could not cache mnist1d at {path}: {error}", RuntimeWarning, stacklevel=4)
    return arrays, path


def _load_mnist1d(
    *,
    seed: int,
    val_fraction: float,
    standardize: bool = False,
    batch_size: int | None = None,
    dtype: Any = torch.float32,
) -> Splits:
    _check_bool("standardize", standardize)
    _check_batch_size(batch_size)
    dtype = _as_dtype(dtype)
    arrays, path = _mnist1d_arrays()
    idx = _split_indices(
        len(arrays["x"]),
        seed=seed,
        val_fraction=val_fraction,
        test_fraction=0.0,
        batch_size=batch_size,
        where="mnist1d",
    )
    idx["test"] = np.arange(len(arrays["x_test"]))  # the standard test set, whole
    parts = {
        "train": (arrays["x"][idx["train"]], arrays["y"][idx["train"]]),
        "val": (arrays["x"][idx["val"]], arrays["y"][idx["val"]]) if len(idx["val"]) else None,
        "test": (arrays["x_test"], arrays["y_test"]),
    }
    return _finish(
        "mnist1d",
        parts,
        task="classification",
        num_classes=int(arrays["y"].max()) + 1,
        standardize=standardize,
        dtype=dtype,
        info={"cache_path": str(path), "split_indices": idx},
    )


def _load_digits(
    *,
    seed: int,
    val_fraction: float,
    as_images: bool = False,
    test_fraction: float = 0.2,
    standardize: bool = False,
    batch_size: int | None = None,
    dtype: Any = torch.float32,
) -> Splits:
    from sklearn.datasets import load_digits

    _check_bool("as_images", as_images)
    digits = load_digits()
    x = digits.data / 16.0  # pixel intensities are 0..16
    if as_images:
        x = x.reshape(-1, 1, 8, 8)
    return _split_and_finish(
        "digits",
        x,
        digits.target,
        task="classification",
        num_classes=10,
        seed=seed,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        standardize=standardize,
        batch_size=batch_size,
        dtype=dtype,
        info={},
        where="digits",
    )


def quadratic_problem(
    n: int, dim: int, kappa: float, *, noise: float = 0.0, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    r"""Least-squares data ``(X, y, info)`` with a Hessian of condition number exactly ``kappa``.

    With :math:`X = \sqrt{n}\, U \operatorname{diag}(\sqrt{\lambda}) V^\top`, where U (n x dim)
    has orthonormal columns and V (dim x dim) is orthogonal (both from QR of Gaussian matrices),

    .. math:: H = \frac{1}{n} X^\top X = V \operatorname{diag}(\lambda) V^\top,

    the Hessian of :math:`L(w) = \frac{1}{2n}\lVert Xw - y\rVert^2`. The eigenvalues are spaced
    geometrically from :math:`\lambda_1 = 1` down to :math:`\lambda_{dim} = 1/\kappa`, so
    :math:`\kappa = \lambda_{max}/\lambda_{min}`. (The mean squared error without the 1/2, as in
    ``torch.nn.MSELoss``, has Hessian 2H: same κ.) The targets are
    :math:`y = X w^* + \sigma \varepsilon` with :math:`w^* \sim N(0, I/\mathit{dim})`,
    :math:`\varepsilon \sim N(0, I)`. A linear model *without* bias has exactly this Hessian.

    ``info`` holds ``hessian_eigenvalues`` (descending), ``kappa``, ``w_star``, ``w_opt`` (the
    least-squares minimizer, equal to ``w_star`` when ``noise == 0``), ``basis`` (V) and ``noise``.
    """
    if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
        raise ValueError(f"dim must be an integer >= 1, got {dim!r}")
    if not isinstance(n, int) or isinstance(n, bool) or n < dim:
        raise ValueError(f"n must be an integer >= dim = {dim} (X must have full rank), got {n!r}")
    if (
        not isinstance(kappa, (int, float))
        or isinstance(kappa, bool)
        or not (math.isfinite(kappa) and kappa >= 1)
    ):
        raise ValueError(f"kappa must be a finite number >= 1, got {kappa!r}")
    if dim == 1 and kappa != 1:
        raise ValueError(f"kappa must be 1 when dim == 1 (one eigenvalue), got kappa={kappa!r}")
    if (
        not isinstance(noise, (int, float))
        or isinstance(noise, bool)
        or not (math.isfinite(noise) and noise >= 0)
    ):
        raise ValueError(f"noise must be a finite number >= 0, got {noise!r}")
    rng = np.random.default_rng(seed)
    exponents = np.arange(dim) / (dim - 1) if dim > 1 else np.zeros(1)
    eigenvalues = float(kappa) ** -exponents
    basis, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    left, _ = np.linalg.qr(rng.standard_normal((n, dim)))
    x = math.sqrt(n) * (left * np.sqrt(eigenvalues)) @ basis.T
    w_star = rng.standard_normal(dim) / math.sqrt(dim)
    y = x @ w_star + noise * rng.standard_normal(n)
    w_opt = np.linalg.lstsq(x, y, rcond=None)[0]
    info = {
        "hessian_eigenvalues": eigenvalues,
        "kappa": float(eigenvalues[0] / eigenvalues[-1]),
        "w_star": w_star,
        "w_opt": w_opt,
        "basis": basis,
        "noise": float(noise),
    }
    return x, y, info


def _load_quadratic(
    *,
    seed: int,
    val_fraction: float,
    kappa: float = 100.0,
    dim: int = 20,
    n: int = 1000,
    noise: float = 0.0,
    test_fraction: float = 0.2,
    batch_size: int | None = None,
    dtype: Any = torch.float32,
) -> Splits:
    """Training rows from :func:`quadratic_problem`; validation and test rows from x ~ N(0, H)."""
    _check_fraction("test_fraction", test_fraction, allow_zero=False)
    _check_batch_size(batch_size)
    dtype = _as_dtype(dtype)
    if batch_size is not None and isinstance(n, int) and n < batch_size:
        raise ValueError(
            f"quadratic: the training split has n={n} examples, fewer than one batch "
            f"(batch_size={batch_size})"
        )
    x, y, info = quadratic_problem(n, dim, kappa, noise=noise, seed=seed)
    # A separate stream, so the training data do not depend on the val/test sizes.
    rng = np.random.default_rng([seed, 1])
    root_h = np.sqrt(info["hessian_eigenvalues"]) * info["basis"]  # V diag(√λ)

    def fresh(rows: int) -> tuple[np.ndarray, np.ndarray] | None:
        if rows == 0:
            return None
        xs = rng.standard_normal((rows, dim)) @ root_h.T
        return xs, (xs @ info["w_star"] + noise * rng.standard_normal(rows))[:, None]

    parts = {
        "train": (x, y[:, None]),
        "val": fresh(max(1, round(val_fraction * n)) if val_fraction > 0 else 0),
        "test": fresh(max(1, round(test_fraction * n))),
    }
    return _finish(
        "quadratic",
        parts,
        task="regression",
        num_classes=0,
        standardize=False,
        dtype=dtype,
        info=info,
    )


# --------------------------------------------------------------------------- user files


def _open_text(path: Path, where: str) -> Any:
    try:
        return open(path, newline="", encoding="utf-8-sig")
    except FileNotFoundError:
        raise ValueError(f"{where}: file not found") from None
    except OSError as error:
        raise ValueError(f"{where}: cannot read file ({error.strerror})") from None


def _read_csv_rows(path: Path, where: str) -> tuple[list[str], list[list[str]], list[int]]:
    """Header, data rows and their line numbers; ragged rows rejected, blank lines skipped."""
    with _open_text(path, where) as f:
        reader = csv.reader(f)
        rows: list[list[str]] = []
        lines: list[int] = []
        try:
            header = next(reader, None)
            if not header:
                raise ValueError(f"{where}: row 1: expected a header row, found an empty line")
            for record in reader:
                if not record:
                    continue
                if len(record) != len(header):
                    raise ValueError(
                        f"{where}: row {reader.line_num}: has {len(record)} cells, expected "
                        f"{len(header)} (as many as the header)"
                    )
                rows.append(record)
                lines.append(reader.line_num)
        except csv.Error as error:
            raise ValueError(f"{where}: row {reader.line_num}: malformed CSV ({error})") from None
        except UnicodeDecodeError as error:
            raise ValueError(f"{where}: not a UTF-8 text file ({error.reason})") from None
    return [name.strip() for name in header], rows, lines


def _parse_cell(cell: str, where: str, line: int, column: str) -> float:
    text = cell.strip()
    if not text:
        raise ValueError(f"{where}: row {line}, column {column!r}: missing value (empty cell)")
    try:
        value = float(text)
    except ValueError:
        raise ValueError(
            f"{where}: row {line}, column {column!r}: non-numeric value {cell!r}"
        ) from None
    if not math.isfinite(value):
        raise ValueError(f"{where}: row {line}, column {column!r}: non-finite value {cell!r}")
    return value


def _parse_numeric(
    cells: list[list[str]], columns: list[str], lines: list[int], where: str
) -> np.ndarray:
    """Cells -> float64 array; on any bad cell, the first one (in file order) is reported."""
    try:
        values = np.array(cells, dtype=np.float64).reshape(len(cells), len(columns))
        if np.isfinite(values).all():
            return values
    except ValueError:
        pass  # located precisely by the cell-by-cell pass below
    return np.array(
        [
            [
                _parse_cell(cell, where, line, column)
                for cell, column in zip(row, columns, strict=True)
            ]
            for row, line in zip(cells, lines, strict=True)
        ]
    )


def _load_csv(
    path: Path,
    where: str,
    *,
    seed: int,
    val_fraction: float,
    label: str = "label",
    task: str | None = None,
    test_fraction: float = 0.2,
    standardize: bool = False,
    batch_size: int | None = None,
    dtype: Any = torch.float32,
) -> Splits:
    _check_task(task)
    header, rows, lines = _read_csv_rows(path, where)
    for j, column in enumerate(header):
        if not column:
            raise ValueError(f"{where}: row 1, column {j + 1}: empty column name")
        if column in header[:j]:
            raise ValueError(f"{where}: row 1: duplicate column name {column!r}")
    if label not in header:
        raise ValueError(
            f"{where}: no label column {label!r}{_closest(label, header)} (the first row must be a "
            f"header; its columns are {', '.join(map(repr, header))}; choose one with label=...)"
        )
    if len(header) == 1:
        raise ValueError(f"{where}: no feature columns besides the label column {label!r}")
    if not rows:
        raise ValueError(f"{where}: no data rows after the header")
    j_label = header.index(label)
    features = [c for c in header if c != label]
    x = _parse_numeric([r[:j_label] + r[j_label + 1 :] for r in rows], features, lines, where)
    label_cells = [r[j_label] for r in rows]
    # Labels are numbers or class names. If any label is a number, all must be: a stray word
    # among numbers is a typo to report, not a reason to reinterpret the column as names.
    if task == "regression" or any(_is_number(c) for c in label_cells):
        raw = _parse_numeric([[c] for c in label_cells], [label], lines, where)[:, 0]
    else:
        for cell, line in zip(label_cells, lines, strict=True):
            if not cell.strip():
                raise ValueError(
                    f"{where}: row {line}, column {label!r}: missing value (empty cell)"
                )
        raw = np.array([c.strip() for c in label_cells])
    y, task, num_classes, classes = _encode_labels(
        raw, task, where, lambda i: f"row {lines[i]}, column {label!r}"
    )
    return _split_and_finish(
        Path(path).name,
        x,
        y,
        task=task,
        num_classes=num_classes,
        seed=seed,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        standardize=standardize,
        batch_size=batch_size,
        dtype=dtype,
        info={"classes": classes, "label": label, "features": features},
        where=where,
    )


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _load_npz(
    path: Path,
    where: str,
    *,
    seed: int,
    val_fraction: float,
    task: str | None = None,
    test_fraction: float = 0.2,
    standardize: bool = False,
    batch_size: int | None = None,
    dtype: Any = torch.float32,
) -> Splits:
    _check_task(task)
    try:
        archive = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise ValueError(f"{where}: file not found") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise ValueError(f"{where}: not a readable .npz archive ({error})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError(f"{where}: not an .npz archive (it holds a single array); use np.savez")
    arrays: dict[str, np.ndarray] = {}
    with archive:
        for key in ("x", "y"):
            if key not in archive.files:
                present = ", ".join(map(repr, archive.files)) or "none"
                raise ValueError(f"{where}: missing array {key!r} (arrays present: {present})")
            try:
                arrays[key] = archive[key]
            except ValueError:
                raise ValueError(
                    f"{where}: array {key!r} is an object array (ragged rows or mixed types?); "
                    f"store a rectangular numeric array"
                ) from None
    x, y = arrays["x"], arrays["y"]
    if x.ndim == 0 or y.ndim == 0:
        raise ValueError(f"{where}: x and y must have one row per example, got scalar arrays")
    if x.ndim == 1:
        x = x[:, None]
    if len(x) != len(y):
        raise ValueError(f"{where}: x has {len(x)} rows but y has {len(y)}")
    if len(x) == 0:
        raise ValueError(f"{where}: x and y have no rows")
    if x.dtype.kind not in "biuf":
        raise ValueError(f"{where}: array 'x' must be numeric, got dtype {x.dtype}")
    x = x.astype(np.float64)
    _check_finite(x, "x", where)
    if y.dtype.kind in "biuf":
        y = y.astype(np.float64)
        _check_finite(y, "y", where)
    elif y.dtype.kind not in "US":
        raise ValueError(f"{where}: array 'y' must be numeric or strings, got dtype {y.dtype}")
    if y.ndim > 2:
        raise ValueError(f"{where}: y must have shape (N,) or (N, k), got {tuple(y.shape)}")
    y, task, num_classes, classes = _encode_labels(y, task, where, lambda i: f"y[{i}]")
    return _split_and_finish(
        Path(path).name,
        x,
        y,
        task=task,
        num_classes=num_classes,
        seed=seed,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        standardize=standardize,
        batch_size=batch_size,
        dtype=dtype,
        info={"classes": classes},
        where=where,
    )


def _check_finite(a: np.ndarray, key: str, where: str) -> None:
    bad = np.argwhere(~np.isfinite(a))
    if len(bad):
        index = tuple(int(i) for i in bad[0])
        position = ", ".join(map(str, index))
        raise ValueError(f"{where}: {key}[{position}]: non-finite value {float(a[index])}")


# --------------------------------------------------------------------------- entry point

_BUILTIN: dict[str, Callable[..., Splits]] = {
    "mnist1d": _load_mnist1d,
    "digits": _load_digits,
    "quadratic": _load_quadratic,
}
_FILE_LOADERS: dict[str, Callable[..., Splits]] = {".csv": _load_csv, ".npz": _load_npz}


def names() -> list[str]:
    """Names of the built-in datasets."""
    return list(_BUILTIN)


def _check_options(loader: Callable[..., Splits], kw: dict[str, Any], where: str) -> None:
    allowed = [
        p.name
        for p in inspect.signature(loader).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in ("seed", "val_fraction")
    ]
    for key in kw:
        if key not in allowed:
            raise ValueError(
                f"{where}: unknown option {key!r}{_closest(key, allowed)} "
                f"(valid: {', '.join(allowed)})"
            )


def load(
    name_or_path: str | os.PathLike[str], *, seed: int = 0, val_fraction: float = 0.1, **kw: Any
) -> Splits:
    """Load a dataset as train / validation / test splits (see the module docstring).

    Args:
        name_or_path: ``"mnist1d"``, ``"digits"``, ``"quadratic"``, or a path to a ``.csv`` /
            ``.npz`` file (a built-in name wins over a file of the same name).
        seed: seed of the random split (and of the quadratic problem's data).
        val_fraction: fraction of the non-test examples held out for validation, in [0, 1);
            0 gives ``splits.val = None``.
        **kw: source options. mnist1d: ``standardize``, ``batch_size``, ``dtype``. digits:
            ``as_images``, ``test_fraction``, ``standardize``, ``batch_size``, ``dtype``. quadratic:
            ``kappa``, ``dim``, ``n``, ``noise``, ``test_fraction``, ``batch_size``, ``dtype``.
            CSV: ``label``, ``task``, ``test_fraction``, ``standardize``, ``batch_size``, ``dtype``;
            NPZ: the same without ``label``.

    Raises:
        ValueError: unknown name or option, bad option value, or malformed file; file errors name
            the file, the row (line number, header = row 1) and column, and the problem.
    """
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    _check_fraction("val_fraction", val_fraction, allow_zero=True)
    if isinstance(name_or_path, str) and name_or_path in _BUILTIN:
        loader = _BUILTIN[name_or_path]
        _check_options(loader, kw, name_or_path)
        return loader(seed=seed, val_fraction=val_fraction, **kw)
    path = Path(name_or_path)
    where = str(name_or_path)
    suffix = path.suffix.lower()
    if suffix in _FILE_LOADERS:
        loader = _FILE_LOADERS[suffix]
        _check_options(loader, kw, where)
        return loader(path, where, seed=seed, val_fraction=val_fraction, **kw)
    if path.exists():
        raise ValueError(f"{where}: unsupported file type {suffix!r} (expected .csv or .npz)")
    raise ValueError(
        f"unknown dataset {where!r}{_closest(where, _BUILTIN)} (valid: {', '.join(_BUILTIN)}, "
        f"or a path to a .csv or .npz file)"
    )
