"""``ravine train CONFIG.yaml``: train as a run config says, in one process or ``--nproc N``.

The run is built by :meth:`ravine.config.RunConfig.build` and trained by :func:`ravine.fit`;
with ``--nproc N`` the command checks what it can here and starts N workers through
:func:`ravine.commands.launcher.launch`, each of which runs ``ravine train`` again.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from ravine.commands._common import EXIT_INTERRUPTED
from ravine.commands.launcher import launch
from ravine.config import RunConfig, load_config
from ravine.train import distributed, fit

__all__ = ["train_command"]


def train_command(args: argparse.Namespace) -> int:
    """The ``ravine train`` handler: trains, prints a summary line, returns the exit status."""
    config = load_config(args.config, args.set, notice=_notice(args))
    if args.nproc is not None:
        return _launch(args, config)
    with distributed.process_group(config.device) as env:
        run = config.build()
        result = fit(
            run.model,
            run.splits.train,
            run.splits.val,
            test=run.splits.test,
            **config.fit_kwargs(),
            run_dir=config.run_dir,
            quiet=True if args.quiet else None,
            resume=args.resume,
            overwrite=args.overwrite,
            config=config.model_dump(mode="json", exclude_none=True),
        )
    if env is not None and env.rank != 0:
        return 0
    line = f"trained {len(result.history)} epochs in {result.wall_time:.1f} s"
    if result.stopped_early:
        line += " (stopped early)"
    if result.best_epoch is not None:
        line += f"; best epoch {result.best_epoch} ({result.monitor} {result.best_metric:.4g})"
    if result.test:
        line += "; " + ", ".join(f"{k} {v:.4g}" for k, v in result.test.items())
    print(line)
    print(f"report: {Path(config.run_dir) / 'report.md'}")
    return 0


def _notice(args: argparse.Namespace) -> Callable[[str], None]:
    """Say a config notice (e.g. options dropped by ``--set optimizer.name=...``) once: in the
    one process, or in rank 0 of the workers (``--nproc`` leaves it to them; they get the same
    ``--set``)."""
    env = distributed.worker_env()
    if (env is None and args.nproc is None) or (env is not None and env.rank == 0):
        return lambda message: print(f"ravine train: {message}", file=sys.stderr)
    return lambda message: None


def _launch(args: argparse.Namespace, config: RunConfig) -> int:
    """``ravine train --nproc N``: check what can be checked here, then start the workers."""
    if distributed.is_worker():
        raise ValueError(
            "--nproc starts its own processes; under torchrun leave it out "
            "(torchrun's --nproc-per-node sets their number)"
        )
    if config.batch_size % args.nproc:
        raise ValueError(
            "batch_size is the global minibatch and must be divisible by --nproc, "
            f"got batch_size={config.batch_size}, --nproc={args.nproc}"
        )
    if args.nproc > 1 and config.sync_batchnorm:
        distributed.check_sync_batchnorm(torch.device(config.device))
    flags = [
        f"--{name}" for name in ("resume", "overwrite", "quiet", "debug") if getattr(args, name)
    ]
    status = launch(
        [args.config, *(f"--set={item}" for item in args.set), *flags], args.nproc, debug=args.debug
    )
    last = Path(config.run_dir) / "checkpoints" / "last.pt"
    if status in (1, EXIT_INTERRUPTED) and last.exists():
        print(
            f"ravine train: --resume (with --nproc {args.nproc}) continues from {last}",
            file=sys.stderr,
        )
    return status
