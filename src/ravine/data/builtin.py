"""The built-in datasets ``mnist1d``, ``digits`` and ``quadratic``, and the cache directory.

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

Each ``load_*`` function is the source behind :func:`ravine.data.load` for its name.
"""

from __future__ import annotations

import importlib.metadata
import math
import os
import random
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ravine._io import write_atomic
from ravine.data.splits import (
    Splits,
    as_dtype,
    check_batch_size,
    check_bool,
    check_fraction,
    make_splits,
    split_arrays,
    split_indices,
)

__all__ = ["cache_dir", "load_digits", "load_mnist1d", "load_quadratic", "quadratic_problem"]


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
        # Readers see either no file or the complete one. Processes may fill a shared cache at
        # the same time: write_atomic gives each writer its own temporary file, created with
        # the default permissions (umask), so the cache stays readable by the others.
        write_atomic(path, lambda f: np.savez(f, **arrays), binary=True)
    except OSError as error:
        warnings.warn(f"could not cache mnist1d at {path}: {error}", RuntimeWarning, stacklevel=4)
    return arrays, path


def load_mnist1d(
    *,
    seed: int,
    val_fraction: float,
    standardize: bool = False,
    batch_size: int | None = None,
    dtype: Any = torch.float32,
) -> Splits:
    """MNIST-1D: the 4000 training signals split into train / val, and the standard test set."""
    check_bool("standardize", standardize)
    check_batch_size(batch_size)
    dtype = as_dtype(dtype)
    arrays, path = _mnist1d_arrays()
    idx = split_indices(
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
    return make_splits(
        "mnist1d",
        parts,
        task="classification",
        num_classes=int(arrays["y"].max()) + 1,
        standardize=standardize,
        dtype=dtype,
        info={"cache_path": str(path), "split_indices": idx},
    )


def load_digits(
    *,
    seed: int,
    val_fraction: float,
    as_images: bool = False,
    test_fraction: float = 0.2,
    standardize: bool = False,
    batch_size: int | None = None,
    dtype: Any = torch.float32,
) -> Splits:
    """scikit-learn's 8x8 digits in [0, 1], flat or as ``(1, 8, 8)`` images, split at random."""
    # Imported here so that `import ravine` does not pay for scikit-learn unless digits are used.
    from sklearn import datasets as sklearn_datasets

    check_bool("as_images", as_images)
    digits = sklearn_datasets.load_digits()
    x = digits.data / 16.0  # pixel intensities are 0..16
    if as_images:
        x = x.reshape(-1, 1, 8, 8)
    return split_arrays(
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


def load_quadratic(
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
    check_fraction("test_fraction", test_fraction, allow_zero=False)
    check_batch_size(batch_size)
    dtype = as_dtype(dtype)
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
    return make_splits(
        "quadratic",
        parts,
        task="regression",
        num_classes=0,
        standardize=False,
        dtype=dtype,
        info=info,
    )
