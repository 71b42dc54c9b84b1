"""Plain-language advice from measured numbers: the messages of the ranked findings.

:func:`advice` and :func:`advice_markdown` are thin compatibility wrappers over
:func:`ravine.diagnostics.findings.find`: the sentences are the findings' messages, most
important first. For codes, severities, evidence and machine-readable fixes use
:func:`~ravine.diagnostics.findings.find` or
:meth:`~ravine.diagnostics.findings.Diagnosis.from_numbers`; the rules and their sources are in
:mod:`ravine.diagnostics.findings`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ravine.diagnostics.findings import find

__all__ = ["advice", "advice_markdown"]


def advice(numbers: Mapping[str, Any]) -> list[str]:
    """Sentences a user can act on, from measured numbers: the messages of :func:`find`, ranked.

    Keys are those of :data:`~ravine.diagnostics.findings.KNOWN_KEYS` (all optional: a rule runs
    when its keys are present); an unknown key raises ``ValueError`` naming the closest valid
    one. With no numbers a rule can use, the list is empty.
    """
    return [finding.message for finding in find(numbers)]


def advice_markdown(numbers: Mapping[str, Any], *, title: str = "Diagnostics advice") -> str:
    """The advice as a markdown section (``## title`` and a bullet list)."""
    items = advice(numbers) or ["No advice: none of the recognized numbers were measured."]
    return f"## {title}\n\n" + "\n".join(f"- {s}" for s in items) + "\n"
