"""Overhead of measuring curvature and gradient noise during training (fit's ``diagnostics=``).

Trains the MNIST-1D CNN (batch norm) and MLP with Nesterov (lr 0.1, momentum 0.9, linear decay,
batch 100, 20 epochs) with and without ``diagnostics=True`` (the default: λmax by Lanczos and
the gradient-noise scale on a fixed 512-example training subset, every 5 epochs), interleaved,
and reports the wall-time ratio and the seconds per measurement.

Run: ``python benchmarks/diagnostics_overhead.py [--repeats 3] [--epochs 20] [--threads 1]``
Writes benchmarks/results/diagnostics_overhead.md.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import torch

from ravine import data, models
from ravine.train import fit
from ravine.train.diagnostics_schedule import DiagnosticsSchedule

RESULTS = Path(__file__).parent / "results" / "diagnostics_overhead.md"


def build(kind: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if kind == "cnn1d":
        return models.cnn1d(40, 10, norm="batch")
    return models.mlp(40, [100, 100], 10, norm="batch")


def run(kind: str, splits, epochs: int, diagnostics) -> tuple[float, list[float]]:
    start = time.perf_counter()
    result = fit(build(kind), splits.train, splits.val, optimizer="nesterov", lr=0.1,
                 schedule="linear-decay", epochs=epochs, batch_size=100, seed=0,
                 diagnostics=diagnostics, quiet=True)
    seconds = [r["diag_seconds"] for r in result.history if "diag_seconds" in r]
    return time.perf_counter() - start, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    splits = data.load("mnist1d", seed=0)
    default = DiagnosticsSchedule()
    rows = []
    for kind in ("cnn1d", "mlp"):
        plain, measured, per = [], [], []
        for _ in range(args.repeats):
            plain.append(run(kind, splits, args.epochs, None)[0])
            t, seconds = run(kind, splits, args.epochs, True)
            measured.append(t)
            per.extend(seconds)
        base, with_diag = statistics.median(plain), statistics.median(measured)
        rows.append(
            f"| {kind} | {base:.2f} | {with_diag:.2f} | {with_diag / base:.3f}x | "
            f"{statistics.median(per):.3f} | {len(per) // args.repeats} |"
        )
    text = (
        "## Diagnostics during training (`benchmarks/diagnostics_overhead.py`)\n\n"
        f"Machine: {platform.machine()}, {args.threads} torch thread(s), "
        f"torch {torch.__version__}; "
        f"MNIST-1D, Nesterov, batch 100, {args.epochs} epochs, median of {args.repeats} "
        f"interleaved runs. Default interval: every {default.every} epochs, "
        f"what={list(default.what)}, {default.examples} examples, max {default.max_hvps} HVPs.\n\n"
        "| model | fit (s) | fit + diagnostics (s) | ratio | s per measurement | measurements |\n"
        "|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n"
    )
    print(text)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(text)


if __name__ == "__main__":
    main()
