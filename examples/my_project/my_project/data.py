"""A map-style Dataset of two-input examples, built lazily (one example per ``__getitem__``).

Each example is a dict: a noisy 1-D ``signal`` (one channel, ``length`` samples) with a bump
whose position is the class, a ``meta`` vector (the signal's mean and standard deviation) and
the integer ``label``. Nothing is downloaded and nothing is held as a tensor batch: example i
is generated from ``(seed, i)``, as if it were read and decoded from a file.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset


class Bumps(Dataset):
    def __init__(self, count: int, length: int = 32, classes: int = 4, seed: int = 0,
                 noise: float = 0.5) -> None:
        self.count, self.length, self.classes = count, length, classes
        self.seed, self.noise = seed, noise

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < self.count:
            raise IndexError(index)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        label = int(torch.randint(self.classes, (), generator=g))
        grid = torch.linspace(0, 1, self.length)
        centre = (label + 0.5) / self.classes
        signal = torch.exp(-((grid - centre) ** 2) / 0.005)
        signal = signal + self.noise * torch.randn(self.length, generator=g)
        meta = torch.stack([signal.mean(), signal.std()])
        return {"signal": signal[None], "meta": meta, "label": torch.tensor(label)}


def build(train: int = 800, val: int = 200, test: int = 200, length: int = 32,
          classes: int = 4, seed: int = 0) -> dict[str, Dataset]:
    """The splits ``{"train", "val", "test"}`` (disjoint generator streams)."""
    return {
        "train": Bumps(train, length, classes, seed=3 * seed),
        "val": Bumps(val, length, classes, seed=3 * seed + 1),
        "test": Bumps(test, length, classes, seed=3 * seed + 2),
    }
