"""``ravine diagnose RUN_DIR``: ranked findings, curvature and gradient noise at a checkpoint.

The model is rebuilt from the run's recorded ``config.yaml`` by
:meth:`~ravine.config.RunConfig.build` (the same data split and initial weights as training,
both from the run's seed) and loaded from

* ``init``: the initial weights (no checkpoint needed),
* ``best``: ``checkpoints/best.pt`` (saved at the true parameters), or
* ``last``: ``checkpoints/last.pt``; for the interim-point optimizers the parameters there are
  ``θ + αv``, so the optimizer state is loaded too and the model moved to the true ``θ``.

The optimizer is the run's own, rebuilt from its recorded config with the checkpoint's state
(momentum buffers, adaptive accumulators) and the learning rate in force at that step, so the
step-size rule is the one that run followed. The recent step records of ``metrics.jsonl`` give
the findings the loss and gradient-norm history and the fraction of clipped steps.

:func:`ravine.diagnostics.report` writes ``diagnostics.json`` (numbers and ranked findings),
``diagnostics.md`` and ``plots/hessian_spectrum.png`` / ``plots/gradient_noise.png`` into the run
directory, and ``report.md`` is rewritten with the findings. The command prints the findings as a
table (``--json``: the :meth:`~ravine.diagnostics.Diagnosis.to_dict` of the diagnosis). A
training config (YAML) works too: the run in its ``run_dir`` is diagnosed with the run's recorded
settings, and a difference between the two is reported.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from ravine.commands._runload import CHECKPOINTS, load_run, read_run_config
from ravine.diagnostics import DiagnosticsReport, DiagnosticsWarning, report
from ravine.diagnostics.findings import jsonable
from ravine.train.metrics import loss_for, resolve_loss
from ravine.train.report import write_report

__all__ = ["diagnose_run", "diagnose_command", "run_history", "CHECKPOINTS"]

ADAPTIVE = ("adagrad", "rmsprop", "rmsprop-nesterov", "adam", "adamw")
#: How many of the last step records make the loss/gradient-norm history.
HISTORY_STEPS = 200
_SEVERITY_STYLE = {"critical": "bold red", "warning": "yellow", "info": "cyan"}


def run_history(steps: list[dict[str, Any]], clip_norm: float | None) -> dict[str, Any]:
    """The ``history`` of :func:`~ravine.diagnostics.diagnose` from a run's step records."""
    recent = steps[-HISTORY_STEPS:]
    history: dict[str, Any] = {
        "loss_history": [float(r["loss"]) for r in recent if r.get("loss") is not None],
        "grad_norm_history": [
            float(r["grad_norm"]) for r in recent if r.get("grad_norm") is not None
        ],
    }
    if clip_norm is not None:
        clipped = [bool(r["clipped"]) for r in recent if r.get("clipped") is not None]
        if clipped:
            history["clip_fraction"] = sum(clipped) / len(clipped)
        history["clip_norm"] = float(clip_norm)
    return {k: v for k, v in history.items() if v != []}


def diagnose_run(
    path: str | Path,
    *,
    checkpoint: str = "last",
    examples: int = 1024,
    out: str | Path | None = None,
    seed: int | None = None,
) -> DiagnosticsReport:
    """Diagnose a run (see the module docstring); returns the :class:`DiagnosticsReport`.

    Args:
        path: a run directory written by ``ravine train`` or a training config file.
        checkpoint: ``init``, ``best`` or ``last``.
        examples: training examples the measurements use (at most).
        out: where to write (default: the run directory).
        seed: seed of the probes and subsets (default: the run's seed).
    """
    if checkpoint not in CHECKPOINTS:
        raise ValueError(f"checkpoint must be one of {', '.join(CHECKPOINTS)}, got {checkpoint!r}")
    config, _, _ = read_run_config(path)
    if config.compute_loss is not None:
        raise ValueError(
            f"{path}: the run trains through compute_loss; the curvature and noise diagnostics "
            "need (x, y) batches and a loss(output, target) (call ravine.diagnostics on your "
            "model with such a loss instead)"
        )
    loaded = load_run(path, checkpoint)
    config, root, splits, model = loaded.config, loaded.root, loaded.run.splits, loaded.model
    out_dir = Path(out) if out is not None else root
    out_dir.mkdir(parents=True, exist_ok=True)
    result = report(
        model,
        resolve_loss(loss_for(config.loss, splits.train))[0],
        splits.train,
        out_dir,
        lr=loaded.lr,
        batch_size=config.batch_size,
        optimizer=loaded.optimizer,
        history=run_history(loaded.steps, config.clip_norm),
        max_examples=examples,
        max_hvps=100,
        trace_hvps=30,
        density_probes=2,
        density_steps=32,
        seed=config.seed if seed is None else seed,
        title=f"Diagnostics at the {checkpoint} checkpoint",
    )
    if (out_dir / "metrics.jsonl").exists():
        write_report(out_dir)
    return result


def _table(result: DiagnosticsReport, title: str) -> Table:
    table = Table(title=title, show_lines=True, expand=True)
    table.add_column("#", no_wrap=True)
    table.add_column("severity", no_wrap=True)
    table.add_column("code", no_wrap=True)
    table.add_column("finding", ratio=4, overflow="fold")
    table.add_column("fix", ratio=1, overflow="fold")
    for rank, f in enumerate(result.diagnosis.findings, 1):
        fix = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                        for k, v in f.fix.items()) or "—"
        style = _SEVERITY_STYLE.get(f.severity, "")
        table.add_row(str(rank), f"[{style}]{f.severity}[/]", f.code, f.message, fix)
    return table


def diagnose_command(args: argparse.Namespace) -> int:
    """The ``ravine diagnose`` handler: the ranked findings as a table (or JSON), files written."""
    console = Console(soft_wrap=False, stderr=args.json)
    with warnings.catch_warnings(record=True) as caught, console.status(
        f"diagnosing {args.path} at the {args.checkpoint} checkpoint (curvature, noise, findings)"
    ):
        warnings.simplefilter("always", DiagnosticsWarning)
        result = diagnose_run(args.path, checkpoint=args.checkpoint, examples=args.examples,
                              out=args.out)
    config, _, mismatch = read_run_config(args.path)
    if args.json:
        payload = result.diagnosis.to_dict()
        payload["label"] = result.classification.label
        payload["files"] = [str(f) for f in result.files]
        print(json.dumps(jsonable(payload), indent=2, ensure_ascii=False))
        return 0
    notes = []
    if mismatch:
        notes.append(f"the config given differs from the run's recorded one ({mismatch}); "
                     "the run's recorded settings were used")
    lr, configured = result.numbers.get("lr"), config.optimizer.given().get("lr")
    if config.schedule is not None and lr is not None and configured and lr < 0.999 * configured:
        notes.append(f"the learning rate {lr:.3g} is what the schedule had reached at this "
                     f"checkpoint (configured {configured:.3g}); the step-size findings judge it")
    if any("batch norm/dropout" in str(w.message) for w in caught):
        notes.append("batch norm and dropout were measured in eval mode (running statistics, "
                     "no dropout), as the model is evaluated")
    c = result.classification
    console.print(_table(result, f"{args.path} ({args.checkpoint}): {c.label}"))
    for note in notes:
        console.print(f"note: {note}")
    for skipped in result.diagnosis.skipped:
        console.print(f"[dim]not checked: {skipped}[/]")
    print("wrote: " + ", ".join(str(f) for f in result.files))
    sys.stdout.flush()
    return 0
