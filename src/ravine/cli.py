"""The ``ravine`` command line.

Commands:

``ravine train CONFIG.yaml [--set KEY=VALUE ...] [--resume] [--overwrite] [--quiet] [--nproc N]``
    Train as the YAML file says (format: :mod:`ravine.config`) and write a run directory.
    ``--nproc N`` trains data-parallel in N processes started by ``torch.distributed.run``;
    ``torchrun ... -m ravine train CONFIG.yaml`` does the same across machines
    (:mod:`ravine.train.distributed`).
``ravine demo [--out DIR] [--quick] [--seed N] [--jobs N]``
    Compare the lecture's optimizers on MNIST-1D (:mod:`ravine.train.demo`).

Exit status:

* 0 — success;
* 1 — a data-parallel process failed outside ravine's checks (killed, crashed, lost its peers);
  the message names the rank;
* 2 — a usage error: a bad config, option or value, a missing or unreadable data file, a missing,
  truncated, foreign or mismatched checkpoint, a run directory already in use. One line on
  standard error, no traceback (``--debug`` shows it);
* 3 — training stopped on a non-finite loss (the message names the step; the last good
  checkpoint is intact);
* 130 — interrupted (Ctrl-C); ``--resume`` continues from the last checkpoint.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["main", "EXIT_USAGE", "EXIT_NONFINITE", "EXIT_INTERRUPTED"]

EXIT_USAGE = 2
EXIT_NONFINITE = 3
EXIT_INTERRUPTED = 130


def _train(args: argparse.Namespace) -> int:
    from ravine.config import load_config
    from ravine.train import distributed, fit

    config = load_config(args.config, args.set)
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


def _launch(args: argparse.Namespace, config: Any) -> int:
    """``ravine train --nproc N``: check what can be checked here, then start the workers."""
    import torch

    from ravine.train import distributed

    if distributed.is_worker():
        raise ValueError("--nproc starts its own processes; under torchrun leave it out "
                         "(torchrun's --nproc-per-node sets their number)")
    if config.batch_size % args.nproc:
        raise ValueError(
            "batch_size is the global minibatch and must be divisible by --nproc, "
            f"got batch_size={config.batch_size}, --nproc={args.nproc}"
        )
    if args.nproc > 1 and config.sync_batchnorm:
        distributed.check_sync_batchnorm(torch.device(config.device))
    flags = [f"--{name}" for name in ("resume", "overwrite", "quiet", "debug")
             if getattr(args, name)]
    status = distributed.launch([args.config, *(f"--set={item}" for item in args.set), *flags],
                                args.nproc, debug=args.debug)
    last = Path(config.run_dir) / "checkpoints" / "last.pt"
    if status in (1, EXIT_INTERRUPTED) and last.exists():
        print(f"ravine train: --resume (with --nproc {args.nproc}) continues from {last}",
              file=sys.stderr)
    return status


def _demo(args: argparse.Namespace) -> int:
    from ravine.train.demo import run_demo

    report = run_demo(args.out, quick=args.quick, seed=args.seed, jobs=args.jobs,
                      quiet=args.quiet)
    print(f"report: {report}")
    return 0


def _diagnose(args: argparse.Namespace) -> int:
    from ravine.train.diagnose import diagnose_command

    return diagnose_command(args)


def _int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type accepting integers >= ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected an integer >= {minimum}, got {text!r}"
            ) from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {value}")
        return value

    return parse


positive_int = _int_at_least(1)
_seed = _int_at_least(0)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``ravine`` command."""
    parser = argparse.ArgumentParser(
        prog="ravine",
        description="Optimizing neural networks with PyTorch: train, compare, diagnose.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser("train", help="train from a YAML config and write a run directory")
    train.add_argument("config", help="run configuration (YAML); see ravine.config")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config key, e.g. --set optimizer.lr=0.1 (repeatable)")
    train.add_argument("--resume", action="store_true",
                       help="continue the run in run_dir from checkpoints/last.pt")
    train.add_argument("--overwrite", action="store_true",
                       help="replace a previous run's files in run_dir")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.add_argument("--nproc", type=positive_int, default=None, metavar="N",
                       help="train data-parallel in N processes (torch.distributed.run); "
                            "batch_size stays the global minibatch")
    train.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    train.set_defaults(handler=_train)

    demo = commands.add_parser("demo", help="compare the lecture's optimizers on MNIST-1D")
    demo.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    demo.add_argument("--quick", action="store_true", help="a few seconds' reduced version")
    demo.add_argument("--seed", type=_seed, default=0, help="random seed (default: 0)")
    demo.add_argument("--jobs", type=positive_int, default=None,
                      help="parallel training processes (default: up to 2, one per core)")
    demo.add_argument("--quiet", action="store_true", help="no per-run progress lines")
    demo.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    demo.set_defaults(handler=_demo)

    diagnose = commands.add_parser(
        "diagnose", help="curvature, gradient noise and advice at a run's checkpoint"
    )
    diagnose.add_argument("path", help="a run directory (or a training config)")
    diagnose.add_argument("--checkpoint", choices=("init", "best", "last"), default="last",
                          help="which weights to diagnose (default: last)")
    diagnose.add_argument("--examples", type=positive_int, default=2048,
                          help="training examples the measurements use (default: 2048)")
    diagnose.add_argument("--out", default=None, help="output folder (default: the run dir)")
    diagnose.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    diagnose.set_defaults(handler=_diagnose)

    commands.add_parser("compare", help="benchmark optimizers on a suite (ravine compare -h)")
    commands.add_parser("tune", help="tune hyperparameters with Optuna (ravine tune -h)")
    return parser


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``ravine`` with ``argv`` (default: ``sys.argv[1:]``) and return the exit status."""
    from ravine.config import ConfigError
    from ravine.train import CheckpointError, NonFiniteLossError

    argv = list(sys.argv[1:] if argv is None else argv)
    # compare, tune and diagnose parse their own arguments.
    delegated = {"compare": "ravine.bench.cli:compare_main", "tune": "ravine.bench.cli:tune_main"}
    if argv and argv[0] in delegated:
        module, func = delegated[argv[0]].split(":")
        return getattr(importlib.import_module(module), func)(argv[1:])
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except NonFiniteLossError as exc:
        if args.debug:
            raise
        return _fail(args, _one_line(exc), EXIT_NONFINITE)
    except KeyboardInterrupt:
        return _fail(args, "interrupted", EXIT_INTERRUPTED)
    except (ConfigError, CheckpointError, ValueError, OSError) as exc:
        if args.debug:
            raise
        return _fail(args, f"error: {_one_line(exc)}", EXIT_USAGE)
    except Exception as exc:
        from ravine.train import distributed

        # In a data-parallel job a traceback from every rank would bury the one that matters.
        if args.debug or not distributed.is_worker():
            raise
        if distributed.is_peer_failure(exc):
            return _fail(args, f"stopped: another process failed ({_one_line(exc)})", 1, exc)
        return _fail(args, f"error: {type(exc).__name__}: {_one_line(exc)}", 1, exc)


def _fail(args: argparse.Namespace, message: str, status: int,
          exc: BaseException | None = None) -> int:
    """Report ``message`` (naming the rank in a data-parallel worker) and return ``status``."""
    from ravine.train.distributed import report_failure

    report_failure(args.command, message, status, exc)
    return status


if __name__ == "__main__":
    sys.exit(main())
