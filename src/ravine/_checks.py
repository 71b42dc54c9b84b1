"""One error toolkit for validated options: one-line messages naming the key path, with hints.

:class:`ConfigError` is what every options schema (:class:`ravine.train.options.FitOptions`,
:class:`ravine.config.RunConfig`) raises; :func:`validation_message` turns a pydantic
``ValidationError`` into its single line, naming the key path and, for an unknown key or name,
the closest valid one.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from collections.abc import Iterable, Sequence
from typing import Annotated, Any, Literal, Union

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
    "validation_message",
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


def _flatten(annotation: Any) -> list[Any]:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [t for arg in typing.get_args(annotation) for t in _flatten(arg)]
    return [annotation]


def _models_of(annotation: Any) -> list[type[BaseModel]]:
    return [t for t in _flatten(annotation) if isinstance(t, type) and issubclass(t, BaseModel)]


def _field_path(root: type[BaseModel], loc: Sequence[Any]) -> tuple[list[str], Any, Any]:
    """Field names along ``loc`` (pydantic's union-member labels dropped), the model that holds
    the last one, and the model that the last one holds (``None`` when not a model)."""
    path: list[str] = []
    holder: type[BaseModel] | None = None
    cls: type[BaseModel] | None = root
    for i, part in enumerate(loc):
        part = str(part)
        fields = cls.model_fields if cls is not None else {}
        if part in fields:
            path.append(part)
            holder = cls
            found = _models_of(fields[part].annotation)
            nxt = str(loc[i + 1]) if i + 1 < len(loc) else None
            # the next part may be a union label naming one of the member models
            chosen = [m for m in found if m.__name__ == nxt]
            cls = (chosen or found or [None])[0]
        elif cls is not None and part == cls.__name__:
            continue
        elif part.isdigit():
            path[-1:] = [f"{path[-1]}[{part}]" if path else f"[{part}]"]
        else:
            # a label of a non-model union member (e.g. 'is-instance[...]'): not a key
            if i == len(loc) - 1 and not part.startswith(("function-", "is-", "callable",
                                                           "literal[", "json-or-python")):
                path.append(part)
                holder = cls
            cls = None
    return path, holder, cls


def _literal_choices(root: type[BaseModel], loc: Sequence[Any]) -> list[str]:
    path, holder, _ = _field_path(root, loc)
    field = None if holder is None or not path else holder.model_fields.get(path[-1])
    if field is None:
        return []
    return [str(v) for t in _flatten(field.annotation) if typing.get_origin(t) is Literal
            for v in typing.get_args(t)]


def shown(value: Any, limit: int = 80) -> str:
    """``repr(value)``, cut to ``limit`` characters: an error never echoes unbounded input."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 5] + " ...)"


def _describe(root: type[BaseModel], error: dict[str, Any]) -> str:
    loc = list(error["loc"])
    path, _, _ = _field_path(root, loc)
    where = ".".join(path) or "(top level)"
    kind = error["type"]
    if kind == "extra_forbidden":
        parent, _, inner = _field_path(root, loc[:-1])
        model = root if not parent else inner
        valid = list(model.model_fields) if model is not None else []
        prefix = ".".join(parent) + "." if parent else ""
        return f"unknown key {prefix + str(loc[-1])!r}{suggest(str(loc[-1]), valid, prefix)}"
    if kind == "missing":
        return f"{where}: required key is missing"
    message = error["msg"].removeprefix("Value error, ")
    if kind == "literal_error":
        return f"{where}: {message}, got {shown(error['input'])}" + suggest(
            error["input"], _literal_choices(root, loc))
    if kind == "value_error":
        cause = error.get("ctx", {}).get("error")
        if isinstance(cause, OptionError):
            where = f"{where}.{cause.key}"
        return f"{where}: {message}" if path else message
    return f"{where}: {message}, got {shown(error['input'])}"


# Errors that only say "nor is it the other member of the union": dropped when others exist.
_UNION_NOISE = {"is_instance_of", "callable_type", "is_subclass_of", "model_type", "dict_type",
                "string_type", "bool_type", "int_type", "list_type"}


def validation_message(exc: ValidationError, root: type[BaseModel], source: str) -> str:
    """One line ``"<source>: <problem>; <problem>"`` for ``exc`` raised by ``root``."""
    errors = exc.errors()
    telling = [e for e in errors if e["type"] not in _UNION_NOISE] or errors[:1]
    problems: list[str] = []
    for error in telling:
        text = _describe(root, error)
        if text not in problems:
            problems.append(text)
    return f"{source}: {'; '.join(problems)}"


# --- the formatter of benchmark suites and studies (kinds as tagged unions) ----------------


def _unannotated(tp: Any) -> Any:
    while typing.get_origin(tp) is Annotated:
        tp = typing.get_args(tp)[0]
    return tp


def _alternatives(tp: Any) -> list[Any]:
    """Members of a (possibly Annotated / Optional) union; members tagged with ``Tag`` stay
    wrapped in their ``Annotated`` so that the tag can be read."""
    if typing.get_origin(tp) is Annotated:
        if any(isinstance(m, Tag) for m in typing.get_args(tp)[1:]):
            return [tp]
        return _alternatives(typing.get_args(tp)[0])
    if typing.get_origin(tp) in (Union, types.UnionType):
        return [m for arg in typing.get_args(tp) for m in _alternatives(arg)]
    return [tp]


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _models(tp: Any) -> list[type[BaseModel]]:
    return [m for m in map(_unannotated, _alternatives(tp)) if _is_model(m)]


def _branch(tp: Any, part: Any) -> Any | None:
    """The member of the union ``tp`` that pydantic labels ``part`` in error locations: a
    ``Tag`` of a callable discriminator, or a value of a ``kind`` literal."""
    for member in _alternatives(tp):
        meta = typing.get_args(member)[1:] if typing.get_origin(member) is Annotated else ()
        if any(isinstance(m, Tag) and m.tag == part for m in meta):
            return _unannotated(member)
        inner = _unannotated(member)
        kind = inner.model_fields.get("kind") if _is_model(inner) else None
        if kind is not None and part in typing.get_args(kind.annotation):
            return inner
    return None


def _contained(tp: Any, origin: type) -> Any | None:
    """The item type of the ``list`` (``origin=list``) or value type of the ``dict`` in ``tp``."""
    for member in map(_unannotated, _alternatives(tp)):
        if typing.get_origin(member) is origin:
            return typing.get_args(member)[-1]
    return None


def _walk(root: type[BaseModel], loc: tuple[Any, ...]) -> tuple[list[str], type | None]:
    """Readable path of ``loc`` (union labels dropped) and the model holding its last key."""
    path: list[str] = []
    tp: Any = root
    for i, part in enumerate(loc):
        last = i == len(loc) - 1
        if isinstance(part, int):
            path[-1:] = [f"{path[-1]}[{part}]" if path else f"[{part}]"]
            tp = _contained(tp, list)
            continue
        branch = _branch(tp, part)
        if branch is not None:
            if last:
                return path, branch
            tp = branch
            continue
        models = _models(tp)
        if last:
            return [*path, str(part)], models[0] if models else None
        path.append(str(part))
        fields = models[0].model_fields if models else {}
        tp = fields[part].annotation if part in fields else _contained(tp, dict)
    return path, None


# extra keys first: a misspelt key also reports the correct one as missing
_PRIORITY = {"extra_forbidden": 0, "union_tag_invalid": 1, "missing": 3}


def format_validation_error(error: ValidationError, root: type[BaseModel]) -> str:
    """One line for the most telling error of ``error``: the key's path, the problem, a hint."""
    first = min(error.errors(), key=lambda e: _PRIORITY.get(e["type"], 2))
    path, model = _walk(root, tuple(first["loc"]))
    where = ".".join(path) or "config"
    if first["type"] == "extra_forbidden":
        key = path[-1] if path else "?"
        valid = list(model.model_fields) if model else []
        return f"{where}: unknown key{suggest(key, valid)}" + (
            f" (valid: {', '.join(valid)})" if valid else ""
        )
    if first["type"] == "union_tag_invalid":
        ctx = first.get("ctx", {})
        tags = [t.strip(" '") for t in str(ctx.get("expected_tags", "")).split(",")]
        tag = str(ctx.get("tag", ""))
        return f"{where}: unknown kind {tag!r}{suggest(tag, tags)} (valid: {', '.join(tags)})"
    if first["type"] == "literal_error":
        allowed = re.findall(r"'([^']*)'", str(first.get("ctx", {}).get("expected", "")))
        value = str(first.get("input"))
        return f"{where}: {value!r} is not allowed{suggest(value, allowed)} " + (
            f"(allowed: {', '.join(allowed)})"
        )
    if first["type"] == "missing":
        return f"{where}: required key is missing"
    message = first["msg"].removeprefix("Value error, ")
    value = first.get("input")
    display = first["type"] != "value_error" and not isinstance(value, (dict, list))
    return f"{where}: {message}" + (f" (got {shown(value)})" if display else "")
