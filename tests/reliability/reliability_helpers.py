"""A small, fast `ravine train` config shared by the reliability tests."""

from __future__ import annotations

from pathlib import Path

import yaml


def write_run_config(tmp_path: Path, **changes) -> Path:
    """A regression run (quadratic data, a small MLP) writing to ``tmp_path / "run"``."""
    config = {
        "data": {"name": "quadratic", "n": 120, "dim": 4},
        "model": {"kind": "mlp", "hidden": [8]}, "optimizer": {"name": "sgd", "lr": 0.05},
        "epochs": 2, "batch_size": 40, "run_dir": str(tmp_path / "run"), **changes}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return path
