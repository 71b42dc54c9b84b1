"""``ravine compare SUITE.yaml``: run a benchmark suite resumably and write its report.

``ravine compare SUITE.yaml [--out DIR] [--seeds N] [--quiet]``
    Run the suite (format: :mod:`ravine.bench.config`) into ``DIR`` (default: the suite's
    ``output``, else ``runs/<suite name>``), skipping the runs an earlier, interrupted invocation
    finished, and write ``DIR/report.md`` (:func:`ravine.bench.run_suite`).

Exit status: 0 success; 2 a usage error (bad suite or option: one line on standard error, no
traceback unless ``--debug``); 130 interrupted (rerun the same command to resume).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from ravine.bench.compare import run_suite
from ravine.bench.config import load_suite
from ravine.commands._common import UsageParser, guarded, positive_int

__all__ = ["compare_main", "compare_parser"]


def compare_parser() -> argparse.ArgumentParser:
    """The argument parser of ``ravine compare``."""
    parser = UsageParser(prog="ravine compare",
                         description="Compare optimizers on a suite of problems, resumably.")
    parser.add_argument("suite", help="suite file (YAML); see ravine.bench.config")
    parser.add_argument("--out", help="output folder (default: the suite's output, else "
                        "runs/<suite name>)")
    parser.add_argument("--seeds", type=positive_int,
                        help="evaluation seeds 0..N-1, replacing the suite's seeds")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    return parser


def _compare(args: argparse.Namespace) -> int:
    suite = load_suite(args.suite)
    if args.seeds is not None:
        suite = suite.model_copy(update={"seeds": list(range(args.seeds))})
    out = Path(args.out or suite.output or Path("runs") / suite.name)
    outcome = run_suite(suite, out, quiet=True if args.quiet else None)
    print(f"{outcome.executed} runs done, {outcome.skipped} already finished; "
          f"report: {outcome.report}")
    return 0


def compare_main(argv: Sequence[str]) -> int:
    """``ravine compare`` with the arguments ``argv``; returns the exit status."""
    return guarded("compare", argv, compare_parser(), _compare)
