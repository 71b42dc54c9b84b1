"""The ``ravine`` command line: the top-level parser, exit codes and failure reporting.

Commands (one module each in this package):

``ravine train CONFIG.yaml [--set KEY=VALUE ...] [--resume] [--overwrite] [--quiet] [--nproc N]``
    Train as the YAML file says (format: :mod:`ravine.config`) and write a run directory
    (:mod:`ravine.commands.train`). ``--nproc N`` trains data-parallel in N processes started by
    ``torch.distributed.run`` (:mod:`ravine.commands.launcher`); ``torchrun ... -m ravine train
    CONFIG.yaml`` does the same across machines (:mod:`ravine.train.distributed`).
``ravine demo [--out DIR] [--quick] [--seed N] [--jobs N]``
    Compare the lecture's optimizers on MNIST-1D (:mod:`ravine.commands.demo`).
``ravine diagnose RUN_DIR [--checkpoint init|best|last] [--examples N] [--out DIR] [--json]``
    Ranked findings (with fixes), curvature and gradient noise at a run's checkpoint
    (:mod:`ravine.commands.diagnose`).
``ravine probe RUN_DIR [--checkpoint last|best] [--steps N] [--fix KEY=VALUE ...] [--out DIR]``
    Fork short continuations (current settings and candidate fixes) from a checkpoint and rank
    them by loss decrease (:mod:`ravine.commands.probe`).
``ravine gallery [--out DIR] [--quick] [--only NAME ...] [--seed N]``
    The lecture's claims as measured figures with captions (:mod:`ravine.commands.gallery`).
``ravine compare SUITE.yaml ...`` and ``ravine tune CONFIG.yaml ...``
    Benchmark suites and Optuna studies (:mod:`ravine.commands.compare`,
    :mod:`ravine.commands.tune`); they parse their own arguments.

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

The command modules are imported when their command runs, so that ``ravine --help`` does not
import torch.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Callable, Sequence

from ravine._interrupts import redeliver_swallowed
from ravine.commands._common import (
    EXIT_INTERRUPTED,
    EXIT_NONFINITE,
    EXIT_USAGE,
    one_line,
    positive_int,
    seed_int,
)

__all__ = ["main", "run", "build_parser", "EXIT_USAGE", "EXIT_NONFINITE", "EXIT_INTERRUPTED"]


# The handlers import their command's module on use: keeps `ravine --help` fast (no torch).
def _train(args: argparse.Namespace) -> int:
    from ravine.commands.train import train_command

    return train_command(args)


def _demo(args: argparse.Namespace) -> int:
    from ravine.commands.demo import demo_command

    return demo_command(args)


def _diagnose(args: argparse.Namespace) -> int:
    from ravine.commands.diagnose import diagnose_command

    return diagnose_command(args)


def _probe(args: argparse.Namespace) -> int:
    from ravine.commands.probe import probe_command

    return probe_command(args)


def _gallery(args: argparse.Namespace) -> int:
    from ravine.commands.gallery import gallery_command

    return gallery_command(args)


def _compare(argv: Sequence[str]) -> int:
    from ravine.commands.compare import compare_main

    return compare_main(argv)


def _tune(argv: Sequence[str]) -> int:
    from ravine.commands.tune import tune_main

    return tune_main(argv)


# compare and tune parse their own arguments.
_DELEGATED: dict[str, Callable[[Sequence[str]], int]] = {"compare": _compare, "tune": _tune}


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
    demo.add_argument("--seed", type=seed_int, default=0, help="random seed (default: 0)")
    demo.add_argument("--jobs", type=positive_int, default=None,
                      help="parallel training processes (default: up to 2, one per core)")
    demo.add_argument("--quiet", action="store_true", help="no per-run progress lines")
    demo.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    demo.set_defaults(handler=_demo)

    diagnose = commands.add_parser(
        "diagnose", help="ranked findings, curvature and gradient noise at a run's checkpoint"
    )
    diagnose.add_argument("path", help="a run directory (or a training config)")
    diagnose.add_argument("--checkpoint", choices=("init", "best", "last"), default="last",
                          help="which weights to diagnose (default: last)")
    diagnose.add_argument("--examples", type=positive_int, default=1024,
                          help="training examples the measurements use (default: 1024)")
    diagnose.add_argument("--out", default=None, help="output folder (default: the run dir)")
    diagnose.add_argument("--json", action="store_true",
                          help="print the diagnosis (findings, numbers, skipped) as JSON")
    diagnose.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    diagnose.set_defaults(handler=_diagnose)

    gallery = commands.add_parser(
        "gallery", help="the lecture's claims as measured figures with captions"
    )
    gallery.add_argument("--out", default="gallery", help="output folder (default: gallery)")
    gallery.add_argument("--quick", action="store_true",
                         help="reduced versions (fewer seeds and steps, about a minute)")
    gallery.add_argument("--only", nargs="+", metavar="NAME", default=None,
                         help="run only these entries")
    gallery.add_argument("--seed", type=seed_int, default=0, help="base seed (default 0)")
    gallery.add_argument("--verbose", action="store_true", help="print every caption")
    gallery.add_argument("--quiet", action="store_true", help="no progress bar")
    gallery.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    gallery.set_defaults(handler=_gallery)

    probe = commands.add_parser(
        "probe", help="fork short continuations with candidate fixes and rank them"
    )
    probe.add_argument("path", help="a run directory (or a training config)")
    probe.add_argument("--checkpoint", choices=("last", "best"), default="last",
                       help="where to fork from (default: last)")
    probe.add_argument("--steps", type=positive_int, default=200,
                       help="baseline steps per fork; every fork sees steps x batch_size "
                            "examples (default: 200)")
    probe.add_argument("--fix", action="append", default=[], metavar="KEY=VALUE[,...]",
                       help="one fork, e.g. --fix lr=0.05, --fix batch_size=256,lr=0.2, "
                            "--fix optimizer=adam (repeatable; default: lr_scale=0.5 and 2)")
    probe.add_argument("--out", default=None, help="output folder (default: the run dir)")
    probe.add_argument("--seed", type=seed_int, default=None,
                       help="seed of the example order (default: the run's seed)")
    probe.add_argument("--json", action="store_true", help="print the result as JSON")
    probe.add_argument("--quiet", action="store_true", help="no progress bar")
    probe.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    probe.set_defaults(handler=_probe)

    commands.add_parser("compare", help="benchmark optimizers on a suite (ravine compare -h)")
    commands.add_parser("tune", help="tune hyperparameters with Optuna (ravine tune -h)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``ravine`` with ``argv`` (default: ``sys.argv[1:]``) and return the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in _DELEGATED:
        return _DELEGATED[argv[0]](argv[1:])
    args = build_parser().parse_args(argv)
    # Imported after parsing: keeps `ravine --help` fast (these modules import torch).
    from ravine._checks import ConfigError
    from ravine.train import CheckpointError, NonFiniteLossError

    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        with redeliver_swallowed():  # a Ctrl-C that lands in a GC callback still stops it
            return handler(args)
    except NonFiniteLossError as exc:
        if args.debug:
            raise
        return _fail(args, one_line(exc), EXIT_NONFINITE)
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # exiting: a late Ctrl-C must not kill it
        return _fail(args, "interrupted", EXIT_INTERRUPTED)
    except (ConfigError, CheckpointError, ValueError, OSError) as exc:
        if args.debug:
            raise
        return _fail(args, f"error: {one_line(exc)}", EXIT_USAGE)
    except Exception as exc:
        from ravine.commands.launcher import is_peer_failure
        from ravine.train.distributed import is_worker

        # In a data-parallel job a traceback from every rank would bury the one that matters.
        if args.debug or not is_worker():
            raise
        if is_peer_failure(exc):
            return _fail(args, f"stopped: another process failed ({one_line(exc)})", 1, exc)
        return _fail(args, f"error: {type(exc).__name__}: {one_line(exc)}", 1, exc)


def run() -> None:
    """The ``ravine`` program (console script and ``python -m ravine``): :func:`main`, then exit.

    Data-parallel workers and interrupted commands leave without the interpreter's teardown
    (:func:`ravine._io.exit_now`): after a Ctrl-C that Python code caught, CPython would otherwise
    turn the exit status 130 into a death by SIGINT whenever the ``KeyboardInterrupt`` had passed
    through an ``exec`` of a string on its way (seen inside sqlalchemy under ``ravine tune``). A
    Ctrl-C after the command has finished exits with the command's status.
    """
    from ravine._io import exit_now

    try:
        status = main()
    except KeyboardInterrupt:
        # A Ctrl-C before the command's own handling began (while Python imports torch, say):
        # one line too, and nothing more imported (torch may be half-imported).
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        name = " ".join(["ravine", *[a for a in sys.argv[1:] if not a.startswith("-")][:1]])
        print(f"{name}: interrupted", file=sys.stderr)
        exit_now(EXIT_INTERRUPTED)
    # The command is done and its output written. A Ctrl-C during the interpreter's teardown
    # (torch's takes a moment) ends the process with the command's own status at once; left to
    # Python's handler it would raise in the teardown, or kill the process by SIGINT once the
    # interpreter has put back the default handler.
    signal.signal(signal.SIGINT, lambda signum, frame: exit_now(status))
    from ravine.train.distributed import exit_worker, is_worker

    if is_worker():  # a data-parallel worker: done and on disk; skip gloo's teardown aborts
        exit_worker(status)
    if status == EXIT_INTERRUPTED:
        exit_now(status)
    sys.exit(status)


def _fail(args: argparse.Namespace, message: str, status: int,
          exc: BaseException | None = None) -> int:
    """Report ``message`` (naming the rank in a data-parallel worker) and return ``status``."""
    # Imported on failure only, like the handlers' modules (the launcher imports torch).
    from ravine.commands.launcher import report_failure

    report_failure(args.command, message, status, exc)
    return status

