"""User data files: ``*.csv`` and ``*.npz``, each loaded as in-memory :class:`Splits`.

``*.csv``
    A header row, numeric feature columns and a label column (``label="label"``), parsed with
    :mod:`csv`. Error messages give row numbers as line numbers of the file, so the header is
    row 1 and the first data row is row 2; blank lines are skipped.
``*.npz``
    Arrays ``x`` (N, ...) and ``y`` (N,) or (N, k); error messages locate entries with 0-based
    array indices, e.g. ``x[12, 3]``.

Labels are encoded, and the rows split and optionally standardized, as described in
:mod:`ravine.data.splits`.
"""

from __future__ import annotations

import csv
import math
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ravine._checks import shown, suggest
from ravine.data.splits import Splits, check_task, encode_labels, split_arrays

__all__ = ["load_csv", "load_npz"]


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


def load_csv(
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
    """A CSV file with a header row: numeric feature columns and the column ``label``."""
    check_task(task)
    header, rows, lines = _read_csv_rows(path, where)
    for j, column in enumerate(header):
        if not column:
            raise ValueError(f"{where}: row 1, column {j + 1}: empty column name")
        if column in header[:j]:
            raise ValueError(f"{where}: row 1: duplicate column name {column!r}")
    if label not in header:
        raise ValueError(
            f"{where}: no label column {label!r}{suggest(label, header)} (the first row must be a "
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
    y, task, num_classes, classes = encode_labels(
        raw, task, where, lambda i: f"row {lines[i]}, column {label!r}"
    )
    return split_arrays(
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
        locate_x=lambda index: f"row {lines[index[0]]}, column {features[index[1]]!r}",
        locate_y=lambda i: f"row {lines[i]}, column {label!r}",
    )


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def load_npz(
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
    """An ``.npz`` archive holding the arrays ``x`` (N, ...) and ``y`` (N,) or (N, k)."""
    check_task(task)
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
            except (zipfile.BadZipFile, zlib.error, NotImplementedError, OSError, EOFError,
                    RuntimeError) as exc:
                raise ValueError(
                    f"{where}: array {key!r} cannot be read, the file is damaged "
                    f"({type(exc).__name__}: {shown(str(exc))})"
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
    y, task, num_classes, classes = encode_labels(y, task, where, lambda i: f"y[{i}]")
    return split_arrays(
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
