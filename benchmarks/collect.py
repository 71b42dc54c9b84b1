"""Assemble BENCHMARKS.md from the result files the benchmark scripts write.

Usage:  python benchmarks/collect.py
Each script under benchmarks/ writes benchmarks/results/<script>.md; this concatenates them, in
the order below, under a header that says how to reproduce every figure.
"""

from __future__ import annotations

from pathlib import Path

ORDER = [
    "optimizer_step",
    "fit_overhead",
    "fit_overhead_parts",
    "fit_overhead_interleaved",
    "time_to_accuracy",
    "hessian_vs_pyhessian",
    "diagnostics_overhead",
    "diagnose_time",
    "monitor_overhead",
    "diagnosis_accuracy",
    "ddp_throughput",
]

HEADER = """# ravine benchmarks

Speed goals live here, never in the test suite. Every figure is a ratio against a named baseline
measured in the same run on the same machine. Reproduce any section with
`make bench` (all of them) or `.venv/bin/python benchmarks/<script>.py`, then
`.venv/bin/python benchmarks/collect.py` to rebuild this file.

Where ravine misses a goal the table says so; the notes under each table explain why.
"""


def _as_section(text: str) -> str:
    """Demote the headings of a result file whose title is a top-level ``#`` heading."""
    if not text.startswith("# "):
        return text
    return "\n".join("#" + line if line.startswith("#") else line for line in text.splitlines())


def main() -> None:
    root = Path(__file__).parent
    results = root / "results"
    parts = [HEADER]
    summary = root / "notes" / "summary.md"
    if summary.exists():
        parts.append(summary.read_text().strip() + "\n")
    names = ORDER + sorted(p.stem for p in results.glob("*.md") if p.stem not in ORDER)
    for name in names:
        path = results / f"{name}.md"
        if path.exists():
            parts.append(_as_section(path.read_text().strip()) + "\n")
            # Hand-written reading of the latest run, kept apart from the generated tables.
            notes = root / "notes" / f"{name}.md"
            if notes.exists():
                parts.append(notes.read_text().strip() + "\n")
    (root.parent / "BENCHMARKS.md").write_text("\n".join(parts))
    print(f"wrote {root.parent / 'BENCHMARKS.md'}")


if __name__ == "__main__":
    main()
