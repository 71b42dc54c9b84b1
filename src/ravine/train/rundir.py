"""A run directory: config.yaml, metrics.jsonl, checkpoints/{last,best}.pt, plots, report.

Replacing a run (``overwrite``) deletes the files a run and ``ravine diagnose`` write
(:data:`WRITTEN`, :data:`PLOTS`) and the ``tensorboard/`` folder; a user's own files, in the
folder or in ``plots/``, stay.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ravine._io import dump_yaml

__all__ = ["RunFiles", "RunLock", "RunDirInUse", "plain", "WRITTEN", "PLOTS"]

#: Files of a run directory that training and ``ravine diagnose`` write (besides checkpoints).
WRITTEN = ("config.yaml", "metrics.jsonl", "metrics.csv", "report.md", "diagnostics.json",
           "diagnostics.md")
#: The plots they draw in ``plots/`` (train/report.py and diagnostics/report.py).
PLOTS = ("loss.png", "accuracy.png", "lr.png", "grad_norm.png", "diagnostics.png",
         "hessian_spectrum.png", "gradient_noise.png")


@dataclass
class RunFiles:
    """Paths of a run directory."""

    root: Path
    config: Path = field(init=False)
    metrics: Path = field(init=False)
    last: Path = field(init=False)
    best: Path = field(init=False)

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        self.config = self.root / "config.yaml"
        self.metrics = self.root / "metrics.jsonl"
        self.last = self.root / "checkpoints" / "last.pt"
        self.best = self.root / "checkpoints" / "best.pt"

    def holds_run(self) -> bool:
        return self.metrics.exists() or self.last.exists()

    def clear(self) -> None:
        """Remove the files a previous run wrote here (only those; nothing else in the folder)."""
        plots = self.root / "plots"
        for path in (self.last, self.best, *(self.root / name for name in WRITTEN),
                     *(plots / name for name in PLOTS)):
            path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # kept when it holds the user's own files
            plots.rmdir()
        shutil.rmtree(self.root / "tensorboard", ignore_errors=True)

    def prepare(self, overwrite: bool, config: dict[str, Any]) -> None:
        """Start a new run here: refuse to replace a run unless ``overwrite``; write config."""
        if self.holds_run():
            if not overwrite:
                raise ValueError(
                    f"run_dir {self.root} already holds a run; resume it (resume=True, "
                    "--resume), replace it (overwrite=True, --overwrite) or choose another run_dir"
                )
            self.clear()
        self.root.mkdir(parents=True, exist_ok=True)
        self.config.write_text(dump_yaml(plain(config)), encoding="utf-8")


class RunDirInUse(ValueError):
    """Another live process holds the run directory's lock."""


# Run directories this process holds: POSIX locks never conflict within one process.
_HELD: set[Path] = set()


class RunLock:
    """An exclusive lock on a run directory (a POSIX record lock, ``lockf``, on
    ``RUN_DIR/.lock``), held by the one process that writes there (rank 0) for the run's
    lifetime.

    The lock file holds the holder's process id, for the error message, and is removed on
    release. The lock belongs to the process, so the kernel frees it when the process dies,
    however it dies: the file a killed run leaves behind locks nothing, and the next run takes
    it over at once, with no stale-lock guesswork. Unlike ``flock``, it is not inherited by
    forked children, so DataLoader workers that outlive a killed run for a moment do not keep
    the directory locked.
    """

    def __init__(self, root: Path) -> None:
        self.path = Path(root) / ".lock"
        self._fd: int | None = None

    def _busy(self, holder: str) -> RunDirInUse:
        return RunDirInUse(
            f"run_dir {self.path.parent} is in use by process {holder} (a running "
            "training); wait for it to finish or stop it, or choose another run_dir"
        )

    def acquire(self) -> RunLock:
        """Take the lock or raise :class:`RunDirInUse` naming the holding process."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        key = self.path.resolve()
        if key in _HELD:
            # Opening and closing the file here would drop this process's own lock.
            raise self._busy(str(os.getpid()))
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in (errno.EACCES, errno.EAGAIN):
                    os.close(fd)
                    raise
                holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
                os.close(fd)
                raise self._busy(holder) from None
            # The holder before us may have removed the file while we waited to open it: a
            # lock on a file no longer at the path would exclude nobody, so try again.
            try:
                if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        _HELD.add(key)
        return self

    def release(self) -> None:
        """Remove the lock file and drop the lock (a run leaves no ``.lock`` behind)."""
        if self._fd is not None:
            self.path.unlink(missing_ok=True)
            os.close(self._fd)  # closing the file drops the lock
            self._fd = None
            _HELD.discard(self.path.resolve())


def plain(value: Any) -> Any:
    """A YAML-safe copy: tuples become lists, unknown objects their repr."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)
