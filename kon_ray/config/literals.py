"""Checks every ``Literal``-typed field of a config section against the choices its type names."""

from __future__ import annotations

import dataclasses
import typing
from typing import Literal

from kon_ray.overrides import check


def _choice(name: str, value: object, choices: tuple[object, ...]) -> None:
    check(value in choices, f"{name}={value!r}: must be one of {', '.join(map(repr, choices))}")


def check_literals(obj: object) -> None:
    for f in dataclasses.fields(obj):  # type: ignore[arg-type]
        hint = typing.get_type_hints(type(obj))[f.name]
        if typing.get_origin(hint) is Literal:
            _choice(f.name, getattr(obj, f.name), typing.get_args(hint))
