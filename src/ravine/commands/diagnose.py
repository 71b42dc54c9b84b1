"""``ravine diagnose RUN_DIR``: curvature, gradient noise and advice at a run's checkpoint.

The model is rebuilt from the run's resolved ``config.yaml`` by
:meth:`~ravine.config.RunConfig.build` (the same data split and initial weights as training,
both from the run's seed) and loaded from

* ``init``: the initial weights (no checkpoint needed),
* ``best``: ``checkpoints/best.pt`` (saved at the true parameters), or
* ``last``: ``checkpoints/last.pt``; for the interim-point optimizers the parameters there are
  ``θ + αv``, so the optimizer state is loaded too and the model moved to the true ``θ``.

:func:`ravine.diagnostics.report` then writes ``diagnostics.json``, ``diagnostics.md`` and
``plots/hessian_spectrum.png`` / ``plots/gradient_noise.png`` into the run directory, and
``report.md`` is rewritten with the advice section. A training config (YAML) works too: its
``run_dir`` is used when it holds a run, otherwise only ``init`` is possible.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ravine.commands._runload import CHECKPOINTS, load_run, read_run_config
from ravine.diagnostics import DiagnosticsReport, report
from ravine.train.metrics import loss_for, resolve_loss
from ravine.train.report import write_report

__all__ = ["diagnose_run", "diagnose_command", "CHECKPOINTS"]

ADAPTIVE = ("adagrad", "rmsprop", "rmsprop-nesterov", "adam", "adamw")


def diagnose_run(
    path: str | Path,
    *,
    checkpoint: str = "last",
    examples: int = 2048,
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
    steps, lr = loaded.steps, loaded.lr
    name = config.optimizer.name
    clipped = [r["clipped"] for r in steps if r.get("clipped") is not None]
    out_dir = Path(out) if out is not None else root
    out_dir.mkdir(parents=True, exist_ok=True)
    result = report(
        model,
        resolve_loss(loss_for(config.loss, splits.train))[0],
        splits.train,
        out_dir,
        lr=lr,
        batch_size=config.batch_size,
        momentum=config.optimizer.given().get("momentum"),
        adaptive=name in ADAPTIVE,
        clip_fraction=(sum(clipped) / len(clipped)) if config.clip_norm and clipped else None,
        max_examples=examples,
        seed=config.seed if seed is None else seed,
        title=f"Diagnostics at the {checkpoint} checkpoint",
    )
    if (out_dir / "metrics.jsonl").exists():
        write_report(out_dir)
    return result


def diagnose_command(args: argparse.Namespace) -> int:
    """The ``ravine diagnose`` handler: prints the label, the advice and the files written."""
    result = diagnose_run(args.path, checkpoint=args.checkpoint, examples=args.examples,
                          out=args.out)
    c = result.classification
    print(f"{args.path} ({args.checkpoint}): {c.label} — {c.reason}")
    for sentence in result.advice:
        print(f"- {sentence}")
    print("wrote: " + ", ".join(str(f) for f in result.files))
    return 0
