"""The one ``key=value`` parser and type coercer, for run configs, study files and benchmark settings.

``parse_overrides`` splits command-line items; ``set_fields`` applies (possibly nested) changes to a
dataclass, coercing each value to its field's type with ``coerce``, so that every dataclass is
rebuilt, and validated, once. Numbers must be finite; a bad value names its dotted key.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Literal

NONE = ("none", "null")
TRUE, FALSE = ("true", "1", "yes"), ("false", "0", "no")


class ConfigError(ValueError):
    """A configuration value or override is invalid."""


def check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def parse_overrides(items: Sequence[str]) -> dict[str, str]:
    """``["model.k=4", "steps=5"]`` as ``{"model.k": "4", "steps": "5"}``; an item without '=' is refused."""
    pairs = {}
    for item in items:
        key, sep, value = item.partition("=")
        check(bool(sep) and bool(key.strip()), f"override {item!r}: expected key=value, e.g. model.k=4")
        pairs[key.strip()] = value.strip()
    return pairs


def split_dotted(pairs: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(undotted, dotted) pairs: a benchmark's own settings (``steps``) and run-config keys (``model.k``)."""
    return {k: v for k, v in pairs.items() if "." not in k}, {k: v for k, v in pairs.items() if "." in k}


def nest(pairs: Mapping[str, Any]) -> dict[str, Any]:
    """Dotted pairs as nested dicts: ``{"model.k": 4}`` -> ``{"model": {"k": 4}}``."""
    nested: dict[str, Any] = {}
    for key, value in pairs.items():
        *path, last = key.split(".")
        node = nested
        for part in path:
            node = node.setdefault(part, {})
            check(isinstance(node, dict), f"{key}: conflicts with another override")
        node[last] = value
    return nested


def set_fields(obj: Any, edits: Mapping[str, Any], prefix: str = "", scope: str = "at the top level") -> Any:
    """``obj`` (a dataclass) with nested ``edits`` coerced and applied, each dataclass rebuilt once.

    ``prefix`` is ``obj``'s dotted position (for messages); ``scope`` says where an unknown top-level
    key was looked for.
    """
    names = [f.name for f in dataclasses.fields(obj)]
    hints = typing.get_type_hints(type(obj))
    values: dict[str, Any] = {}
    for name, change in edits.items():
        key = f"{prefix}{name}"
        if name not in names:
            where = f"in '{prefix.rstrip('.')}'" if prefix else scope
            raise ConfigError(f"{key}: unknown key {name!r} {where}; valid keys: {', '.join(names)}")
        current = getattr(obj, name)
        if isinstance(change, dict):
            check(dataclasses.is_dataclass(current), f"{key}: has no sub-keys")
            values[name] = set_fields(current, change, f"{key}.")
        elif dataclasses.is_dataclass(current):
            raise ConfigError(f"{key}: is a section; set one of its keys, e.g. {key}.<key>=...")
        else:
            values[name] = coerce(key, hints[name], change)
    return dataclasses.replace(obj, **values)


def coerce(key: str, hint: Any, value: Any) -> Any:
    """``value`` (a command-line string or a Python value) as type ``hint``; refusals name ``key``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in NONE):
            check(type(None) in args, f"{key}=None: this field needs a value")
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return coerce(key, inner, value)
    check(value is not None, f"{key}=None: this field needs a value")
    if origin is Literal:
        check(value in args, f"{key}={value!r}: must be one of {', '.join(map(repr, args))}")
        return value
    if origin is tuple:
        items = value.split(",") if isinstance(value, str) else list(value)
        inner = args[0] if args else str
        return tuple(coerce(key, inner, item.strip() if isinstance(item, str) else item) for item in items
                     if not (isinstance(item, str) and not item.strip()))  # fmt: skip
    if hint is bool:
        if isinstance(value, bool):
            return value
        text = str(value).lower()
        check(text in TRUE + FALSE, f"{key}={value!r}: expected true or false")
        return text in TRUE
    if hint in (int, float):
        return _number(key, hint, value)
    if hint is str:
        return str(value)
    raise ConfigError(f"{key}: cannot set a value of type {hint}")


def _number(key: str, hint: type, value: Any) -> int | float:
    expected = "an integer" if hint is int else "a number"
    check(not isinstance(value, bool), f"{key}={value!r}: expected {expected}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}={value!r}: expected {expected}") from None
    check(math.isfinite(number), f"{key}={value!r}: must be a finite number")
    if hint is float:
        return number
    try:
        integer = int(value)  # exact for large integers and integer strings
    except (TypeError, ValueError):
        raise ConfigError(f"{key}={value!r}: expected an integer") from None
    check(integer == number or not isinstance(value, float), f"{key}={value!r}: expected an integer")
    return integer
