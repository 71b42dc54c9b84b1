"""Plots and ``report.md`` of a run directory, rebuilt from its ``metrics.jsonl``.

The line plots are drawn by :mod:`ravine.train.lineplot` (Pillow, about 5 ms a plot, two at a
time, no matplotlib); only the diagnostics plot of a run that measured diagnostics uses matplotlib.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ravine._io import safe_yaml
from ravine.diagnostics.plots import plot_history
from ravine.train.lineplot import line_plot, line_plots
from ravine.train.metrics import read_metrics

__all__ = ["line_plot", "write_report", "markdown_table"]


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return "-" if value is None else str(value)


def _column(records: list[dict[str, Any]], key: str) -> list[Any]:
    return [r.get(key) for r in records]


def _describe(section: Any) -> str:
    """``nesterov (lr=0.05, momentum=0.9)`` from an optimizer or schedule section."""
    if isinstance(section, str):
        return section
    if not isinstance(section, dict):
        return "-"
    options = ", ".join(f"{k}={v}" for k, v in section.items() if k != "name" and v is not None)
    return f"{section.get('name', '?')} ({options})" if options else str(section.get("name", "?"))


def write_report(run_dir: str | os.PathLike[str]) -> Path:
    """Draw ``plots/*.png`` and write ``report.md`` for the run in ``run_dir``.

    Plots: ``loss.png`` and ``accuracy.png`` (train vs validation per epoch), ``lr.png`` (per
    logged step) and ``grad_norm.png`` (pre-clip global norm per logged step, with the clip
    threshold). Returns the path of ``report.md``.
    """
    root = Path(run_dir)
    epochs, steps, summary = read_metrics(root / "metrics.jsonl")
    config_path = root / "config.yaml"
    config = (
        safe_yaml(config_path.read_text(encoding="utf-8"), str(config_path))
        if config_path.exists()
        else {}
    )
    config = config or {}
    plots = root / "plots"
    made: list[tuple[str, str]] = []

    jobs: list[tuple[Path, list[Any], dict[str, Any]]] = []

    def plot(title: str, name: str, series: list[Any], **options: Any) -> None:
        jobs.append((plots / name, series, {"title": title, **options}))
        made.append((title, f"plots/{name}"))

    ep = _column(epochs, "epoch")
    loss_series = [("train", ep, _column(epochs, "train_loss"))]
    if any("val_loss" in r for r in epochs):
        loss_series.append(("validation", ep, _column(epochs, "val_loss")))
    if epochs:
        plot("Loss", "loss.png", loss_series, xlabel="epoch", ylabel="loss",
             legend="upper right")
    if any("train_acc" in r for r in epochs):
        acc_series = [("train", ep, _column(epochs, "train_acc"))]
        if any("val_acc" in r for r in epochs):
            acc_series.append(("validation", ep, _column(epochs, "val_acc")))
        plot("Accuracy", "accuracy.png", acc_series, xlabel="epoch", ylabel="accuracy",
             legend="lower right")
    if steps:
        st = _column(steps, "step")
        plot("Learning rate", "lr.png", [("lr", st, _column(steps, "lr"))], xlabel="step",
             ylabel="learning rate")
        norms = _column(steps, "grad_norm")
        if any(v is not None for v in norms):
            clip = summary.get("clip_norm")
            plot("Gradient norm", "grad_norm.png", [("pre-clip norm", st, norms)],
                 xlabel="step", ylabel="gradient norm", logy=True,
                 hline=None if clip is None else (clip, f"clip_norm = {clip:g}"))
    line_plots(jobs)  # two at a time

    measured = [
        {
            "step": r["step"],
            **{k.removeprefix("diag_"): v for k, v in r.items() if k.startswith("diag_")},
        }
        for r in epochs
        if any(k.startswith("diag_") for k in r)
    ]
    if measured:
        plot_history(measured, plots / "diagnostics.png")
        made.append(("Diagnostics during training", "plots/diagnostics.png"))

    rows: list[tuple[str, Any]] = [
        ("optimizer", _describe(config.get("optimizer"))),
        ("schedule", _describe(config.get("schedule"))),
        (
            "epochs run",
            f"{summary.get('epochs_run', len(epochs))} of {config.get('epochs', '?')}"
            + (" (stopped early)" if summary.get("stopped_early") else ""),
        ),
    ]
    if summary.get("best_epoch") is not None:
        rows.append(
            (
                "best epoch",
                f"{summary['best_epoch']} ({summary['monitor']} = {_cell(summary['best_metric'])})",
            )
        )
    if epochs:
        last = epochs[-1]
        for key in ("train_loss", "train_acc", "val_loss", "val_acc"):
            if key in last:
                rows.append((f"final {key}", last[key]))
    if summary.get("returned_epoch") is not None:
        rows.append(
            (
                "returned weights",
                f"epoch {summary['returned_epoch']}"
                + (" (best, restored)" if summary["returned_epoch"] != len(epochs) else ""),
            )
        )
    for key in ("test_loss", "test_acc"):
        if key in summary:
            rows.append((f"{key} (returned weights)", summary[key]))
    if "wall_time" in summary:
        rows.append(("wall time", f"{summary['wall_time']:.1f} s"))

    parts = [f"# Run report: {root.name}", "", markdown_table(["", ""], rows), ""]
    if epochs:
        keys = [
            k
            for k in (
                "epoch",
                "train_loss",
                "train_acc",
                "val_loss",
                "val_acc",
                "lr",
                "grad_norm",
                "time",
            )
            if k in epochs[0]
        ]
        shown = epochs if len(epochs) <= 12 else epochs[:3] + epochs[-9:]
        parts += [
            "## Epochs" + (" (first 3 and last 9)" if shown is not epochs else ""),
            "",
            markdown_table(keys, [[r.get(k) for k in keys] for r in shown]),
            "",
        ]
    for title, rel in made:
        parts += [f"## {title}", "", f"![{title}]({rel})", ""]
    # Written by `ravine diagnose RUN_DIR`: curvature, noise and advice at one checkpoint.
    diagnosed = root / "diagnostics.md"
    if diagnosed.exists():
        parts += [
            diagnosed.read_text(encoding="utf-8").strip(),
            "",
            "![Hessian spectrum](plots/hessian_spectrum.png)",
            "",
            "![Gradient noise](plots/gradient_noise.png)",
            "",
        ]
    report = root / "report.md"
    report.write_text("\n".join(parts), encoding="utf-8")
    return report
