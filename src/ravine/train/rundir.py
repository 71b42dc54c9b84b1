"""A run directory: config.yaml, metrics.jsonl, checkpoints/{last,best}.pt, plots, report.

Replacing a run (``overwrite``) deletes the files listed in :class:`RunFiles`, the report and the
``plots/`` folder.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = ["RunFiles", "plain"]


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
        for path in (self.config, self.metrics, self.last, self.best, self.root / "report.md",
                     self.root / "metrics.csv"):
            path.unlink(missing_ok=True)
        for folder in ("plots", "tensorboard"):
            shutil.rmtree(self.root / folder, ignore_errors=True)

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
