"""Optimizer step time: ravine's paths against the fastest torch.optim.

For every optimizer and two parameter layouts (float32, CPU):
  (a) 10M parameters in 50 tensors, (b) 1M parameters in 500 small tensors,
time one ``step()`` of ravine's default path, ``compile=True``, ``flat=True`` (parameters,
gradients and state in one buffer) and both together, and of every torch.optim implementation of
the same update (for-loop, foreach, fused; the fastest is the baseline). All of them are built
first and then stepped in turn, one step each per round (each round starting one candidate later),
so that a slow phase of a shared machine hits every candidate alike; each time is the median over
rounds.
The learning rate changes before every step (linear decay), as under a schedule: ravine's
Momentum and Nesterov must stay exact then, and must not pay for it. The memory-traffic floor is
the bytes one step must read and write at the speed of a tensor copy stepped in the same rounds.

Usage:  python benchmarks/optimizer_step.py [--repeats 20] [--threads N] [--quick] [--only NAME ...]
Writes: benchmarks/results/optimizer_step.md (merged into BENCHMARKS.md by benchmarks/collect.py);
        runs with --only or --quick print their table and write nothing.
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


def set_lr(opt, step: int) -> None:
    """Linear decay from 1e-3 towards 1e-5: a new learning rate every step."""
    for group in opt.param_groups:
        group["lr"] = 1e-3 * max(1.0 - step / 1000, 0.01)


def interleaved_medians(opts: dict[str, object], repeats: int) -> dict[str, float]:
    """Median step time of each optimizer, stepping them in turn (warm-up rounds first).

    Each round starts one candidate later, so that no candidate always follows the same one
    (whose memory traffic decides what is left in the cache).
    """
    keys = list(opts)
    samples: dict[str, list[float]] = {key: [] for key in keys}
    for r in range(3 + repeats):
        for key in keys[r % len(keys) :] + keys[: r % len(keys)]:
            opt = opts[key]
            set_lr(opt, r)
            t = time.perf_counter()
            opt.step()
            if r >= 3:
                samples[key].append(time.perf_counter() - t)
    return {key: statistics.median(v) for key, v in samples.items()}


def timed_first_step(opt) -> float:
    """Seconds of the first step (for ``compile=True``: the compilation)."""
    set_lr(opt, 0)
    t = time.perf_counter()
    opt.step()
    return time.perf_counter() - t


class Copy:
    """One ``dst.copy_(src)`` over ``total`` floats per step: reads and writes one unit each."""

    param_groups: list = []

    def __init__(self, total: int) -> None:
        self.src, self.dst = torch.randn(total), torch.empty(total)

    def step(self) -> None:
        self.dst.copy_(self.src)


# ravine's paths: the options each is built with.
PATHS = {
    "default": {},
    "compile": {"compile": True},
    "flat": {"flat": True},
    "flat + compile": {"flat": True, "compile": True},
}


def bench(total: int, count: int, repeats: int, names: list[str]) -> tuple[list[dict], float]:
    rows, copies = [], []
    for name in names:
        opts, compile_s = {}, {}
        for path, options in PATHS.items():
            opts[path] = optim.create(name, make_params(total, count), **options, **HP[name])
            first = timed_first_step(opts[path])
            if options.get("compile"):
                compile_s[path] = first
        baselines = {}
        for impl, ctor in torch_twins(name).items():
            params = make_params(total, count)
            try:
                opt = ctor(params)
                opt.step()
            except (RuntimeError, ValueError, TypeError):
                continue  # implementation not available for this device/dtype in this torch
            baselines[impl] = opt
        # The copy is stepped in the same rounds, so the floor sees the same machine.
        times = interleaved_medians({**opts, **baselines, "copy": Copy(total)}, repeats)
        del opts, baselines
        copies.append(times.pop("copy"))
        best = min((k for k in times if k not in PATHS), key=times.get, default=None)
        reads, writes = TRAFFIC[name]
        rows.append(
            {
                "optimizer": name,
                "times": {path: times[path] for path in PATHS},
                "torch": (times[best], best) if best else None,
                "floor": copies[-1] * (reads + writes) / 2,
                "compile_s": max(compile_s.values()),
            }
        )
    return rows, 2 * total * 4 / statistics.median(copies)


def cell(seconds: float, baseline: float | None) -> str:
    ratio = "" if baseline is None else f" ({seconds / baseline:.2f}x)"
    return f"{1e3 * seconds:.2f}{ratio}"


def table(rows: list[dict]) -> str:
    paths = " | ".join(f"ravine {path}, ms (/ torch)" for path in PATHS)
    head = (
        f"| optimizer | fastest torch.optim, ms | {paths} | memory floor, ms "
        "| / floor: default, compile, flat + compile | first compiled step, s |\n"
        + "|---" * (len(PATHS) + 5)
        + "|\n"
    )
    lines = []
    for r in rows:
        base = r["torch"][0] if r["torch"] else None
        torch_cell = "—" if base is None else f"{1e3 * base:.2f} ({r['torch'][1]})"
        ours = " | ".join(cell(t, base) for t in r["times"].values())
        floors = ", ".join(
            f"{r['times'][p] / r['floor']:.2f}x" for p in ("default", "compile", "flat + compile")
        )
        lines.append(
            f"| {r['optimizer']} | {torch_cell} | {ours} | {1e3 * r['floor']:.2f} | "
            f"{floors} | {r['compile_s']:.1f} |"
        )
    return head + "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="1/10 of the sizes (smoke run)")
    parser.add_argument("--only", nargs="+", choices=optim.names(), help="these optimizers only")
    parser.add_argument(
        "--threads", type=int, help="torch threads (default: torch's); 1 on a busy shared machine"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    scale = 10 if args.quick else 1
    names = args.only or optim.names()
    out = [
        "## Optimizer step time (`benchmarks/optimizer_step.py`)\n",
        f"Machine: {platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}, float32 on CPU; median of {args.repeats} interleaved steps, "
        "learning rate changing every step.\n",
    ]
    for total, count in ((10_000_000 // scale, 50), (1_000_000 // scale, 500)):
        rows, bandwidth = bench(total, count, args.repeats, names)
        out.append(
            f"\n### {total / 1e6:g}M parameters in {count} tensors "
            f"(median copy bandwidth {bandwidth / 1e9:.1f} GB/s)\n\n"
        )
        out.append(table(rows))
    text = "".join(out)
    print(text)
    if args.only or args.quick:
        return  # a partial run does not replace the recorded results
    path = Path(__file__).parent / "results" / "optimizer_step.md"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)


if __name__ == "__main__":
    main()
