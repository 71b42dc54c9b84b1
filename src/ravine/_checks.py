"""One error toolkit for validated options: one-line messages naming the key path, with hints.

:class:`ConfigError` is what every options schema (:class:`ravine.train.options.FitOptions`,
:class:`ravine.config.RunConfig`, the benchmark suites and studies) raises;
:func:`format_validation_error` turns any pydantic ``ValidationError`` into its single line,
listing every problem with its key path and, for an unknown key, kind or name, the closest valid
one and the valid ones. The value checks (:func:`check_int`, :func:`check_positive`,
:func:`check_choice`, :func:`check_options`) raise one-line ``ValueError`` messages of the
same shape.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from collections.abc import Iterable, Sequence
from typing import Annotated, Any, Union

import numpy as np
from pydantic import BaseModel, Tag, ValidationError

__all__ = [
    "ConfigError",
    "OptionError",
    "suggest",
    "check_choice",
    "check_int",
    "check_positive",
    "check_options",
    "format_validation_error",
]


class ConfigError(ValueError):
    """An invalid run configuration; the message is one line naming the offending key."""


class OptionError(ValueError):
    """A key that the section's model has but its chosen kind / name does not take."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


def suggest(word: str, choices: Iterable[str], prefix: str = "") -> str:
    """``"; did you mean 'x'?"`` for the closest of ``choices``, or ``""``."""
    close = difflib.get_close_matches(str(word), list(choices), n=1)
    return f"; did you mean {prefix + close[0]!r}?" if close else ""


def check_choice(name: str, value: Any, allowed: Sequence[str]) -> str:
    """``value`` if it is one of ``allowed``, else ``ValueError``: ``"<name> must be one of 'a',
    'b', got 'x'; did you mean 'a'?"``."""
    if isinstance(value, str) and value in allowed:
        return value
    options = ", ".join(repr(a) for a in allowed)
    hint = suggest(value, allowed)
    raise ValueError(f"{name} must be one of {options}, got {shown(value)}{hint}")


def check_int(name: str, value: Any, minimum: int) -> None:
    """Raise ``ValueError`` unless ``value`` is an integer ``>= minimum``."""
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {shown(value)}")


def check_positive(name: str, value: Any, *, allow_zero: bool = False) -> None:
    """Raise ``ValueError`` unless ``value`` is a finite real number ``> 0`` (``>= 0``)."""
    ok = isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool)
    ok = ok and bool(np.isfinite(value)) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {shown(value)}")


def check_options(given: Iterable[str], valid: Sequence[str], owner: str) -> None:
    """Raise :class:`OptionError` for the first key of ``given`` not in ``valid``."""
    for key in given:
        if key not in valid:
            raise OptionError(
                key,
                f"not an option of {owner}{suggest(key, valid)} "
                f"(its options: {', '.join(valid) or 'none'})",
            )


def shown(value: Any, limit: int = 80) -> str:
    """``repr(value)``, cut to ``limit`` characters: an error never echoes unbounded input."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 5] + " ...)"


# --- the one formatter of pydantic validation errors --------------------------------------
#
# Every options schema (run configs, fit's keyword arguments, benchmark suites and studies,
# search spaces, problem specs) reports a ``ValidationError`` through
# :func:`format_validation_error`, so a bad key reads the same wherever it is given.


def _unannotated(tp: Any) -> Any:
    while typing.get_origin(tp) is Annotated:
        tp = typing.get_args(tp)[0]
    return tp


def _alternatives(tp: Any) -> list[Any]:
    """Members of a (possibly Annotated / Optional) union, ``None`` left out; members tagged
    with ``Tag`` stay wrapped in their ``Annotated`` so that the tag can be read."""
    if typing.get_origin(tp) is Annotated:
        if any(isinstance(m, Tag) for m in typing.get_args(tp)[1:]):
            return [tp]
        return _alternatives(typing.get_args(tp)[0])
    if typing.get_origin(tp) in (Union, types.UnionType):
        return [m for arg in typing.get_args(tp) for m in _alternatives(arg)]
    return [] if tp is type(None) else [tp]


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _models(tp: Any) -> list[type[BaseModel]]:
    return [m for m in map(_unannotated, _alternatives(tp)) if _is_model(m)]


def _member(tp: Any, part: str) -> Any | None:
    """The member of the union ``tp`` that pydantic labels ``part`` in error locations: a
    ``Tag`` of a callable discriminator, a value of a ``kind`` literal, or a model's name."""
    for member in _alternatives(tp):
        meta = typing.get_args(member)[1:] if typing.get_origin(member) is Annotated else ()
        if any(isinstance(m, Tag) and m.tag == part for m in meta):
            return _unannotated(member)
        inner = _unannotated(member)
        if _is_model(inner):
            kind = inner.model_fields.get("kind")
            if inner.__name__ == part or (kind and part in typing.get_args(kind.annotation)):
                return inner
    return None


def _contained(tp: Any, origin: type) -> Any | None:
    """The item type of the ``list`` (``origin=list``) or value type of the ``dict`` in ``tp``."""
    for member in map(_unannotated, _alternatives(tp)):
        if typing.get_origin(member) is origin:
            return typing.get_args(member)[-1]
    return None


def _key(part: Any, limit: int = 40) -> str:
    """A key as it appears in a path, cut so that a huge key never makes a huge message."""
    text = " ".join(str(part).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _walk(root: type[BaseModel], loc: Sequence[Any]) -> tuple[list[str], Any, Any]:
    """Readable key path of ``loc``, the type found there, and the model holding its last key.

    pydantic labels the member of a union that it tried (``'space'``, ``'quadratic'``,
    ``'OptimizerConfig'``, ``"literal['a','b']"``, ``'callable'``); labels are not keys, so they
    are left out of the path, and a label naming a model continues the walk inside it.
    """
    path: list[str] = []
    tp: Any = root
    holder: Any = None
    for part in loc:
        if isinstance(part, int):
            path[-1:] = [f"{path[-1]}[{part}]" if path else f"[{part}]"]
            tp = _contained(tp, list)
            continue
        if len(_alternatives(tp)) > 1:
            tp = _member(tp, str(part))  # None for a member that is not a model: no more keys
            continue
        models = _models(tp)
        holder = models[0] if models else None
        path.append(_key(part))
        fields = holder.model_fields if holder is not None else {}
        tp = fields[part].annotation if part in fields else _contained(tp, dict)
    return path, tp, holder


# Errors that only say "nor is it the other member of the union": dropped where another error
# at or under the same key says what is wrong.
_UNION_NOISE = {
    "is_instance_of",
    "callable_type",
    "is_subclass_of",
    "model_type",
    "dict_type",
    "string_type",
    "bool_type",
    "int_type",
    "list_type",
    "dataclass_type",
}
# Misspelt keys and kinds first: they are the likeliest cause of the other problems.
_PRIORITY = {"extra_forbidden": 0, "union_tag_invalid": 1, "union_tag_not_found": 1, "missing": 3}
# At most this many problems are listed; a config with hundreds of bad keys is still one line.
MAX_PROBLEMS = 8


def _one_line(text: str, limit: int = 400) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _kinds(tp: Any) -> list[str]:
    """The values of the ``kind`` literals of the models in the union ``tp``."""
    return [
        str(v)
        for m in _models(tp)
        if "kind" in m.model_fields
        for v in typing.get_args(m.model_fields["kind"].annotation)
    ]


class _Problem(typing.NamedTuple):
    kind: str  # pydantic's error type
    where: str  # the key path
    text: str  # the description, starting with the key path
    valid: str = ""  # "(valid: ...)" for an unknown key or kind
    fixed: str | None = None  # for an unknown key with a close valid one: that key's path


def _problem(root: type[BaseModel], error: Any) -> _Problem:
    """One pydantic error, described."""
    loc = list(error["loc"])
    path, tp, holder = _walk(root, loc)
    where = ".".join(path)
    kind = error["type"]
    ctx = error.get("ctx") or {}
    if kind == "extra_forbidden":
        valid = list(holder.model_fields) if holder is not None else []
        close = difflib.get_close_matches(str(loc[-1]), valid, n=1)
        fixed = ".".join([*path[:-1], close[0]]) if close else None
        listed = f"(valid: {', '.join(valid)})" if valid else ""
        text = f"{where}: unknown key{suggest(str(loc[-1]), valid)}"
        return _Problem(kind, where, text, listed, fixed)
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        name = str(ctx.get("discriminator", "'kind'")).strip("'")
        tags = [t.strip(" '") for t in str(ctx.get("expected_tags", "")).split(",") if t.strip()]
        tags = tags or _kinds(tp)
        listed = f"(valid: {', '.join(tags)})" if tags else ""
        if kind == "union_tag_not_found":
            text = f"{where or '(top level)'}: required key {name!r} is missing"
            return _Problem(kind, where, text, listed)
        tag = str(ctx.get("tag", ""))
        text = f"{where}: unknown {name} {shown(tag, 60)}{suggest(tag, tags)}"
        return _Problem(kind, where, text, listed)
    if kind == "missing":
        return _Problem(kind, where, f"{where}: required key is missing")
    message = _one_line(error["msg"].removeprefix("Value error, "))
    if kind == "value_error":
        cause = ctx.get("error")
        if isinstance(cause, OptionError):
            where = ".".join([*path, _key(cause.key)])
        return _Problem(kind, where, f"{where}: {message}" if where else message)
    hint = ""
    if kind == "literal_error":
        hint = suggest(error.get("input"), re.findall(r"'([^']*)'", str(ctx.get("expected", ""))))
    text = f"{where or '(top level)'}: {message}, got {shown(error.get('input'))}{hint}"
    return _Problem(kind, where, text)


def _within(path: str, outer: str) -> bool:
    return path == outer or not outer or path.startswith((f"{outer}.", f"{outer}["))


def format_validation_error(
    error: ValidationError, root: type[BaseModel], source: str | None = None
) -> str:
    """One line listing every distinct problem of ``error``, raised by validating ``root``.

    Each problem starts with its key path (``optimizers[0].lr.lo``; pydantic's union-member
    labels left out) and says what is wrong; an unknown key or kind names the closest valid
    one and lists the valid ones, a value outside a set of literals names the closest allowed
    one, a bad value shows the value given (cut short). Problems are separated by ``"; "``,
    unknown keys and kinds first, at most :data:`MAX_PROBLEMS` of them. A key reported as
    missing because it was misspelt (the unknown key's suggestion) is reported once, as the
    misspelling.

    Args:
        error: what ``root.model_validate`` raised.
        root: the model that was validated.
        source: prefixed as ``"<source>: "`` (e.g. the config file), when given.

    Example:
        ``exp.yaml: optimizer.lrr: unknown key; did you mean 'lr'? (valid: name, lr, ...);
        epochs: Input should be greater than or equal to 1, got 0``
    """
    errors = sorted(error.errors(), key=lambda e: _PRIORITY.get(e["type"], 2))
    described = [_problem(root, e) for e in errors]
    telling = [p.where for p in described if p.kind not in _UNION_NOISE]
    misspelt = {p.fixed for p in described if p.fixed is not None}
    problems: list[str] = []
    noisy: list[str] = []
    listed: set[str] = set()
    for p in described:
        if p.kind == "missing" and p.where in misspelt:
            continue
        if p.kind in _UNION_NOISE:
            # kept only when nothing else is said about this key or a key inside it
            if any(_within(w, p.where) for w in telling) or p.where in noisy:
                continue
            noisy.append(p.where)
        # the valid keys of one section are listed once, after its first unknown key
        text = f"{p.text} {p.valid}" if p.valid and p.valid not in listed else p.text
        listed.add(p.valid)
        if text not in problems:
            problems.append(text)
    more = len(problems) - MAX_PROBLEMS
    line = "; ".join(problems[:MAX_PROBLEMS]) + (f"; and {more} more" if more > 0 else "")
    return f"{source}: {line}" if source else line
