"""``ravine gallery [--out DIR] [--quick] [--only NAME ...] [--seed N]``: the lecture's claims
as measured figures (:mod:`ravine.gallery`), with a progress bar, into ``DIR/README.md``."""

from __future__ import annotations

import argparse
import sys

from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from ravine.gallery import caption, run_gallery

__all__ = ["gallery_command"]


def gallery_command(args: argparse.Namespace) -> int:
    """Run the gallery; print one line per figure (its agreement) and the index written."""
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        disable=args.quiet or not sys.stderr.isatty(),
    ) as bar:
        task = bar.add_task("gallery", total=None)

        def progress(name: str, index: int, total: int) -> None:
            bar.update(task, description=f"gallery: {name}", completed=index, total=total)

        figures = run_gallery(
            args.out, only=args.only, quick=args.quick, seed=args.seed, progress=progress
        )
        bar.update(task, completed=len(figures))
    for figure in figures:
        verdict = {True: "agrees", False: "DISAGREES", None: "no yes/no test"}[figure.agrees]
        print(f"{figure.name}: {verdict} — {figure.measured} ({figure.seconds:.1f} s)")
    if args.verbose:
        for figure in figures:
            print(caption(figure))
    print(f"wrote: {args.out}/README.md")
    return 0
