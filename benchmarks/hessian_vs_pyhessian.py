"""ravine.diagnostics against PyHessian, and the cost of the diagnostics, on an MNIST-1D MLP.

Sections (each a markdown table, printed and written to
``benchmarks/results/hessian_vs_pyhessian.md``):

1. λmax to 1e-3 relative accuracy: ravine's Lanczos vs PyHessian's power iteration on the same
   model and batch. "own rule" = each method's stopping rule at tol = 1e-3 (ravine: Ritz residual
   <= 1e-3 |θ|; PyHessian: relative change of the estimate < 1e-3), with the error it actually
   achieved; "to 1e-3" = the number of products after which the estimate stays within 1e-3 of a
   reference converged to 1e-10 in float64 (an oracle stopping rule, fair to both).
2. λmin, which power iteration cannot target: PyHessian's own loop run on ``H - σI`` with
   σ = its λmax estimate (a shifted power iteration; the shift is applied inside a wrapper of its
   ``hessian_vector_product``), against ravine's Lanczos.
3. One Hessian-vector product in units of one gradient evaluation, per backend.
4. Per-example gradients at batch 256: vmap against loops.
5. The wall time of ``diagnostics.measure`` (λmax + gradient noise) relative to one training
   epoch (batch 100 over the 4000 training examples), to choose how often to measure.

Products are counted by wrapping PyHessian's ``hessian_vector_product`` and by ravine's own
counter. Points: the initialization and after 20 epochs of SGD with momentum.

Run: ``python benchmarks/hessian_vs_pyhessian.py [--threads 1] [--seeds 5]``.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import os
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ravine import data, models
from ravine.diagnostics import (
    HessianOperator,
    hessian_extremes,
    measure,
    operator_extremes,
    per_example_gradients,
)

LOSS = nn.CrossEntropyLoss()
TARGET = 1e-3
# Products recorded for PyHessian's oracle count (power iteration run without stopping).
LIMITS = {"pmax": 500, "pmin": 3000}
RESULTS = Path(__file__).parent / "results" / "hessian_vs_pyhessian.md"


def median_time(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int) -> list[float]:
    """SGD with momentum, batch 100; returns the wall time of each epoch."""
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    generator = torch.Generator().manual_seed(0)
    times = []
    for _ in range(epochs):
        start = time.perf_counter()
        for idx in torch.randperm(x.shape[0], generator=generator).split(100):
            opt.zero_grad()
            LOSS(model(x[idx]), y[idx]).backward()
            opt.step()
        times.append(time.perf_counter() - start)
    return times


# --------------------------------------------------------------------------- PyHessian


class CountingHVP:
    """Wraps PyHessian's hessian_vector_product: counts calls, records the Rayleigh quotient
    v·Hv of each call (its eigenvalue estimate), and optionally returns (H - σI) v."""

    def __init__(self, original: Callable, shift: float = 0.0) -> None:
        self.original, self.shift = original, shift
        self.calls = 0
        self.estimates: list[float] = []

    def __call__(self, grads, params, v):
        hv = self.original(grads, params, v)
        if self.shift:
            hv = [h - self.shift * vi for h, vi in zip(hv, v, strict=True)]
        self.calls += 1
        self.estimates.append(float(sum((h * vi).sum() for h, vi in zip(hv, v, strict=True))))
        return hv


def pyhessian_run(
    model: nn.Module, batch, *, seed: int, tol: float, max_iter: int, shift: float = 0.0
) -> tuple[float, CountingHVP, float]:
    """PyHessian's top eigenvalue of H - shift·I: (estimate + shift, counter, seconds)."""
    from pyhessian import hessian

    module = importlib.import_module("pyhessian.hessian")
    original = module.hessian_vector_product
    counter = CountingHVP(original, shift)
    module.hessian_vector_product = counter
    copy_ = copy.deepcopy(model)
    try:
        torch.manual_seed(seed)
        start = time.perf_counter()
        engine = hessian(copy_, LOSS, data=batch, cuda=False)
        values, _ = engine.eigenvalues(maxIter=max_iter, tol=tol, top_n=1)
        seconds = time.perf_counter() - start
    finally:
        module.hessian_vector_product = original
        copy_.zero_grad(set_to_none=True)  # PyHessian's backward(create_graph=True) left a cycle
    return values[0] + shift, counter, seconds


def products_to_target(estimates: list[float], reference: float, shift: float = 0.0) -> int | None:
    """Products after which every later estimate is within TARGET of the reference."""
    inside = [abs(e + shift - reference) <= TARGET * abs(reference) for e in estimates]
    if not inside[-1]:
        return None
    last_outside = max((i for i, ok in enumerate(inside) if not ok), default=-1)
    return last_outside + 2


# --------------------------------------------------------------------------- ravine


def ravine_products_to_target(op: HessianOperator, reference: float, end: str, limit: int) -> int:
    """Lanczos from the same seed is the same sequence, so j steps give the j-th estimate, and
    the extreme Ritz values move monotonically toward the extremes (interlacing): bisect on j."""

    def within(steps: int) -> bool:
        result = operator_extremes(op.matvec, op.dim, which=end, tol=1e-14, max_steps=steps)
        value = result.lambda_max if end == "max" else result.lambda_min
        return abs(value - reference) <= TARGET * abs(reference)

    if not within(limit):
        raise RuntimeError(f"ravine did not reach {TARGET} within {limit} products")
    low, high = 0, limit  # within(high) holds; within(low) does not (0 steps: no estimate)
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if within(middle) else (middle, high)
    return high


def fmt(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}g}"


@dataclass
class Run:
    hvps: int
    error: float
    seconds: float
    oracle: int | None


def timed_ravine(model: nn.Module, batch, which: str, seed: int):
    hessian_extremes(model, LOSS, batch, which=which, seed=seed)  # the backend choice is cached
    start = time.perf_counter()
    result = hessian_extremes(model, LOSS, batch, which=which, seed=seed)
    return result, time.perf_counter() - start


def extremes_rows(model: nn.Module, batch, point: str, seeds: int) -> list[list[str]]:
    model64 = copy.deepcopy(model).double()
    ref = hessian_extremes(
        model64,
        LOSS,
        (batch[0].double(), batch[1]),
        tol=1e-10,
        max_hvps=3000,
        backend="double-backward",
    )
    runs: dict[str, list[Run]] = {k: [] for k in ("rmax", "rmin", "rboth", "pmax", "pmin")}
    for seed in range(seeds):
        op = HessianOperator(model, LOSS, batch, seed=seed)
        top, seconds = timed_ravine(model, batch, "max", seed)
        runs["rmax"].append(
            Run(
                top.hvps,
                abs(top.lambda_max / ref.lambda_max - 1),
                seconds,
                ravine_products_to_target(op, ref.lambda_max, "max", 500),
            )
        )
        bottom, seconds = timed_ravine(model, batch, "min", seed)
        runs["rmin"].append(
            Run(
                bottom.hvps,
                abs(bottom.lambda_min / ref.lambda_min - 1),
                seconds,
                ravine_products_to_target(op, ref.lambda_min, "min", 1000),
            )
        )
        both, seconds = timed_ravine(model, batch, "both", seed)
        error = max(
            abs(both.lambda_max / ref.lambda_max - 1), abs(both.lambda_min / ref.lambda_min - 1)
        )
        runs["rboth"].append(Run(both.hvps, error, seconds, None))

        value, counter, seconds = pyhessian_run(model, batch, seed=seed, tol=TARGET, max_iter=1000)
        _, path, _ = pyhessian_run(model, batch, seed=seed, tol=0.0, max_iter=LIMITS["pmax"])
        runs["pmax"].append(
            Run(
                counter.calls,
                abs(value / ref.lambda_max - 1),
                seconds,
                products_to_target(path.estimates, ref.lambda_max),
            )
        )
        low, counter, seconds = pyhessian_run(
            model, batch, seed=seed, tol=TARGET, max_iter=3000, shift=value
        )
        _, path, _ = pyhessian_run(
            model, batch, seed=seed, tol=0.0, max_iter=LIMITS["pmin"], shift=value
        )
        runs["pmin"].append(
            Run(
                counter.calls,
                abs(low / ref.lambda_min - 1),
                seconds,
                products_to_target(path.estimates, ref.lambda_min, value),
            )
        )

    def row(quantity: str, name: str, key: str) -> list[str]:
        oracle = [r.oracle for r in runs[key]]
        reached = [o for o in oracle if o is not None]
        if key == "rboth":
            oracle_text = "n/a"
        elif not reached:
            oracle_text = f"not reached in {LIMITS[key]}"
        elif len(reached) < len(oracle):
            oracle_text = (
                f"{fmt(statistics.mean(reached))} ({len(reached)} of {len(oracle)} starts; "
                f"the others not in {LIMITS[key]})"
            )
        else:
            oracle_text = fmt(statistics.mean(reached))
        return [
            point,
            quantity,
            name,
            fmt(statistics.mean(r.hvps for r in runs[key])),
            fmt(max(r.error for r in runs[key]), 2),
            f"{1e3 * statistics.median(r.seconds for r in runs[key]):.0f}",
            oracle_text,
        ]

    rows = [
        row("λmax", "ravine Lanczos, which='max'", "rmax"),
        row("λmax", "PyHessian power iteration", "pmax"),
        row("λmin", "ravine Lanczos, which='min'", "rmin"),
        row("λmin", "PyHessian shifted power iteration", "pmin"),
        row("both", "ravine Lanczos, which='both'", "rboth"),
    ]
    ref_text = f"λmax = {ref.lambda_max:.6g}, λmin = {ref.lambda_min:.6g} ({ref.hvps} products)"
    return rows, ref_text, runs


# --------------------------------------------------------------------------- costs


def hvp_cost_rows(model: nn.Module, batch, repeats: int) -> list[list[str]]:
    x, y = batch
    params = list(model.parameters())
    half = x.shape[0] // 2
    loader = [(x[:half], y[:half]), (x[half:], y[half:])]

    def gradient() -> None:
        torch.autograd.grad(LOSS(model(x), y), params)

    grad_time = median_time(gradient, repeats)
    rows = [["gradient (forward + backward)", f"{1e3 * grad_time:.2f}", "1.00"]]
    cases = [
        ("double-backward, one batch (gradient graph cached)", "double-backward", batch),
        ("double-backward, 2-batch loader (recomputed)", "double-backward", loader),
        ("forward-over-reverse, one batch", "forward-over-reverse", batch),
        ("forward-over-reverse, 2-batch loader", "forward-over-reverse", loader),
    ]
    for name, backend, data_ in cases:
        op = HessianOperator(model, LOSS, data_, backend=backend)
        v = torch.randn(op.dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        op(v)
        seconds = median_time(lambda op=op, v=v: op(v), repeats)
        rows.append([name, f"{1e3 * seconds:.2f}", f"{seconds / grad_time:.2f}"])
    return rows


def per_example_rows(model: nn.Module, batch, repeats: int) -> list[list[str]]:
    x, y = batch[0][:256], batch[1][:256]
    params = list(model.parameters())

    def naive() -> None:
        for i in range(256):
            torch.autograd.grad(LOSS(model(x[i : i + 1]), y[i : i + 1]), params)

    vmap_s = median_time(lambda: per_example_gradients(model, LOSS, x, y, method="vmap"), repeats)
    loop_s = median_time(lambda: per_example_gradients(model, LOSS, x, y, method="loop"), repeats)
    naive_s = median_time(naive, repeats)
    return [
        ["vmap(grad(functional_call))", f"{1e3 * vmap_s:.1f}", "1.0"],
        [
            "ravine loop fallback (per-example forward + backward)",
            f"{1e3 * loop_s:.1f}",
            f"{loop_s / vmap_s:.1f}",
        ],
        ["naive loop (256 forward + backward)", f"{1e3 * naive_s:.1f}", f"{naive_s / vmap_s:.1f}"],
    ]


def overhead_rows(model: nn.Module, x, y, epoch_s: float, repeats: int) -> list[list[str]]:
    rows = []
    for n in (256, 1000, 4000):
        for what in (["lambda_max"], ["noise"], ["lambda_max", "noise"]):
            warm = measure(model, LOSS, (x[:n], y[:n]), what)
            seconds = median_time(
                lambda n=n, what=what: measure(model, LOSS, (x[:n], y[:n]), what), repeats
            )
            rows.append(
                [
                    str(n),
                    " + ".join(what),
                    str(warm["hvps"]),
                    f"{1e3 * seconds:.0f}",
                    f"{seconds / epoch_s:.2f}",
                ]
            )
    return rows


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    warnings.filterwarnings("ignore", "Using backward\\(\\) with create_graph=True")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--seeds", type=int, default=5, help="start vectors per method")
    parser.add_argument("--batch", type=int, default=1000, help="examples in the Hessian batch")
    parser.add_argument("--repeats", type=int, default=5, help="timing repeats (median)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    splits = data.load("mnist1d", seed=0, val_fraction=0.0)
    x, y = splits.train.x, splits.train.y
    batch = (x[: args.batch], y[: args.batch])
    torch.manual_seed(0)
    model = models.mlp(40, [100, 100], 10)
    n_params = sum(p.numel() for p in model.parameters())

    sections = [
        "# Hessian diagnostics: ravine vs PyHessian (MNIST-1D MLP)",
        "",
        f"Model: `models.mlp(40, [100, 100], 10)` (ReLU, {n_params} parameters, float32); "
        f"Hessian of the cross-entropy on {args.batch} MNIST-1D training examples. "
        f"CPU: {os.cpu_count()} cores, torch {torch.__version__}, {args.threads} thread(s). "
        f"Means over {args.seeds} start vectors; times are medians.",
    ]
    extremes_header = [
        "point",
        "quantity",
        "method",
        "products (own rule, tol 1e-3)",
        "max rel. error",
        "time (ms)",
        "products to 1e-3 (oracle)",
    ]
    init = copy.deepcopy(model)
    epoch_times = train(model, x, y, epochs=20)
    summary = []
    for point, net in (("init", init), ("trained 20 epochs", model)):
        rows, ref_text, runs = extremes_rows(net, batch, point, args.seeds)
        sections += [
            "",
            f"## {point}: extreme eigenvalues",
            "",
            f"Reference (float64): {ref_text}.",
            "",
            table(extremes_header, rows),
        ]
        ravine_oracle = statistics.mean(r.oracle for r in runs["rmax"])
        reached = [r.oracle for r in runs["pmax"] if r.oracle is not None]
        if reached:
            summary.append(
                f"- {point}: ravine needs {ravine_oracle / statistics.mean(reached):.2f}x the "
                f"products of PyHessian for λmax to 1e-3 (goal <= 0.33)."
            )
    sections += ["", "## Summary", "", *summary]
    sections += [
        "",
        "## One Hessian-vector product in gradient evaluations (trained point)",
        "",
        table(
            ["operation", "time (ms)", "in gradients"], hvp_cost_rows(model, batch, args.repeats)
        ),
        "",
        "## Per-example gradients, batch 256 (trained point)",
        "",
        table(["method", "time (ms)", "x vmap"], per_example_rows(model, batch, args.repeats)),
    ]
    epoch_s = statistics.median(epoch_times)
    sections += [
        "",
        f"## measure() overhead vs one epoch (batch 100, 4000 examples: {1e3 * epoch_s:.0f} ms)",
        "",
        table(
            ["examples", "what", "products", "time (ms)", "in epochs"],
            overhead_rows(model, x, y, epoch_s, args.repeats),
        ),
    ]
    text = "\n".join(sections) + "\n"
    print(text)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text)


if __name__ == "__main__":
    main()
