"""A run directory: config.yaml, metrics.jsonl, checkpoints/{last,best}.pt, plots, report.

Replacing a run (``overwrite``) deletes the files a run and ``ravine diagnose`` write
(:data:`WRITTEN`, :data:`PLOTS`) and the ``tensorboard/`` folder; a user's own files, in the
folder or in ``plots/``, stay.
"""

from __future__ import annotations

import contextlib
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = ["RunFiles", "plain", "WRITTEN", "PLOTS"]

#: Files of a run directory that training and ``ravine diagnose`` write (besides checkpoints).
WRITTEN = ("config.yaml", "metrics.jsonl", "metrics.csv", "report.md", "diagnostics.json",
           "diagnostics.md")
#: The plots they draw in ``plots/`` (train/report.py and diagnostics/monitor.py).
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
        self.config.write_text(yaml.safe_dump(plain(config), sort_keys=False), encoding="utf-8")


def plain(value: Any) -> Any:
    """A YAML-safe copy: tuples become lists, unknown objects their repr."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)
