"""How long `diagnostics.diagnose` takes with its default budget on the MNIST-1D CNN.

Issue 11's goal: <= 10 s on 2 CPU cores. The CNN (ravine.models.cnn1d, 23k parameters, batch
norm) is trained for 100 SGD+momentum steps, then diagnosed with its optimizer from the
training set (1024 examples for the gradient statistics, 256 for the Hessian-vector products).
The first call includes the one-time choice of the Hessian-vector-product backend (cached per
model); the table gives it apart from the median of the following calls.

Usage: python benchmarks/diagnose_time.py [--repeats 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
import warnings
from pathlib import Path

import torch
from torch import nn

from ravine import data, diagnostics, models, optim

RESULTS = Path(__file__).parent / "results" / "diagnose_time.md"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=diagnostics.DiagnosticsWarning)
    torch.manual_seed(0)
    train = data.load("mnist1d", seed=0).train
    net = models.cnn1d(40, 10)
    opt = optim.Momentum(net.parameters(), lr=0.05, momentum=0.9)
    loss_fn = nn.functional.cross_entropy
    batches = data.EpochBatches(len(train), 100, seed=0)
    for _, idx in zip(range(100), batches, strict=False):
        opt.zero_grad()
        loss_fn(net(train.x[idx]), train.y[idx]).backward()
        opt.step()
    times, hvps = [], []
    for _ in range(args.repeats + 1):
        start = time.perf_counter()
        d = diagnostics.diagnose(net, loss_fn, train, optimizer=opt, batch_size=100)
        times.append(time.perf_counter() - start)
        hvps.append(d.numbers["hvps"])
    first, rest = times[0], statistics.median(times[1:])
    verdict = "meets" if max(first, rest) <= 10 else "MISSES"
    text = "\n".join(
        [
            "# diagnose() time (`benchmarks/diagnose_time.py`)",
            "",
            f"MNIST-1D CNN (23k parameters, batch norm) after 100 momentum steps; "
            f"`diagnose(net, loss_fn, train, optimizer=opt, batch_size=100)` with the default "
            f"budget. torch {torch.__version__}, {args.threads} thread(s), {os.cpu_count()} CPUs "
            f"({platform.processor() or platform.machine()}), load average "
            f"{os.getloadavg()[0]:.1f} at the end.",
            "",
            "| call | seconds | Hessian-vector products | goal <= 10 s |",
            "|---|---|---|---|",
            f"| first (includes the backend choice) | {first:.2f} | {hvps[0]} | |",
            f"| median of the next {args.repeats} | {rest:.2f} | {hvps[1]} | {verdict} |",
            "",
            f"Findings: {', '.join(d.codes)}.",
            "",
        ]
    )
    print(text)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
