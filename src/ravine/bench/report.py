"""The ``ravine compare`` report: ``report.md``, ``summary.json`` and ``plots/*.png``.

Everything is computed from the files the runs wrote (``runs/*/*/seed-*/metrics.jsonl``,
``result.json``, ``trajectory.json`` and ``tuning/*/*.json``), so a report can be rebuilt at any
time from a suite directory.

Statistics, per problem and optimizer over the evaluation seeds:

* final metric: mean ± sample standard deviation (``ddof=1``) over all runs, the plain number
  for a single run; a diverged run makes the mean infinite or NaN and is counted in the
  "diverged" column;
* epochs and seconds to target: the first epoch whose monitor meets the target (``<=`` for
  metrics to minimize, ``>=`` to maximize) and the run's clock at that epoch; mean ± std over the
  runs that reach it (the plain number when one run does), the others counted as "never"
  (reported, not dropped);
* performance-profile cost: the *median* over seeds of the epochs (or seconds) to target, a run
  that never reaches it counting as ∞, so an optimizer solves a problem when more than half of
  its runs reach the target (see :mod:`ravine.bench.profile`).

Every plot of a report draws an optimizer in the same colour (:func:`optimizer_colors`: a fixed
colour per registry optimizer, shared by the curves, the lr sensitivity, the trajectories and the
performance profile), and axes with epochs or steps have integer ticks.
"""

from __future__ import annotations

import colorsys
import json
import math
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ravine._io import write_json_atomic
from ravine.bench.config import SuiteSpec
from ravine.bench.problems import DeterministicProblem, Problem, Rosenbrock
from ravine.bench.profile import performance_profile, plot_performance_profile

__all__ = [
    "RunRecord",
    "Aggregate",
    "load_runs",
    "reach",
    "mean_std",
    "aggregate",
    "profile_costs",
    "write_report",
    "optimizer_colors",
    "OPTIMIZER_COLORS",
    "PROFILE_TAUS",
]

PROFILE_TAUS = (1.0, 2.0, 4.0, 8.0)

# One colour per registry optimizer, the same in every report (matplotlib's tab10, in the order
# of ravine.optim.names()); labels that are not registry names take the spares in suite order.
OPTIMIZER_COLORS = {
    "sgd": "tab:blue",
    "momentum": "tab:orange",
    "nesterov": "tab:green",
    "adagrad": "tab:purple",
    "rmsprop": "tab:brown",
    "rmsprop-nesterov": "tab:pink",
    "adam": "tab:red",
    "adamw": "tab:cyan",
}
_SPARE_COLORS = (
    "tab:olive",
    "tab:gray",
    "navy",
    "darkgoldenrod",
    "teal",
    "indigo",
    "maroon",
    "yellowgreen",
    "slateblue",
    "sienna",
)


def optimizer_colors(labels: Sequence[str], names: Sequence[str] | None = None) -> dict[str, str]:
    """The colour of each optimizer label, the same in every plot of a report.

    A label that is a registry name gets that optimizer's fixed colour (``OPTIMIZER_COLORS``);
    another label gets the colour of its registry optimizer (``names``, parallel to ``labels``)
    when no other label of the suite has taken it, else the next spare colour. The mapping
    depends only on the labels and names, so it is stable from plot to plot and run to run.
    """
    names = list(names) if names is not None else list(labels)
    if len(names) != len(labels):
        raise ValueError(
            f"names must match labels, got {len(names)} names for {len(labels)} labels"
        )
    colors: dict[str, str] = {}
    for label in labels:
        if label in OPTIMIZER_COLORS:
            colors[label] = OPTIMIZER_COLORS[label]
    for label, name in zip(labels, names, strict=True):
        if (
            label not in colors
            and name in OPTIMIZER_COLORS
            and OPTIMIZER_COLORS[name] not in colors.values()
        ):
            colors[label] = OPTIMIZER_COLORS[name]
    # Past the spares, evenly spaced hues keep the colours distinct for any number of labels.
    hues = [colorsys.hls_to_rgb(i / len(labels), 0.35, 0.8) for i in range(len(labels))]
    spares = iter(
        [c for c in _SPARE_COLORS if c not in colors.values()]
        + ["#" + "".join(f"{round(255 * v):02x}" for v in rgb) for rgb in hues]
    )
    for label in labels:
        if label not in colors:
            colors[label] = next(spares)
    return colors


@dataclass
class RunRecord:
    """One finished run read back from its directory."""

    problem: str
    optimizer: str
    seed: int
    lr: float
    hp: dict[str, Any]
    final: dict[str, float]
    diverged: bool
    wall_time: float
    history: list[dict[str, Any]]
    trajectory: list[list[float]] | None
    path: Path


def safe_name(label: str) -> str:
    """``label`` made safe as a single path component."""
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", label).strip("._") or "_"


def _float(value: Any) -> float:
    return float(value) if value is not None else math.nan


def load_runs(out_dir: str | Path) -> list[RunRecord]:
    """Every finished run under ``out_dir/runs`` (directories without ``result.json`` skipped)."""
    runs = []
    for result_file in sorted(Path(out_dir).glob("runs/*/*/seed-*/result.json")):
        directory = result_file.parent
        info = json.loads(result_file.read_text())
        history = []
        with open(directory / "metrics.jsonl") as handle:
            for line in handle:
                record = json.loads(line)
                if record.get("kind") == "epoch":
                    history.append(
                        {
                            k: _float(v) if isinstance(v, str) and k != "kind" else v
                            for k, v in record.items()
                        }
                    )
        trajectory_file = directory / "trajectory.json"
        trajectory = None
        if trajectory_file.exists():
            trajectory = [
                [float(c) for c in point] for point in json.loads(trajectory_file.read_text())
            ]
        runs.append(
            RunRecord(
                problem=info["problem"],
                optimizer=info["optimizer"],
                seed=int(info["seed"]),
                lr=float(info["lr"]),
                hp=info.get("hp", {}),
                final={k: _float(v) for k, v in info["final"].items()},
                diverged=bool(info["diverged"]),
                wall_time=float(info["wall_time"]),
                history=history,
                trajectory=trajectory,
                path=directory,
            )
        )
    return runs


def reach(
    history: Sequence[Mapping[str, Any]], monitor: str, target: float | None, mode: str
) -> tuple[int, float] | None:
    """``(epoch, time)`` of the first record (epoch >= 1) whose ``monitor`` meets ``target``."""
    if target is None:
        return None
    for record in history:
        value = record.get(monitor)
        if record.get("epoch", 0) < 1 or not isinstance(value, (int, float)):
            continue
        if (value <= target) if mode == "min" else (value >= target):
            return int(record["epoch"]), float(record["time"])
    return None


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (``ddof=1``; 0 for fewer than two values)."""
    a = np.asarray(values, dtype=float)
    if a.size == 0:
        return math.nan, math.nan
    std = float(a.std(ddof=1)) if a.size > 1 else 0.0
    return float(a.mean()), std


@dataclass
class Aggregate:
    """The seed statistics of one optimizer on one problem (see the module docstring)."""

    n: int
    final_mean: float
    final_std: float
    diverged: int
    reached: int
    epochs_mean: float
    epochs_std: float
    time_mean: float
    time_std: float
    median_epochs: float
    median_time: float


def aggregate(runs: Sequence[RunRecord], problem: Problem) -> Aggregate:
    """Statistics of ``runs`` (one optimizer on ``problem``, one run per seed)."""
    finals = [r.final.get(problem.final_metric, math.nan) for r in runs]
    hits = [reach(r.history, problem.monitor, problem.target, problem.mode) for r in runs]
    epochs = [h[0] for h in hits if h is not None]
    times = [h[1] for h in hits if h is not None]
    final_mean, final_std = mean_std(finals)
    epochs_mean, epochs_std = mean_std(epochs)
    time_mean, time_std = mean_std(times)
    return Aggregate(
        n=len(runs),
        final_mean=final_mean,
        final_std=final_std,
        diverged=sum(r.diverged for r in runs),
        reached=len(epochs),
        epochs_mean=epochs_mean,
        epochs_std=epochs_std,
        time_mean=time_mean,
        time_std=time_std,
        median_epochs=float(np.median([h[0] if h else math.inf for h in hits])),
        median_time=float(np.median([h[1] if h else math.inf for h in hits])),
    )


def profile_costs(
    stats: Mapping[tuple[str, str], Aggregate],
    problems: Sequence[str],
    optimizers: Sequence[str],
    cost: str,
) -> np.ndarray:
    """The ``(problems, optimizers)`` cost table of the performance profile."""
    table = np.full((len(problems), len(optimizers)), math.inf)
    for i, p in enumerate(problems):
        for j, o in enumerate(optimizers):
            agg = stats.get((p, o))
            if agg is not None:
                table[i, j] = agg.median_epochs if cost == "epochs" else agg.median_time
    return table


def _g(value: float, digits: int = 4) -> str:
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.{digits}g}"


def _pm(mean: float, std: float, n: int) -> str:
    """``mean ± std`` over ``n`` runs; the plain mean for one run (no "± 0") or an undefined
    spread (no "± nan")."""
    if n < 2 or not math.isfinite(std):
        return _g(mean)
    return f"{_g(mean)} ± {_g(std, 2)}"


def _hp_text(lr: float, hp: Mapping[str, Any]) -> str:
    shown = {k: v for k, v in hp.items() if k not in ("track_grad_norm", "compile")}
    extra = ", ".join(f"{k}={_g(v, 3) if isinstance(v, float) else v}" for k, v in shown.items())
    return f"{_g(lr, 3)}" + (f" ({extra})" if extra else "")


def _figure(width: float, height: float) -> Any:
    # A bare Figure (Agg canvas, no pyplot) leaves the caller's matplotlib state alone.
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _plot_curves(
    problem: Problem, by_opt: Mapping[str, list[RunRecord]], path: Path, colors: Mapping[str, str]
) -> Any:
    from matplotlib.ticker import MaxNLocator

    fig = _figure(6.5, 4)
    ax = fig.subplots()
    log_scale = problem.mode == "min" and isinstance(problem, DeterministicProblem)
    for opt, runs in by_opt.items():
        length = max(len(r.history) for r in runs)
        table = np.full((len(runs), length), np.nan)
        for i, r in enumerate(runs):
            values = [_float(rec.get(problem.monitor)) for rec in r.history]
            table[i, : len(values)] = values
        if log_scale:
            table = np.where(table > 0, table, np.nan)
        epochs = np.arange(1, length + 1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns after divergence
            mean = np.nanmean(table, axis=0)
            low, high = np.nanmin(table, axis=0), np.nanmax(table, axis=0)
        ax.plot(epochs, mean, label=opt, linewidth=1.5, color=colors[opt])
        ax.fill_between(epochs, low, high, color=colors[opt], alpha=0.2, linewidth=0)
    if problem.target is not None:
        ax.axhline(problem.target, color="k", linestyle="--", linewidth=1, label="target")
    if log_scale:
        ax.set_yscale("log")
    ax.set_xlabel("epoch" if not isinstance(problem, DeterministicProblem) else "step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(problem.monitor)
    seeds = {r.seed for runs in by_opt.values() for r in runs}
    ax.set_title(
        f"{problem.label}: mean over seeds, band = min..max"
        if len(seeds) > 1
        else f"{problem.label} (seed {seeds.pop()})"
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=110)
    return fig


def _plot_sensitivity(
    problem: Problem, tuning: Mapping[str, dict], path: Path, colors: Mapping[str, str]
) -> Any:
    """Trial value against lr for every tuned optimizer; None when nothing was tuned."""
    if not tuning:
        return None
    fig = _figure(6.5, 4)
    ax = fig.subplots()
    finite = [
        t["value"]
        for info in tuning.values()
        for t in info["trials"]
        if isinstance(t["value"], (int, float)) and math.isfinite(t["value"])
    ]
    log_scale = problem.mode == "min" and bool(finite) and min(finite) > 0
    worst = (max(finite) if problem.mode == "min" else min(finite)) if finite else 1.0
    for opt, info in tuning.items():
        done = sorted(
            (t for t in info["trials"] if "lr" in t["params"]), key=lambda t: t["params"]["lr"]
        )
        complete = [
            (t["params"]["lr"], _float(t["value"])) for t in done if t["state"] == "COMPLETE"
        ]
        ok = [(lr, v) for lr, v in complete if math.isfinite(v)]
        bad = [lr for lr, v in complete if not math.isfinite(v)]
        pruned = [
            (t["params"]["lr"], _float(t["last_intermediate"]))
            for t in done
            if t["state"] == "PRUNED" and t["last_intermediate"] is not None
        ]
        color = colors.get(opt, "black")  # a tuning file of an optimizer the suite left out
        ax.plot(
            [p[0] for p in ok],
            [p[1] for p in ok],
            "o-",
            label=opt,
            markersize=4,
            linewidth=1,
            color=color,
        )
        if pruned:
            ax.plot(
                [p[0] for p in pruned],
                [p[1] for p in pruned],
                "o",
                mfc="none",
                color=color,
                markersize=5,
            )
        if bad:
            ax.plot(bad, [worst] * len(bad), "x", color=color, markersize=7)
        chosen = info["chosen"]["lr"]
        ax.axvline(chosen, color=color, linestyle=":", linewidth=1)
    ax.set_xscale("log")
    if log_scale:
        ax.set_yscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel(f"{problem.monitor} after the last epoch")
    ax.set_title(
        f"{problem.label}: lr sensitivity (x = diverged, hollow = pruned, : = chosen)", fontsize=9
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=110)
    return fig


def _plot_trajectories(
    problem: DeterministicProblem,
    by_opt: Mapping[str, list[RunRecord]],
    path: Path,
    colors: Mapping[str, str],
) -> Any:
    """The iterates of each optimizer's first run over the loss contours; None without any."""
    import torch

    paths = {
        o: np.asarray(runs[0].trajectory)
        for o, runs in by_opt.items()
        if runs and runs[0].trajectory
    }
    if not paths:
        return None
    start = next(iter(paths.values()))[0]
    optimum = _minimizer(problem)
    corners = np.vstack([start, optimum])
    lo, hi = corners.min(axis=0), corners.max(axis=0)
    span = max(float((hi - lo).max()), 1e-3)
    # The box holds the start, the optimum and the paths, but not a diverging path's far end.
    limit_lo, limit_hi = lo - 1.0 * span, hi + 1.0 * span
    for pts in paths.values():
        finite = pts[np.isfinite(pts).all(axis=1)]
        inside = finite[((finite >= limit_lo) & (finite <= limit_hi)).all(axis=1)]
        if len(inside):
            lo, hi = np.minimum(lo, inside.min(axis=0)), np.maximum(hi, inside.max(axis=0))
    margin = 0.08 * (hi - lo) + 1e-9
    lo, hi = lo - margin, hi + margin
    gx, gy = np.meshgrid(np.linspace(lo[0], hi[0], 200), np.linspace(lo[1], hi[1], 200))
    grid = torch.as_tensor(np.stack([gx, gy], axis=-1), dtype=torch.float64)
    z = problem.loss(grid).numpy()
    positive = z[z > 0]
    levels = np.geomspace(max(positive.min(), positive.max() * 1e-8), positive.max(), 18)

    n = len(paths)
    cols = min(3, n)
    rows = math.ceil(n / cols)
    aspect = (hi[1] - lo[1]) / (hi[0] - lo[0])
    width = 4.2 * cols
    height = min(max(4.2 * aspect + 0.7, 1.0), 5.0) * rows + 0.4
    fig = _figure(width, height)
    axes = fig.subplots(rows, cols, squeeze=False, sharex=True, sharey=True)
    for ax, (opt, pts) in zip(axes.flat, paths.items(), strict=False):
        ax.contour(gx, gy, z, levels=levels, colors="0.6", linewidths=0.6)
        ax.plot(
            pts[:, 0],
            pts[:, 1],
            "-",
            color=colors[opt],
            linewidth=1,
            marker=".",
            markersize=2.5,
            label=opt,
        )
        ax.plot(*start, "ko", markersize=4)
        ax.plot(*optimum, "k*", markersize=8)
        ax.set_xlim(lo[0], hi[0])
        ax.set_ylim(lo[1], hi[1])
        if 0.1 < aspect < 10:
            ax.set_aspect("equal")
        ax.set_title(f"{opt} (lr {_g(by_opt[opt][0].lr, 3)})", fontsize=9)
        # Every panel is labelled and ticked: with an empty slot below it, a shared axis
        # would otherwise leave a panel of the top row without numbers.
        ax.set_xlabel("θ₁ (first parameter)", fontsize=8)
        ax.set_ylabel("θ₂ (second parameter)", fontsize=8)
        ax.tick_params(labelbottom=True, labelleft=True, labelsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle(
        f"{problem.label}: iterates over the loss contours (seed "
        f"{next(iter(by_opt.values()))[0].seed}; ● start, ★ minimum)",
        fontsize=10,
    )
    fig.savefig(path, dpi=110)
    return fig


def _minimizer(problem: DeterministicProblem) -> np.ndarray:
    if isinstance(problem, Rosenbrock):
        return np.array([problem.a, problem.a**2])
    return np.zeros(problem.dim)


def _load_tuning(out_dir: Path, problem: str) -> dict[str, dict]:

    out = {}
    for path in sorted((out_dir / "tuning" / safe_name(problem)).glob("*.json")):
        info = json.loads(path.read_text())
        for t in info["trials"]:
            t["value"] = _float(t["value"]) if isinstance(t["value"], str) else t["value"]
        out[info["optimizer"]] = info
    return out


def _target_text(problem: Problem) -> str:
    if problem.target is None:
        return "no target"
    sign = "≤" if problem.mode == "min" else "≥"
    return f"target {problem.monitor} {sign} {_g(problem.target)}"


def _profile_section(
    suite: SuiteSpec,
    stats: Mapping[tuple[str, str], Aggregate],
    problems: Mapping[str, Problem],
    optimizers: Sequence[str],
    plots: Path,
    colors: Mapping[str, str],
) -> list[str]:
    labels = [label for label, p in problems.items() if p.target is not None]
    lines = ["## Performance profile", ""]
    if not labels:
        return [*lines, "No problem has a target, so there is no cost to compare.", ""]
    cost_name = "epochs to target" if suite.profile_cost == "epochs" else "seconds to target"
    costs = profile_costs(stats, labels, optimizers, suite.profile_cost)
    _, rho = performance_profile(costs, [*PROFILE_TAUS, math.inf])
    left_out = [label for label in problems if label not in labels]
    lines += [
        f"Cost: {cost_name}, the median over seeds with a run that never reaches the target "
        "counting as ∞ (so a problem counts as solved when more than half of the runs reach "
        "its target). ρ(τ) = fraction of the problems on which the optimizer's cost is within "
        "a factor τ of the best optimizer's (Dolan & Moré 2002)"
        + (f"; problems without a target are left out ({', '.join(left_out)})" if left_out else "")
        + ".",
        "",
        "| optimizer | " + " | ".join(f"ρ({t:g})" for t in PROFILE_TAUS) + " | solved |",
        "|---|" + "---|" * (len(PROFILE_TAUS) + 1),
    ]
    for j, o in enumerate(optimizers):
        lines.append(f"| {o} | " + " | ".join(f"{v:.2f}" for v in rho[:, j]) + " |")
    plot_performance_profile(
        costs,
        optimizers,
        plots / "profile.png",
        cost_name=cost_name,
        colors=[colors[o] for o in optimizers],
    )
    return [*lines, "", "![performance profile](plots/profile.png)", ""]


def write_report(suite: SuiteSpec, out_dir: str | Path, *, problems: Mapping[str, Problem]) -> Path:
    """Write ``report.md``, ``summary.json`` and the plots for the runs in ``out_dir``."""

    out_dir = Path(out_dir)
    plots = out_dir / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    runs = load_runs(out_dir)
    optimizers = [o.label for o in suite.optimizers]
    colors = optimizer_colors(optimizers, [o.name for o in suite.optimizers])
    grouped: dict[str, dict[str, list[RunRecord]]] = {}
    for r in runs:
        if r.problem in problems and r.optimizer in optimizers and r.seed in suite.seed_list:
            grouped.setdefault(r.problem, {}).setdefault(r.optimizer, []).append(r)
    stats = {
        (p, o): aggregate(rs, problems[p])
        for p, by_opt in grouped.items()
        for o, rs in by_opt.items()
    }

    tuning_text = {
        "tpe": f"tuned by Optuna TPE with {suite.tuning.trials} trials per optimizer "
        f"(log-uniform lr{', median pruning' if suite.tuning.pruning else ''}, "
        f"tuning seed {suite.tuning.seed})",
        "grid": f"the best of the grid {', '.join(_g(x, 3) for x in suite.tuning.grid or [])} "
        f"for every optimizer (tuning seed {suite.tuning.seed})",
        "none": "fixed by the suite",
    }[suite.tuning.method]
    fixed = [o.label for o in suite.optimizers if isinstance(o.lr, float) and not o.searched()]
    lines = [
        f"# Optimizer comparison: {suite.name}",
        "",
        f"{len(problems)} problems × {len(optimizers)} optimizers × {len(suite.seed_list)} "
        f"seeds ({', '.join(map(str, suite.seed_list))}). Learning rates: {tuning_text}"
        + (f"; fixed for {', '.join(fixed)}" if fixed and suite.tuning.method != "none" else "")
        + ".",
        "",
        "Final metric: mean ± sample std over seeds. Epochs / time to target: mean ± std over "
        "the runs that reach the target (a plain number where one run does); the others are "
        "counted as *never*, not dropped."
        if len(suite.seed_list) > 1
        else "One seed: every number is that run's own (no spread over seeds). Epochs / time to "
        "target: a run that does not reach the target is counted as *never*.",
        "",
    ]

    lines += _profile_section(suite, stats, problems, optimizers, plots, colors)
    summary: dict[str, Any] = {
        "suite": suite.name,
        "profile_cost": suite.profile_cost,
        "problems": {},
    }
    for label, problem in problems.items():
        by_opt = grouped.get(label, {})
        tuning = _load_tuning(out_dir, label)
        lines += [
            f"## {label}",
            "",
            f"{problem.describe()}; {problem.epochs} "
            f"{'steps' if isinstance(problem, DeterministicProblem) else 'epochs'}; "
            f"{_target_text(problem)}.",
            "",
            f"| optimizer | lr | final {problem.final_metric} | diverged | reached target | "
            "epochs to target | time to target (s) |",
            "|---|---|---|---|---|---|---|",
        ]
        summary["problems"][label] = {}
        for o in optimizers:
            if o not in by_opt:
                continue
            agg = stats[(label, o)]
            first = by_opt[o][0]
            never = agg.n - agg.reached
            note = f" ({never} never)" if never and agg.reached else ""
            epochs = (
                _pm(agg.epochs_mean, agg.epochs_std, agg.reached) + note if agg.reached else "never"
            )
            secs = _pm(agg.time_mean, agg.time_std, agg.reached) + note if agg.reached else "never"
            final = _pm(agg.final_mean, agg.final_std, agg.n)
            lines.append(
                f"| {o} | {_hp_text(first.lr, first.hp)} | {final} "
                f"| {agg.diverged}/{agg.n} | {agg.reached}/{agg.n} | {epochs} | {secs} |"
            )
            summary["problems"][label][o] = {"lr": first.lr, "hp": first.hp, **vars(agg)}
        lines.append("")
        name = safe_name(label)
        if by_opt:
            _plot_curves(problem, by_opt, plots / f"{name}-curves.png", colors)
            lines += [f"![{label} curves](plots/{name}-curves.png)", ""]
        if _plot_sensitivity(problem, tuning, plots / f"{name}-lr.png", colors) is not None:
            lines += [f"![{label} lr sensitivity](plots/{name}-lr.png)", ""]
        if (
            isinstance(problem, DeterministicProblem)
            and problem.dim == 2
            and _plot_trajectories(problem, by_opt, plots / f"{name}-trajectories.png", colors)
            is not None
        ):
            lines += [f"![{label} trajectories](plots/{name}-trajectories.png)", ""]

    lines += [
        "## Runs",
        "",
        "| problem | optimizer | seed | final | epochs to target | time to target (s) | "
        "wall time (s) | directory |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, problem in problems.items():
        for o in optimizers:
            for r in sorted(grouped.get(label, {}).get(o, []), key=lambda r: r.seed):
                hit = reach(r.history, problem.monitor, problem.target, problem.mode)
                final = r.final.get(problem.final_metric, math.nan)
                lines.append(
                    f"| {label} | {o} | {r.seed} | {_g(final)}"
                    f"{' (diverged)' if r.diverged else ''} | "
                    f"{hit[0] if hit else 'never'} | {_g(hit[1]) if hit else 'never'} | "
                    f"{_g(r.wall_time)} | {r.path.relative_to(out_dir)} |"
                )
    report = out_dir / "report.md"
    report.write_text("\n".join(lines) + "\n")
    write_json_atomic(summary, out_dir / "summary.json")
    return report
