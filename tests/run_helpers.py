"""Helpers shared by the tests that drive `ravine train` through configs."""

from __future__ import annotations

from pathlib import Path

import yaml

from ravine import data


def train_size(config: Path) -> int:
    """Number of training examples the run described by ``config`` trains on."""
    options = yaml.safe_load(config.read_text())
    splits = data.load(options["data"]["name"], seed=options["seed"],
                       val_fraction=options["data"]["val_fraction"])
    return len(splits.train)
