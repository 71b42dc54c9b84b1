"""What every ``ravine`` command shares: exit codes, argument-parsing helpers, error handling.

Kept apart from :mod:`ravine.commands` so that the command modules can import it without
importing the package's ``main`` (no import circle).
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Callable, Sequence

from ravine._interrupts import redeliver_swallowed

__all__ = ["EXIT_USAGE", "EXIT_NONFINITE", "EXIT_INTERRUPTED", "UsageParser", "guarded",
           "one_line", "positive_int", "seed_int"]

EXIT_USAGE = 2
EXIT_NONFINITE = 3
EXIT_INTERRUPTED = 130


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
seed_int = _int_at_least(0)


class UsageParser(argparse.ArgumentParser):
    """argparse with usage errors as exit status 2 and one line (argparse's own convention)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def one_line(exc: BaseException) -> str:
    """``exc``'s message on one line (its type's name when it has none)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def guarded(name: str, argv: Sequence[str], parser: argparse.ArgumentParser,
            body: Callable[[argparse.Namespace], int]) -> int:
    """Parse ``argv`` and run ``body``; usage errors and Ctrl-C become one line and an exit code.

    For the commands that parse their own arguments (``compare``, ``tune``): a bad option or
    value, a ``ValueError`` or an ``OSError`` exits with :data:`EXIT_USAGE`, Ctrl-C with
    :data:`EXIT_INTERRUPTED` (rerunning the command resumes); ``--debug`` shows the traceback.
    """
    try:
        args = parser.parse_args(list(argv))
    except SystemExit as exc:
        return int(exc.code or 0)
    try:
        with redeliver_swallowed():  # a Ctrl-C that lands in a GC callback still stops it
            return body(args)
    except KeyboardInterrupt:
        # the process is on its way out: a second Ctrl-C (or one delivered late) must not turn
        # the exit status 130 into a death by SIGINT during interpreter shutdown
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        print(f"ravine {name}: interrupted; run the same command again to resume",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    except (ValueError, OSError) as exc:
        if args.debug:
            raise
        print(f"ravine {name}: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return EXIT_USAGE


