"""ravine: optimizing neural networks with PyTorch.

The textbook optimizers (Goodfellow, Bengio & Courville, *Deep Learning*, algorithms 8.1-8.7)
implemented exactly and fast, a training loop, curvature and gradient-noise diagnostics, and
an optimizer benchmark.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_SUBMODULES = ("optim", "schedules", "models", "data", "diagnostics", "config", "bench")

__all__ = ["fit", "__version__", *_SUBMODULES]


def __getattr__(name: str) -> Any:
    # Submodules are imported on first use so `import ravine` stays fast.
    if name in _SUBMODULES:
        return importlib.import_module(f"ravine.{name}")
    if name == "fit":
        from ravine.train import fit

        return fit
    raise AttributeError(f"module 'ravine' has no attribute {name!r}")
