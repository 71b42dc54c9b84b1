"""Optimizer step time: ravine (foreach default, compile=True) against the fastest torch.optim.

For every optimizer and two parameter layouts (float32, CPU):
  (a) 10M parameters in 50 tensors, (b) 1M parameters in 500 small tensors,
time one ``step()`` of ravine's default (multi-tensor) path, of ravine's ``compile=True`` path, and
of every torch.optim implementation of the same update (for-loop, foreach, fused; the fastest is
the baseline), side by side in the same run. The memory-traffic floor is the bytes one step must
read and write divided by the copy bandwidth measured in the same run.

Usage:  python benchmarks/optimizer_step.py [--repeats 20] [--quick]
Writes: benchmarks/results/optimizer_step.md (merged into BENCHMARKS.md by benchmarks/collect.py)
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import torch

from ravine import optim

# Tensors one step reads + writes, in units of the parameter count: (read, written).
TRAFFIC = {
    "sgd": (2, 1),
    "momentum": (3, 2),
    "nesterov": (3, 2),
    "adagrad": (3, 2),
    "rmsprop": (3, 2),
    "rmsprop-nesterov": (4, 3),
    "adam": (4, 3),
    "adamw": (4, 3),
}

HP = {
    "sgd": dict(lr=1e-3),
    "momentum": dict(lr=1e-3, momentum=0.9),
    "nesterov": dict(lr=1e-3, momentum=0.9),
    "adagrad": dict(lr=1e-3, eps=1e-7),
    "rmsprop": dict(lr=1e-3, rho=0.9, eps=1e-6),
    "rmsprop-nesterov": dict(lr=1e-3, rho=0.9, momentum=0.9, eps=1e-6),
    "adam": dict(lr=1e-3),
    "adamw": dict(lr=1e-3),
}


def torch_twins(name: str):
    """torch.optim constructors computing the same update, one per implementation."""
    impls = {
        "for-loop": dict(foreach=False),
        "foreach": dict(foreach=True),
        "fused": dict(fused=True),
    }
    make = {
        "sgd": lambda p, kw: torch.optim.SGD(p, lr=1e-3, **kw),
        "momentum": lambda p, kw: torch.optim.SGD(p, lr=1e-3, momentum=0.9, **kw),
        "nesterov": lambda p, kw: torch.optim.SGD(p, lr=1e-3, momentum=0.9, nesterov=True, **kw),
        "adagrad": lambda p, kw: torch.optim.Adagrad(p, lr=1e-3, eps=1e-7, **kw),
        "rmsprop": lambda p, kw: torch.optim.RMSprop(p, lr=1e-3, alpha=0.9, eps=1e-6, **kw),
        "adam": lambda p, kw: torch.optim.Adam(p, lr=1e-3, **kw),
        "adamw": lambda p, kw: torch.optim.AdamW(p, lr=1e-3, **kw),
    }.get(name)
    if make is None:
        return {}
    return {impl: (lambda p, kw=kw: make(p, kw)) for impl, kw in impls.items()}


def make_params(total: int, count: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    size = total // count
    params = []
    for _ in range(count):
        p = torch.randn(size, generator=gen).requires_grad_()
        p.grad = torch.randn(size, generator=gen) * 1e-3
        params.append(p)
    return params


def time_steps(opt, repeats: int) -> float:
    for _ in range(3):
        opt.step()
    samples = []
    for _ in range(repeats):
        t = time.perf_counter()
        opt.step()
        samples.append(time.perf_counter() - t)
    return statistics.median(samples)


def copy_bandwidth(total: int, repeats: int) -> float:
    src, dst = torch.randn(total), torch.empty(total)
    for _ in range(3):
        dst.copy_(src)
    samples = []
    for _ in range(repeats):
        t = time.perf_counter()
        dst.copy_(src)
        samples.append(time.perf_counter() - t)
    return 2 * total * 4 / statistics.median(samples)


def bench(total: int, count: int, repeats: int, names: list[str]) -> tuple[list[dict], float]:
    bandwidth = copy_bandwidth(total, repeats)
    rows = []
    for name in names:
        row = {"optimizer": name}
        params = make_params(total, count)
        row["ravine"] = time_steps(optim.create(name, params, **HP[name]), repeats)
        params = make_params(total, count)
        row["ravine_compile"] = time_steps(
            optim.create(name, params, compile=True, **HP[name]), repeats
        )
        best_name, best = None, float("inf")
        for impl, ctor in torch_twins(name).items():
            params = make_params(total, count)
            try:
                t = time_steps(ctor(params), repeats)
            except (RuntimeError, ValueError, TypeError):
                continue  # implementation not available for this device/dtype in this torch
            if t < best:
                best_name, best = impl, t
        row["torch"], row["torch_impl"] = (best, best_name) if best_name else (None, None)
        reads, writes = TRAFFIC[name]
        row["floor"] = (reads + writes) * total * 4 / bandwidth
        rows.append(row)
    return rows, bandwidth


def fmt_ratio(a: float | None, b: float | None) -> str:
    return "—" if a is None or b is None else f"{a / b:.2f}x"


def table(rows: list[dict]) -> str:
    head = (
        "| optimizer | ravine default (ms) | ravine compile (ms) | fastest torch.optim (ms) "
        "| default / torch | compile / torch | memory floor (ms) | default / floor "
        "| compile / floor |\n|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for r in rows:
        torch_cell = "—" if r["torch"] is None else f"{1e3 * r['torch']:.2f} ({r['torch_impl']})"
        lines.append(
            f"| {r['optimizer']} | {1e3 * r['ravine']:.2f} | {1e3 * r['ravine_compile']:.2f} | "
            f"{torch_cell} | {fmt_ratio(r['ravine'], r['torch'])} | "
            f"{fmt_ratio(r['ravine_compile'], r['torch'])} | {1e3 * r['floor']:.2f} | "
            f"{fmt_ratio(r['ravine'], r['floor'])} | {fmt_ratio(r['ravine_compile'], r['floor'])} |"
        )
    return head + "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="1/10 of the sizes (smoke run)")
    args = parser.parse_args()
    scale = 10 if args.quick else 1
    names = optim.names()
    out = [
        "## Optimizer step time (`benchmarks/optimizer_step.py`)\n",
        f"Machine: {platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}, float32 on CPU; median of {args.repeats} steps.\n",
    ]
    for total, count in ((10_000_000 // scale, 50), (1_000_000 // scale, 500)):
        rows, bandwidth = bench(total, count, args.repeats, names)
        out.append(
            f"\n### {total / 1e6:g}M parameters in {count} tensors "
            f"(copy bandwidth {bandwidth / 1e9:.1f} GB/s)\n\n"
        )
        out.append(table(rows))
    text = "".join(out)
    print(text)
    path = Path(__file__).parent / "results" / "optimizer_step.md"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)


if __name__ == "__main__":
    main()
