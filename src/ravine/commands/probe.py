"""``ravine probe RUN_DIR``: check candidate fixes by forking short continuations of a run.

The run is loaded at its checkpoint by :func:`ravine.commands._runload.load_run` (the model, the
optimizer the run recorded with its state, the learning rate in force; at ``last`` the exact
interim-point pair, so the baseline fork continues as the run would have, apart from the
example order and the schedule, which forks hold constant). :func:`ravine.diagnostics.probe.probe`
then trains the baseline and one fork per ``--fix`` (default: lr × 0.5, lr × 2 and the ``fix`` of
every finding of :func:`ravine.diagnostics.diagnose` at the same checkpoint, so the report says
whether each finding's advice actually helped this model) on the run's
training split with its loss and batch size, each on ``--steps × batch_size`` examples, and the
command prints the ranked table and writes ``probe.json``, ``probe.md`` and ``plots/probe.png``
into the run directory (or ``--out``), each atomically. Forks train in fp32 on shuffle-then-
blocks minibatches of every training example: the run's ``batching: random``, ``drop_last``,
``accumulate`` and mixed precision are not replayed.

``--fix`` takes ``KEY=VALUE[,KEY=VALUE...]`` (one fork, values read as YAML scalars), with keys
from :data:`ravine.diagnostics.probe.FIX_KEYS`, e.g. ``--fix lr=0.05``,
``--fix batch_size=256,lr=0.2``, ``--fix optimizer=adam``, ``--fix lr_scale=0.5``.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Any

from ravine._checks import suggest
from ravine._io import YAMLError, json_ready, safe_yaml, write_atomic, write_json_atomic
from ravine.commands._runload import LoadedRun, load_run
from ravine.commands.diagnose import run_history
from ravine.diagnostics import DiagnosticsWarning, diagnose
from ravine.diagnostics.probe import DEFAULT_FIXES, FIX_KEYS, ProbeResult, probe
from ravine.train.metrics import loss_for, resolve_loss

__all__ = ["parse_fix", "probe_run", "probe_command", "PROBE_CHECKPOINTS"]

PROBE_CHECKPOINTS = ("last", "best")


def parse_fix(text: str) -> dict[str, Any]:
    """``"batch_size=256,lr=0.2"`` -> ``{"batch_size": 256, "lr": 0.2}``.

    Raises:
        ValueError: one line naming the bad item or key (with the closest valid key).
    """
    fix: dict[str, Any] = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key or not value.strip():
            raise ValueError(f"--fix expects KEY=VALUE[,KEY=VALUE...], got {text!r}")
        if key not in FIX_KEYS:
            raise ValueError(
                f"--fix: unknown key {key!r}{suggest(key, FIX_KEYS)} (keys: {', '.join(FIX_KEYS)})"
            )
        if key in fix:
            raise ValueError(f"--fix {text!r} gives {key} twice")
        try:
            fix[key] = safe_yaml(value, "--fix")
        except YAMLError:
            raise ValueError(f"--fix {key}: cannot read {value!r} as a value") from None
    return fix


def finding_fixes(loaded: LoadedRun, loss_fn: Any, seed: int) -> list[tuple[str, dict[str, Any]]]:
    """``(label, fix)`` of each finding of :func:`~ravine.diagnostics.diagnose` (default budget)
    at the loaded checkpoint, with the run's optimizer, batch size and step history."""
    config = loaded.config
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DiagnosticsWarning)
        diagnosis = diagnose(
            loaded.model,
            loss_fn,
            loaded.run.splits.train,
            optimizer=loaded.optimizer,
            lr=loaded.lr,
            batch_size=config.batch_size,
            seed=seed,
            history=run_history(loaded.steps, config.clip_norm),
        )
    return [(f.code, dict(f.fix)) for f in diagnosis.findings if f.fix]


def probe_run(
    path: str | Path,
    *,
    checkpoint: str = "last",
    steps: int = 200,
    fixes: list[dict[str, Any]] | None = None,
    out: str | Path | None = None,
    seed: int | None = None,
    progress: bool = False,
) -> tuple[ProbeResult, list[Path], LoadedRun]:
    """Probe a run (see the module docstring); returns the result, the files written and the
    loaded run.

    Args:
        path: a run directory written by ``ravine train`` or a training config file.
        checkpoint: ``last`` or ``best``.
        steps: baseline steps per fork (forks see ``steps × batch_size`` examples).
        fixes: fix dicts (default: lr × 0.5, lr × 2 and each diagnosis finding's fix, labelled
            by its code).
        out: where to write (default: the run directory).
        seed: seed of the example order and the evaluation subset (default: the run's seed).
        progress: show a progress bar on standard error.
    """
    if checkpoint not in PROBE_CHECKPOINTS:
        raise ValueError(
            f"checkpoint must be one of {', '.join(PROBE_CHECKPOINTS)}, got {checkpoint!r}"
        )
    loaded = load_run(path, checkpoint, true_params=False)
    config, train = loaded.config, loaded.run.splits.train
    loss: dict[str, Any] = {}
    if config.compute_loss is not None:
        loss["compute_loss"] = config.compute_loss
    else:
        loss["loss_fn"] = resolve_loss(loss_for(config.loss, train))[0]
    seed = config.seed if seed is None else seed
    if fixes is None:
        fixes = list(DEFAULT_FIXES)
        if "loss_fn" in loss:
            fixes += finding_fixes(loaded, loss["loss_fn"], seed)
    result = probe(
        loaded.model,
        loaded.optimizer,
        train,
        **loss,
        fixes=fixes,
        steps=steps,
        batch_size=config.batch_size,
        seed=seed,
        device=config.device,
        progress=progress,
    )
    out_dir = Path(out) if out is not None else loaded.root
    files = [out_dir / "probe.json", out_dir / "probe.md", out_dir / "plots" / "probe.png"]
    write_json_atomic(result.to_dict(), files[0])
    title = f"Probe at the {checkpoint} checkpoint"
    write_atomic(
        files[1],
        lambda handle: handle.write(
            result.to_markdown(title=title) + "\n![forked loss curves](plots/probe.png)\n"
        ),
    )
    result.plot(files[2])
    return result, files, loaded


def _print_table(result: ProbeResult, title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for name in (
        "rank",
        "fork",
        "loss start",
        "loss end",
        "decrease / 1k ex",
        "decrease / s",
        "helped",
    ):
        table.add_column(
            name,
            justify="left" if name in ("fork", "helped") else "right",
            overflow="fold",
            min_width=15 if name == "fork" else None,
        )
    for rank, label in enumerate(result.ranking, 1):
        f = result.fork(label)
        helped = "—" if f.helped is None else ("yes" if f.helped else "no")
        table.add_row(
            str(rank),
            f.label,
            f"{f.initial_loss:.4g}",
            "diverged" if f.diverged else f"{f.final_loss:.4g}",
            f"{1000 * f.decrease_per_example:.4g}",
            f"{f.decrease_per_second:.4g}",
            helped,
        )
    Console(soft_wrap=True).print(table)


def probe_command(args: argparse.Namespace) -> int:
    """The ``ravine probe`` handler: prints the ranked forks and the files written."""
    fixes = [parse_fix(text) for text in args.fix] if args.fix else None
    result, files, loaded = probe_run(
        args.path,
        checkpoint=args.checkpoint,
        steps=args.steps,
        fixes=fixes,
        out=args.out,
        seed=args.seed,
        progress=not args.quiet and sys.stderr.isatty(),
    )
    if loaded.mismatch is not None:
        print(
            f"ravine probe: using the run's recorded config; the given file differs at "
            f"{loaded.mismatch}",
            file=sys.stderr,
        )
    if args.json:
        print(json.dumps(json_ready(result.to_dict()), indent=1))
        return 0
    _print_table(
        result,
        f"{args.path} ({args.checkpoint}): {result.examples:,} examples per "
        "fork, ranked by loss decrease per example",
    )
    for sentence in result.verdicts():
        print(f"- {sentence}")
    print("wrote: " + ", ".join(str(f) for f in files))
    return 0
