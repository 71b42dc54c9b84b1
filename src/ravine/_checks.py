"""One error toolkit for validated options: one-line messages naming the key path, with hints.

:class:`ConfigError` is what every options schema (:class:`ravine.train.options.FitOptions`,
:class:`ravine.config.RunConfig`) raises; :func:`validation_message` turns a pydantic
``ValidationError`` into its single line, naming the key path and, for an unknown key or name,
the closest valid one.
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Iterable, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

__all__ = ["ConfigError", "OptionError", "suggest", "check_options", "validation_message"]


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
        return f"{where}: {message}, got {error['input']!r}" + suggest(
            error["input"], _literal_choices(root, loc))
    if kind == "value_error":
        cause = error.get("ctx", {}).get("error")
        if isinstance(cause, OptionError):
            where = f"{where}.{cause.key}"
        return f"{where}: {message}" if path else message
    return f"{where}: {message}, got {error['input']!r}"


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
