"""Where a run's records go: one small :class:`Logger` interface and three writers.

A record is a flat ``dict`` with a ``"kind"`` key -- ``"step"`` (every ``log_every`` optimizer
steps: ``step``, ``epoch``, ``loss``, ``lr``, ``grad_norm``, ...), ``"epoch"`` (after each epoch:
``epoch``, ``step``, ``train_loss``, ``val_loss``, ...) or ``"summary"`` (once, at the end) --
plus numbers, booleans, strings or ``None``.

* :class:`JsonlLogger` -- ``metrics.jsonl``, every record, one JSON object a line. Always on when
  a run has a directory; its byte :meth:`~JsonlLogger.offset` goes into each checkpoint so that
  a resumed run continues the file exactly.
* :class:`CsvLogger` -- ``metrics.csv``, the epoch records as a table for spreadsheets and pandas.
* :class:`TensorBoardLogger` -- TensorBoard event files (optional extra ``ravine[tensorboard]``).

:func:`make_loggers` turns the user's option (``loggers=["csv", "tensorboard"]``, or ready
objects with ``log``/``flush``/``close``) into the list of loggers a run writes to.
"""

from __future__ import annotations

import csv
import io
import json
import math
import numbers
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol, runtime_checkable

from ravine._checks import suggest
from ravine._io import write_atomic
from ravine.train.checkpoint import CheckpointError

__all__ = [
    "Logger",
    "JsonlLogger",
    "CsvLogger",
    "TensorBoardLogger",
    "ResumePoint",
    "LOGGER_NAMES",
    "make_loggers",
]

TENSORBOARD_MISSING = (
    "TensorBoard logging needs the tensorboard package: pip install 'ravine[tensorboard]'"
)


@runtime_checkable
class Logger(Protocol):
    """Anything a run can send its records to."""

    def log(self, record: dict[str, Any]) -> None:
        """Take one record (``record["kind"]`` is ``"step"``, ``"epoch"`` or ``"summary"``)."""

    def flush(self) -> None:
        """Hand what was logged so far to the operating system."""

    def close(self) -> None:
        """Flush and release the files; the logger is not used afterwards."""


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


_ENCODE = json.JSONEncoder(allow_nan=False).encode


def _jsonable(value: Any) -> Any:
    # Strict JSON has no NaN/inf; write them as null so any JSON reader accepts the file.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class JsonlLogger:
    """Append-only ``metrics.jsonl``: one JSON object per line, every kind of record.

    :meth:`offset` flushes and returns the byte length written so far; a checkpoint stores it
    and a resumed run re-opens the log truncated to it, so records written after the checkpoint
    (and replayed by the resumed run) appear exactly once. Non-finite floats are written as
    ``null``. ``write`` is ``log``.

    Args:
        path: the file, or ``None`` for a log that writes nothing.
        truncate_to: open an existing file and cut it to this many bytes (resume); ``None``
            starts a new, empty file.

    Raises:
        CheckpointError: ``truncate_to`` is beyond the end of the file (it belongs to another
            run, or was cut).
    """

    def __init__(self, path: str | os.PathLike[str] | None, *, truncate_to: int | None = None):
        self.path = None if path is None else Path(path)
        self._file: io.TextIOWrapper | None = None
        if self.path is None:
            return
        if truncate_to is None:
            self._file = open(self.path, "w", encoding="utf-8")
            return
        size = self.path.stat().st_size if self.path.exists() else -1
        if size < truncate_to:
            raise CheckpointError(
                f"{self.path} holds {max(size, 0)} bytes but the checkpoint recorded "
                f"{truncate_to}; the log does not belong to this checkpoint"
            )
        self._file = open(self.path, "r+", encoding="utf-8")
        self._file.truncate(truncate_to)
        self._file.seek(truncate_to)

    def log(self, record: dict[str, Any]) -> None:
        """Append one record (non-finite floats become ``null``)."""
        if self._file is not None:
            try:  # one ready encoder: json.dumps(..., allow_nan=False) builds one per call
                line = _ENCODE(record)
            except ValueError:  # a NaN or infinity: written as null
                line = _ENCODE({k: _jsonable(v) for k, v in record.items()})
            self._file.write(line + "\n")

    write = log

    def offset(self) -> int:
        """Flush to the operating system and return the current length in bytes (0 if none)."""
        if self._file is None:
            return 0
        self._file.flush()
        return self._file.tell()

    def flush(self) -> None:
        """Flush to the operating system."""
        if self._file is not None:
            self._file.flush()

    def sync(self) -> None:
        """Flush and ``fsync`` so the lines survive a machine crash, not just a process kill."""
        self.syncer()()

    def syncer(self) -> Callable[[], None]:
        """Flush now; return a function that ``fsync``-s what was flushed (for the checkpoint
        writer's thread, so the log is durable before the checkpoint that points into it)."""
        if self._file is None:
            return lambda: None
        self._file.flush()
        fileno = self._file.fileno()
        return lambda: os.fsync(fileno)

    def close(self) -> None:
        """Flush and close the file."""
        if self._file is not None:
            self._file.close()
            self._file = None


def _cell(value: Any) -> str:
    # repr-exact floats (str(float) round-trips); nan/inf as Python writes them, which
    # float() and pandas read back; None as an empty cell.
    return "" if value is None else str(value)


class CsvLogger:
    """The epoch records as ``metrics.csv``: a header row, then one row per epoch.

    Other kinds of record are ignored. Columns are the union of the keys seen, in the order
    they first appeared (``kind`` left out); an epoch without a key leaves its cell empty.
    When a record brings a new key, the whole (small) file is rewritten with the wider header
    through :func:`ravine._io.write_atomic` (a temporary file, ``fsync``, a rename), so a reader
    never sees a half-written table. Each row is flushed to the operating system as it is logged.

    Args:
        path: the CSV file.
        keep_rows: ``None`` starts a new, empty table; an integer re-opens an existing one and
            keeps its first ``keep_rows`` data rows (resume; see :meth:`truncate_to_epochs`).

    Raises:
        CheckpointError: ``keep_rows`` is more than the file holds.
    """

    def __init__(self, path: str | os.PathLike[str], *, keep_rows: int | None = None):
        self.path = Path(path)
        self._columns: list[str] = []
        self._rows: list[dict[str, str]] = []
        self._file: io.TextIOWrapper | None = None
        if keep_rows is None:
            self._rewrite()
        else:
            self.truncate_to_epochs(keep_rows)

    @property
    def rows(self) -> int:
        """Number of data rows in the table: store it in a checkpoint to resume exactly."""
        return len(self._rows)

    def truncate_to_epochs(self, n: int) -> None:
        """Re-read the file and keep its header and first ``n`` data rows.

        A resumed run calls this with the row count of its checkpoint; the epochs it then
        replays are appended once. A missing file counts as an empty table.
        """
        columns: list[str] = []
        rows: list[dict[str, str]] = []
        if self.path.exists():
            with open(self.path, newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f)
                columns = list(reader.fieldnames or [])
                rows = list(reader)
        if len(rows) < n:
            raise CheckpointError(
                f"{self.path} holds {len(rows)} epoch rows but the checkpoint recorded {n}; "
                "the table does not belong to this checkpoint"
            )
        self._columns, self._rows = columns, rows[:n]
        self._rewrite()

    def log(self, record: dict[str, Any]) -> None:
        """Add an epoch record as a row; other kinds are ignored."""
        if record.get("kind") != "epoch":
            return
        row = {key: _cell(value) for key, value in record.items() if key != "kind"}
        self._rows.append(row)
        new = [key for key in row if key not in self._columns]
        if new:
            self._columns.extend(new)
            self._rewrite()
            return
        assert self._file is not None, "CsvLogger used after close()"
        csv.DictWriter(self._file, self._columns, lineterminator="\n").writerow(row)
        self._file.flush()

    def _rewrite(self) -> None:
        if self._file is not None:
            self._file.close()

        def write(f: IO[str]) -> None:
            if self._columns:
                writer = csv.DictWriter(f, self._columns, lineterminator="\n")
                writer.writeheader()
                writer.writerows(self._rows)

        # one writer per run directory (rank 0 under the run lock)
        write_atomic(self.path, write, newline="", single_writer=True)
        self._file = open(self.path, "a", newline="", encoding="utf-8")

    def flush(self) -> None:
        """Flush to the operating system (rows are already flushed as they are logged)."""
        if self._file is not None:
            self._file.flush()

    def close(self) -> None:
        """Flush and close the file."""
        if self._file is not None:
            self._file.close()
            self._file = None


STEP_SCALARS = ("loss", "lr", "grad_norm")
"""Keys of a step record that :class:`TensorBoardLogger` plots as ``train/<key>``."""


class TensorBoardLogger:
    """TensorBoard event files through ``torch.utils.tensorboard.SummaryWriter``.

    * step records: ``loss``, ``lr``, ``grad_norm`` as scalars ``train/loss``, ``train/lr``,
      ``train/grad_norm`` at the record's global ``step``;
    * epoch records: every numeric key (``epoch`` and ``step`` aside) as ``epoch/<key>`` at the
      epoch's last global ``step``, so both kinds share one x-axis;
    * the summary record: its numeric keys as ``summary/<key>`` at the last step logged.

    Booleans, strings and ``None`` are skipped. Needs the optional ``tensorboard`` package.

    Args:
        log_dir: the folder for the event files (view with ``tensorboard --logdir``).
        purge_step: on resume, the checkpoint's global step: events this writer's folder holds
            at or after it (written after the checkpoint, replayed now) are hidden by
            TensorBoard, so each step shows once.

    Raises:
        ImportError: the tensorboard package is not installed (the message says how to get it).
    """

    def __init__(self, log_dir: str | os.PathLike[str], *, purge_step: int | None = None):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ImportError(TENSORBOARD_MISSING) from None
        self.log_dir = Path(log_dir)
        self._writer = SummaryWriter(str(self.log_dir), purge_step=purge_step)
        self._last_step = 0 if purge_step is None else purge_step

    def log(self, record: dict[str, Any]) -> None:
        """Write the record's numbers as scalars (see the class docstring)."""
        kind = record.get("kind")
        step = record.get("step")
        step = self._last_step if step is None else int(step)
        self._last_step = max(self._last_step, step)
        if kind == "step":
            items = {f"train/{key}": record.get(key) for key in STEP_SCALARS}
        elif kind == "epoch":
            items = {
                f"epoch/{key}": value
                for key, value in record.items()
                if key not in ("kind", "epoch", "step")
            }
        elif kind == "summary":
            items = {f"summary/{key}": value for key, value in record.items() if key != "kind"}
        else:
            return
        for tag, value in items.items():
            if _is_number(value):
                self._writer.add_scalar(tag, float(value), global_step=step)

    def flush(self) -> None:
        """Write pending events to disk."""
        self._writer.flush()

    def close(self) -> None:
        """Flush and close the event file."""
        self._writer.close()


@dataclass(frozen=True)
class ResumePoint:
    """Where each logger stood at a checkpoint, so a resumed run writes every record once.

    Attributes:
        jsonl_bytes: :meth:`JsonlLogger.offset` at the checkpoint.
        csv_rows: :attr:`CsvLogger.rows` at the checkpoint (epoch records logged).
        step: the global optimizer step at the checkpoint (TensorBoard's ``purge_step``).
    """

    jsonl_bytes: int
    csv_rows: int
    step: int


LOGGER_NAMES = ("jsonl", "csv", "tensorboard")
"""Names :func:`make_loggers` accepts."""


def make_loggers(
    spec: str | Logger | Sequence[str | Logger] | None,
    run_dir: str | os.PathLike[str] | None,
    *,
    resume: ResumePoint | None = None,
) -> list[Logger]:
    """The loggers of a run, from the user's ``loggers=`` option.

    With a ``run_dir``, :class:`JsonlLogger` on ``run_dir/metrics.jsonl`` is always first,
    whether listed or not. ``"csv"`` adds :class:`CsvLogger` on ``run_dir/metrics.csv``,
    ``"tensorboard"`` adds :class:`TensorBoardLogger` on ``run_dir/tensorboard/``; a name listed
    twice counts once. Ready objects with ``log``/``flush``/``close`` are used as given, after
    the named ones, in their order.

    The folder ``run_dir`` is created if needed.

    Args:
        spec: ``None``, a name, a logger, or a sequence of names and loggers.
        run_dir: the run directory, or ``None`` (then only ready loggers can be used).
        resume: where the loggers stood at the checkpoint being resumed; ``None`` starts new
            files.

    Raises:
        ValueError: an unknown name (the closest one is suggested), or a name that writes files
            without a ``run_dir``.
        TypeError: an item that is neither a name nor a logger.
        ImportError: ``"tensorboard"`` without the tensorboard package.
    """
    if spec is None:
        items: list[str | Logger] = []
    elif isinstance(spec, (str, Logger)):
        items = [spec]
    else:
        items = list(spec)
    names: list[str] = []
    ready: list[Logger] = []
    for item in items:
        if isinstance(item, str):
            if item not in LOGGER_NAMES:
                raise ValueError(
                    f"unknown logger {item!r}{suggest(item, LOGGER_NAMES)} "
                    f"(choose from {', '.join(LOGGER_NAMES)} "
                    "or pass an object with log, flush and close)"
                )
            if item not in names:
                names.append(item)
        elif isinstance(item, Logger):
            ready.append(item)
        else:
            raise TypeError(
                f"a logger must be one of {', '.join(LOGGER_NAMES)} or an object with log, "
                f"flush and close; got {type(item).__name__}"
            )
    if run_dir is None:
        if names:
            raise ValueError(
                f"logger {names[0]!r} writes into the run directory; give run_dir "
                "or pass a ready logger object"
            )
        return ready
    root = Path(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    if resume is None:
        jsonl_bytes = csv_rows = purge_step = None
    else:
        jsonl_bytes, csv_rows, purge_step = resume.jsonl_bytes, resume.csv_rows, resume.step
    loggers: list[Logger] = [JsonlLogger(root / "metrics.jsonl", truncate_to=jsonl_bytes)]
    if "csv" in names:
        loggers.append(CsvLogger(root / "metrics.csv", keep_rows=csv_rows))
    if "tensorboard" in names:
        loggers.append(TensorBoardLogger(root / "tensorboard", purge_step=purge_step))
    return loggers + ready
