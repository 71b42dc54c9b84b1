"""``ravine demo``: the lecture's optimizers on MNIST-1D, an MLP against a CNN, in one report.

Every optimizer of the lecture (sgd, momentum, nesterov, adagrad, rmsprop, rmsprop-nesterov,
adam) trains both networks with the lecture's linear decay of the learning rate (from ``lr`` to
``0.01 lr`` over the run), minibatches of 100, and a learning rate tuned per optimizer and network
on the validation split. Both networks use batch normalization. The report lists test accuracy
(MNIST-1D's standard 1000 test signals), the best validation accuracy, epochs and training time,
and overlays the validation curves.

Each run is a :class:`~ravine.config.RunConfig` (:func:`run_config`) built by
:meth:`~ravine.config.RunConfig.build`, like a ``ravine train`` run.

Runs are spread over worker processes (one per core, one thread each: these small networks do
not gain from intra-op threads, and two independent runs use two cores fully); a Ctrl-C stops
them quietly (:mod:`ravine._workers`) and the command prints one line.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from concurrent.futures import Future
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ravine import data
from ravine._workers import call, sigint_ignored, spawn_pool, start_worker, stop_workers
from ravine.config import RunConfig, validate_config
from ravine.train import fit
from ravine.train.lineplot import line_plot
from ravine.train.report import markdown_table

__all__ = ["OPTIMIZERS", "NETWORKS", "LEARNING_RATES", "EPOCHS", "DemoRun", "run_config",
           "run_demo", "demo_command"]

OPTIMIZERS = ("sgd", "momentum", "nesterov", "adagrad", "rmsprop", "rmsprop-nesterov", "adam")

NETWORKS: dict[str, dict[str, Any]] = {
    "mlp": {"kind": "mlp", "hidden": [256, 256], "norm": "batch"},
    "cnn": {"kind": "cnn1d", "channels": [32, 32, 32], "norm": "batch"},
}

# Initial learning rates: the best validation accuracy of 30-epoch runs (seed 0) over the grid
# {0.01, 0.03, 0.1} (sgd: {0.03, 0.1, 0.3} for the MLP, {0.05, 0.1, 0.2} for the CNN; rmsprop
# and rmsprop-nesterov: {3e-4, 1e-3, 3e-3}; adam: {1e-3, 3e-3, 1e-2}).
LEARNING_RATES: dict[str, dict[str, float]] = {
    "mlp": {
        "sgd": 0.3,
        "momentum": 0.03,
        "nesterov": 0.03,
        "adagrad": 0.03,
        "rmsprop": 3e-3,
        "rmsprop-nesterov": 1e-3,
        "adam": 3e-3,
    },
    "cnn": {
        "sgd": 0.2,
        "momentum": 0.03,
        "nesterov": 0.1,
        "adagrad": 0.03,
        "rmsprop": 3e-3,
        "rmsprop-nesterov": 3e-3,
        "adam": 1e-2,
    },
}

EPOCHS = {"mlp": 30, "cnn": 30}
BATCH_SIZE = 100
VAL_FRACTION = 0.1
QUICK_EPOCHS = 2
QUICK_EXAMPLES = 200  # per split, in quick mode


@dataclass(frozen=True)
class DemoRun:
    """One training run of the demo."""

    network: str
    optimizer: str
    lr: float
    epochs: int


def run_config(run: DemoRun, seed: int) -> RunConfig:
    """The run config of one demo run (MNIST-1D, the network, the optimizer, linear decay)."""
    return validate_config({
        "data": {"name": "mnist1d", "val_fraction": VAL_FRACTION},
        "model": NETWORKS[run.network],
        "optimizer": {"name": run.optimizer},
        "lr": run.lr,
        "schedule": "linear-decay",
        "epochs": run.epochs,
        "batch_size": BATCH_SIZE,
        "seed": seed,
    }, f"demo run {run.network}/{run.optimizer}")


def _train(run: DemoRun, seed: int, quick: bool) -> dict[str, Any]:
    """Train one network (in a worker process or in-process); return its summary."""
    config = run_config(run, seed)
    built = config.build()
    splits = built.splits
    train, val, test = splits.train, splits.val, splits.test
    if quick:
        train, val, test = (data.ArrayDataset(s.x[:QUICK_EXAMPLES], s.y[:QUICK_EXAMPLES])
                            for s in (train, val, test))
    result = fit(built.model, train, val, test=test, **config.fit_kwargs(), quiet=True)
    return {
        **asdict(run),
        "test_acc": result.test["test_acc"] if result.test else None,
        "best_val_acc": max(h["val_acc"] for h in result.history),
        "epochs_run": len(result.history),
        "time": result.wall_time,
        "history": [
            {k: h[k] for k in ("epoch", "train_loss", "val_loss", "val_acc", "time")}
            for h in result.history
        ],
    }


def _plan(quick: bool) -> list[DemoRun]:
    return [
        DemoRun(network, name, LEARNING_RATES[network][name],
                QUICK_EPOCHS if quick else EPOCHS[network])
        for network in NETWORKS
        for name in OPTIMIZERS
    ]


def run_demo(
    out: str | os.PathLike[str] = "runs/demo",
    *,
    quick: bool = False,
    seed: int = 0,
    jobs: int | None = None,
    quiet: bool = False,
) -> Path:
    """Train every (network, optimizer) pair and write ``out/report.md``; return its path.

    Args:
        out: output folder; receives ``report.md``, ``results.json`` and ``plots/*.png``.
        quick: a reduced version for tests: 2 epochs, the first 200 signals of each split.
        seed: seeds the data split, the initial weights, the batches and dropout.
        jobs: worker processes (default: ``min(2, cores)``); 1 trains in this process.
        quiet: do not print a line per finished run.
    """
    if isinstance(jobs, bool) or (jobs is not None and (not isinstance(jobs, int) or jobs < 1)):
        raise ValueError(f"jobs must be an integer >= 1 or None, got {jobs!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    data.load("mnist1d", seed=seed, val_fraction=VAL_FRACTION)  # generate and cache it once
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs = _plan(quick)
    jobs = min(2, os.cpu_count() or 1) if jobs is None else jobs
    start = time.perf_counter()
    results: list[dict[str, Any]] = []

    def done(result: dict[str, Any]) -> None:
        results.append(result)
        if not quiet:
            print(f"{result['network']:>3} {result['optimizer']:<16} lr={result['lr']:<7g} "
                  f"test_acc {result['test_acc']:.3f}  {result['epochs_run']} epochs  "
                  f"{result['time']:.1f} s", flush=True)

    if jobs == 1:
        for run in runs:
            done(_train(run, seed, quick))
    else:
        pool = spawn_pool(jobs, start_worker)
        futures: list[Future] = []
        try:
            with sigint_ignored():
                futures = [pool.submit(call, _train, run, seed, quick) for run in runs]
            for future in futures:
                done(future.result())
        except BaseException:
            stop_workers(pool, futures)
            raise
        pool.shutdown()
    total = time.perf_counter() - start
    order = {(r.network, r.optimizer): i for i, r in enumerate(runs)}
    results.sort(key=lambda r: order[(r["network"], r["optimizer"])])
    (out / "results.json").write_text(json.dumps(
        {"seed": seed, "quick": quick, "total_time": total, "runs": results}, indent=1),
        encoding="utf-8")
    report = _write_comparison(out, results, seed=seed, quick=quick, total=total, jobs=jobs)
    if not quiet:
        print(f"demo finished in {total:.0f} s")
    return report


def _write_comparison(
    out: Path, results: list[dict[str, Any]], *, seed: int, quick: bool, total: float, jobs: int
) -> Path:
    parts = [
        "# ravine demo: the lecture's optimizers on MNIST-1D",
        "",
        f"Every optimizer trains each network with the linear-decay schedule (lr -> 0.01 lr over "
        f"the run), minibatches of {BATCH_SIZE} and seed {seed}; the validation split is "
        f"{VAL_FRACTION:.0%} of the 4000 training signals and the test set is MNIST-1D's standard "
        f"1000 signals. Total wall time: {total:.0f} s, "
        + (f"{jobs} runs at a time, one thread each." if jobs > 1 else "one run at a time.")
        + (f" **Quick mode** ({QUICK_EPOCHS} epochs, {QUICK_EXAMPLES} signals per split): the "
           "numbers are not meaningful." if quick else ""),
        "",
    ]
    for network, spec in NETWORKS.items():
        rows = [r for r in results if r["network"] == network]
        best = max(rows, key=lambda r: r["test_acc"])
        desc = ", ".join(f"{k}={v}" for k, v in spec.items())
        parts += [
            f"## {network.upper()} ({desc})",
            "",
            markdown_table(
                ["optimizer", "lr", "test accuracy", "best val accuracy", "epochs", "time (s)"],
                [[("**" + r["optimizer"] + "**") if r is best else r["optimizer"], r["lr"],
                  f"{r['test_acc']:.1%}", f"{r['best_val_acc']:.1%}", r["epochs_run"],
                  f"{r['time']:.1f}"] for r in rows],
            ),
            "",
            f"Best: **{best['optimizer']}** with {best['test_acc']:.1%} test accuracy.",
            "",
        ]
        for key, label, logy in (("val_acc", "validation accuracy", False),
                                 ("train_loss", "training loss", True)):
            rel = f"plots/{network}_{key}.png"
            line_plot(out / rel,
                      [(r["optimizer"], [h["epoch"] for h in r["history"]],
                        [h[key] for h in r["history"]]) for r in rows],
                      xlabel="epoch", ylabel=label, title=f"{network.upper()}: {label}",
                      logy=logy)
            parts += [f"![{network} {label}]({rel})", ""]
    report = out / "report.md"
    report.write_text("\n".join(parts), encoding="utf-8")
    return report


def demo_command(args: argparse.Namespace) -> int:
    """The ``ravine demo`` handler: runs the demo and prints where its report is."""
    report = run_demo(args.out, quick=args.quick, seed=args.seed, jobs=args.jobs,
                      quiet=args.quiet)
    print(f"report: {report}")
    return 0
