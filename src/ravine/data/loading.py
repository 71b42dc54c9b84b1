"""The entry point :func:`load` and the registry of data sources behind it.

``load(name_or_path, seed=..., val_fraction=..., **options)`` returns a :class:`Splits` of train /
validation / test datasets. A name is looked up in :data:`SOURCES` (the built-in datasets of
:mod:`ravine.data.builtin`, and ``image-folder`` of :mod:`ravine.data.image_folder`); anything
else is a path, loaded by the file format its suffix names in :data:`FILE_FORMATS`
(:mod:`ravine.data.formats`). A source is a function taking the keyword-only arguments ``seed``,
``val_fraction`` (a file format also the path, positionally, and the name to use in messages) and
its own options, which ``load`` checks against its signature: unknown options and missing
required ones (those without a default) are errors.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ravine._checks import suggest
from ravine.data.builtin import load_digits, load_mnist1d, load_quadratic
from ravine.data.formats import load_csv, load_npz
from ravine.data.image_folder import load_image_folder
from ravine.data.splits import Splits, check_fraction

__all__ = ["FILE_FORMATS", "SOURCES", "load", "names"]

SOURCES: dict[str, Callable[..., Splits]] = {
    "mnist1d": load_mnist1d,
    "digits": load_digits,
    "quadratic": load_quadratic,
    "image-folder": load_image_folder,
}
FILE_FORMATS: dict[str, Callable[..., Splits]] = {".csv": load_csv, ".npz": load_npz}


def names() -> list[str]:
    """Names that :func:`load` accepts in place of a path: the built-in datasets, image-folder."""
    return list(SOURCES)


def _check_options(loader: Callable[..., Splits], kw: dict[str, Any], where: str) -> None:
    options = [
        p
        for p in inspect.signature(loader).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in ("seed", "val_fraction")
    ]
    allowed = [p.name for p in options]
    required = [p.name for p in options if p.default is inspect.Parameter.empty]
    for key in required:
        if key not in kw:
            raise ValueError(f"{where}: missing option {key!r} (required: {', '.join(required)})")
    for key in kw:
        if key not in allowed:
            raise ValueError(
                f"{where}: unknown option {key!r}{suggest(key, allowed)} "
                f"(valid: {', '.join(allowed)})"
            )


def load(
    name_or_path: str | os.PathLike[str], *, seed: int = 0, val_fraction: float = 0.1, **kw: Any
) -> Splits:
    """Load a dataset as train / validation / test splits.

    The sources are described in :mod:`ravine.data.builtin`, :mod:`ravine.data.formats` and
    :mod:`ravine.data.image_folder`; splitting, labels and standardization in
    :mod:`ravine.data.splits`.

    Args:
        name_or_path: ``"mnist1d"``, ``"digits"``, ``"quadratic"``, ``"image-folder"``, or a path
            to a ``.csv`` / ``.npz`` file (a source's name wins over a file of the same name).
        seed: seed of the random split (and of the quadratic problem's data).
        val_fraction: fraction of the non-test examples held out for validation, in [0, 1);
            0 gives ``splits.val = None``.
        **kw: source options. mnist1d: ``standardize``, ``batch_size``, ``dtype``. digits:
            ``as_images``, ``test_fraction``, ``standardize``, ``batch_size``, ``dtype``. quadratic:
            ``kappa``, ``dim``, ``n``, ``noise``, ``test_fraction``, ``batch_size``, ``dtype``.
            CSV: ``label``, ``task``, ``test_fraction``, ``standardize``, ``batch_size``, ``dtype``;
            NPZ: the same without ``label``. image-folder: ``root`` and ``size`` (required),
            ``grayscale``, ``test_fraction``, ``batch_size``, ``dtype``.

    Raises:
        ValueError: unknown name or option, bad option value, or malformed file; file errors name
            the file, the row (line number, header = row 1) and column, and the problem.
    """
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    check_fraction("val_fraction", val_fraction, allow_zero=True)
    if isinstance(name_or_path, str) and name_or_path in SOURCES:
        loader = SOURCES[name_or_path]
        _check_options(loader, kw, name_or_path)
        return loader(seed=seed, val_fraction=val_fraction, **kw)
    path = Path(name_or_path)
    where = str(name_or_path)
    suffix = path.suffix.lower()
    if suffix in FILE_FORMATS:
        loader = FILE_FORMATS[suffix]
        _check_options(loader, kw, where)
        return loader(path, where, seed=seed, val_fraction=val_fraction, **kw)
    formats = " or ".join(FILE_FORMATS)
    if path.exists():
        raise ValueError(f"{where}: unsupported file type {suffix!r} (expected {formats})")
    raise ValueError(
        f"unknown dataset {where!r}{suggest(where, SOURCES)} (valid: {', '.join(SOURCES)}, "
        f"or a path to a {formats} file)"
    )
