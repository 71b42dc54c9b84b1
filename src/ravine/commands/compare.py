"""``ravine compare SUITE.yaml``: run a benchmark suite resumably and write its report.

``ravine compare SUITE.yaml [--out DIR] [--seeds N] [--jobs N] [--storage URL] [--quiet]``
    Run the suite (format: :mod:`ravine.bench.config`) into ``DIR`` (default: the suite's
    ``output``, else ``runs/<suite name>``), skipping the runs an earlier, interrupted invocation
    finished, and write ``DIR/report.md`` (:func:`ravine.bench.run_suite`). ``--jobs N`` runs the
    cells (one optimizer on one problem: its tuning study, then its seeds) in ``N`` worker
    processes, with the same results as ``--jobs 1``.

``ravine compare SUITE.yaml --worker [--out DIR] [--storage URL] [--claim-timeout S]``
    Share the suite with other ``--worker`` processes (on this machine or on others that see the
    same ``DIR``): each cell is claimed and run by one worker; a dead worker's cell is taken over
    after ``S`` seconds (default 600); the worker that finishes last writes the report
    (:func:`ravine.bench.compare.run_worker`). ``--storage`` puts the tuning studies in an Optuna
    RDB (``postgresql://...``) or journal file (``journal:PATH``) instead of ``DIR``.

Exit status: 0 success; 1 cells failed (one line each; the others finished; rerun to retry);
2 a usage error (bad suite or option: one line on standard error, no traceback unless
``--debug``); 130 interrupted (rerun the same command to resume).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from ravine.bench.compare import DEFAULT_CLAIM_TIMEOUT, CellFailures, run_suite, run_worker
from ravine.bench.config import load_suite
from ravine.commands._common import UsageParser, guarded, positive_int

__all__ = ["compare_main", "compare_parser"]


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text}")
    return value


def compare_parser() -> argparse.ArgumentParser:
    """The argument parser of ``ravine compare``."""
    parser = UsageParser(
        prog="ravine compare", description="Compare optimizers on a suite of problems, resumably."
    )
    parser.add_argument("suite", help="suite file (YAML); see ravine.bench.config")
    parser.add_argument(
        "--out", help="output folder (default: the suite's output, else runs/<suite name>)"
    )
    parser.add_argument(
        "--seeds", type=positive_int, help="evaluation seeds 0..N-1, replacing the suite's seeds"
    )
    parser.add_argument(
        "--jobs",
        type=positive_int,
        default=1,
        help="worker processes (default 1); results do not depend on it",
    )
    parser.add_argument(
        "--storage",
        help="Optuna storage of the tuning studies: journal:PATH "
        "or an RDB URL (default: journal file in the output folder)",
    )
    parser.add_argument(
        "--worker",
        action="store_true",
        help="share the suite's cells with other --worker processes",
    )
    parser.add_argument(
        "--claim-timeout",
        type=_positive_float,
        default=DEFAULT_CLAIM_TIMEOUT,
        help="seconds after which a dead worker's cell is taken over "
        f"(default {DEFAULT_CLAIM_TIMEOUT:g})",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    return parser


def _compare(args: argparse.Namespace) -> int:
    if args.worker and args.jobs > 1:
        raise ValueError(
            f"--worker runs one cell at a time, got --jobs {args.jobs}; start "
            "several workers instead"
        )
    suite = load_suite(args.suite)
    if args.seeds is not None:
        suite = suite.model_copy(update={"seeds": list(range(args.seeds))})
    out = Path(args.out or suite.output or Path("runs") / suite.name)
    quiet = True if args.quiet else None
    try:
        if args.worker:
            outcome = run_worker(
                suite, out, storage=args.storage, claim_timeout=args.claim_timeout, quiet=quiet
            )
        else:
            outcome = run_suite(suite, out, jobs=args.jobs, storage=args.storage, quiet=quiet)
    except CellFailures as exc:
        for line in exc.lines:
            print(f"ravine compare: {line}", file=sys.stderr)
        return 1
    if args.worker:
        print(
            f"{outcome.cells_run} cells, {outcome.executed} runs and {outcome.trials_run} "
            f"tuning trials done by this worker; report: {outcome.report}"
        )
    else:
        print(
            f"{outcome.executed} runs done, {outcome.skipped} already finished; "
            f"report: {outcome.report}"
        )
    return 0


def compare_main(argv: Sequence[str]) -> int:
    """``ravine compare`` with the arguments ``argv``; returns the exit status."""
    return guarded("compare", argv, compare_parser(), _compare)
