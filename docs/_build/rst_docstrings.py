"""Griffe extension: render ravine's reStructuredText-flavoured docstrings as Markdown.

ravine's docstrings are Google style (``Args:``, ``Returns:``) with Sphinx markup inside: roles
(``:class:`SGD```, ``:math:`\\epsilon```), ``.. math::`` / ``.. code-block::`` / ``.. warning::``
directives, ``::`` literal blocks and simple tables. mkdocstrings reads docstrings as Markdown,
where that markup would show raw (a table's ``====`` rule even becomes a heading), so this
extension rewrites it before rendering:

* ``:math:`x``` -> ``\\(x\\)`` and ``.. math::`` -> ``$$ ... $$`` (pymdownx.arithmatex, MathJax);
* ``:class:`~a.b.C``` and the other object roles -> inline code ``C`` (no link: a role's short
  name does not always resolve, and ``mkdocs build --strict`` fails on unresolved references);
* ``.. code-block:: lang`` and ``text::`` + indented block -> fenced code;
* ``.. warning::`` / ``.. note::`` -> admonitions;
* simple tables (``===  ===`` rules) -> Markdown tables.

It changes only what the docs show; the source docstrings stay as they are.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_OBJECT_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|attr|data|exc|obj|const):`~?([^`]+)`")
_TILDE_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|attr|data|exc|obj|const):`~([^`]+)`")
_MATH_ROLE = re.compile(r":math:`([^`]+)`")
_DIRECTIVE = re.compile(r"^(\s*)\.\. ([a-z-]+)::\s*(.*)$")
_TABLE_RULE = re.compile(r"^\s*=+(\s+=+)+\s*$")
_ARGS_SECTION = re.compile(r"^(\s*)(Args|Arguments|Parameters|Attributes|Other Parameters):\s*$")
_GROUPED_ITEM = re.compile(r"^(\s+)([\w*]+(?:, [\w*]+)+):(.*)$")
_EXAMPLE_TITLES = {"Example", "Examples"}
_ADMONITIONS = {"warning", "note", "tip", "important", "caution", "danger", "attention", "hint"}


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _block(lines: list[str], start: int, base: int) -> tuple[list[str], int]:
    """The lines from ``start`` indented deeper than ``base`` (blank lines inside kept)."""
    end = start
    while end < len(lines) and (not lines[end].strip() or _indent(lines[end]) > base):
        end += 1
    while end > start and not lines[end - 1].strip():
        end -= 1
    body = lines[start:end]
    depth = min((_indent(line) for line in body if line.strip()), default=base)
    return [line[depth:] if line.strip() else "" for line in body], end


def _is_term(lines: list[str], index: int) -> bool:
    """Whether ``lines[index]`` is a definition-list term: a literal, its text indented below.

    It must start a block (after a blank line or the end of the previous item's text), so a
    Google section item (right below its section title) is never taken for one.
    """
    line = lines[index]
    previous = lines[index - 1] if index > 0 else ""
    return (
        line.lstrip().startswith("``")
        and not line.rstrip().endswith(":")
        and index + 1 < len(lines)
        and bool(lines[index + 1].strip())
        and _indent(lines[index + 1]) > _indent(line)
        and (not previous.strip() or _indent(previous) > _indent(line))
    )


def _roles(text: str) -> str:
    text = _MATH_ROLE.sub(lambda m: "\\(" + m.group(1) + "\\)", text)
    text = _TILDE_ROLE.sub(lambda m: f"`{m.group(1).rsplit('.', 1)[-1]}`", text)
    return _OBJECT_ROLE.sub(lambda m: f"`{m.group(1)}`", text)


def _table(lines: list[str], start: int) -> tuple[list[str], int]:
    """A simple table starting at its top rule ``lines[start]`` -> Markdown lines, next index."""
    rule = lines[start]
    spans = [(m.start(), m.end()) for m in re.finditer(r"=+", rule)]

    def cells(line: str) -> list[str]:
        out = []
        for i, (left, _) in enumerate(spans):
            right = spans[i + 1][0] if i + 1 < len(spans) else len(line)
            out.append(_roles(line[left:right].strip()).replace("|", "\\|"))
        return out

    rows: list[list[str]] = []
    rules = 0
    index = start
    while index < len(lines) and lines[index].strip():
        if _TABLE_RULE.match(lines[index]):
            rules += 1
        else:
            rows.append(cells(lines[index]))
        index += 1
        if rules == 3:
            break
    pad = " " * _indent(rule)
    header, body = rows[0], rows[1:]
    out = [pad + "| " + " | ".join(header) + " |", pad + "|" + "---|" * len(header)]
    out += [pad + "| " + " | ".join(row) + " |" for row in body]
    return out, index


def _split_grouped_items(lines: list[str]) -> list[str]:
    """``a, b, c: text`` in an Args section -> one item per name (griffe wants one each)."""
    out: list[str] = []
    section_pad: int | None = None
    index = 0
    while index < len(lines):
        line = lines[index]
        if _ARGS_SECTION.match(line):
            section_pad = _indent(line)
        elif line.strip() and section_pad is not None and _indent(line) <= section_pad:
            section_pad = None
        grouped = _GROUPED_ITEM.match(line) if section_pad is not None else None
        if grouped and _indent(line) > section_pad:
            pad, names, first = grouped.groups()
            rest, end = _block(lines, index + 1, len(pad))
            for name in names.split(", "):
                out.append(f"{pad}{name}:{first}")
                out += [pad + "    " + r if r else "" for r in rest]
            index = end
            continue
        out.append(line)
        index += 1
    return out


def rst_to_markdown(text: str) -> str:
    """Rewrite the Sphinx markup of one docstring as Markdown (see the module docstring)."""
    lines = _split_grouped_items(_roles(text).splitlines())
    out: list[str] = []
    index = 0
    while index < len(lines):
        line = lines[index]
        directive = _DIRECTIVE.match(line)
        if _TABLE_RULE.match(line):
            table, index = _table(lines, index)
            out += table
            continue
        if directive:
            pad, name, rest = directive.groups()
            body, index = _block(lines, index + 1, len(pad))
            if rest and name in _ADMONITIONS:
                body = [rest, *body]
            if name == "math":
                math = [rest] if rest else []
                out += ["", pad + "$$", *[pad + b for b in math + body], pad + "$$", ""]
            elif name in ("code-block", "code"):
                out += ["", pad + f"```{rest}", *[pad + b for b in body], pad + "```", ""]
            elif name in _ADMONITIONS:
                out += ["", pad + f"!!! {name}", ""]
                out += [pad + "    " + _roles(b) if b else "" for b in body]
                out.append("")
            else:
                out += [pad + _roles(b) for b in body]
            continue
        if _is_term(lines, index):
            # An RST definition list item (a ``literal`` term, its text indented below) ->
            # Markdown's def_list: "term" then ":   text", the text converted recursively.
            body, index = _block(lines, index + 1, _indent(line))
            pad = " " * _indent(line)
            converted = rst_to_markdown("\n".join(body)).splitlines()
            out += [line, pad + ":   " + converted[0]]
            out += [pad + "    " + c if c.strip() else "" for c in converted[1:]]
            out.append("")
            continue
        if line.rstrip().endswith("::") and not line.strip().startswith(".."):
            head = line.rstrip()[:-2].rstrip()
            pad = " " * _indent(line)
            example = head.strip() in _EXAMPLE_TITLES
            if example:
                # A Google "Examples:" section holding the block, so griffe renders it as code.
                out.append(pad + "Examples:")
            elif head.strip():
                out.append(_roles(head) + ":")
            following = index + 1
            while following < len(lines) and not lines[following].strip():
                following += 1
            if following < len(lines) and _indent(lines[following]) > _indent(line):
                body, index = _block(lines, following, _indent(line))
                fence = pad + "    " if example else pad
                out += [] if example else [""]
                out += [fence + "```", *[fence + b if b else "" for b in body], fence + "```", ""]
                continue
            index += 1
            continue
        if line.strip().rstrip(":") in _EXAMPLE_TITLES and line.rstrip().endswith(":"):
            # griffe's Google parser knows only "Examples:" as the section of >>> examples.
            line = " " * _indent(line) + "Examples:"
        out.append(_roles(line))
        index += 1
    return "\n".join(out)


class RstDocstrings(griffe.Extension):
    """Rewrite every docstring's Sphinx markup as Markdown when griffe loads it."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = rst_to_markdown(obj.docstring.value)
