"""`--set section.key=value` overrides for the typed model and training configs, checked against their fields.

A key the config does not have, or a value of the wrong type, is a one-line `UserError` naming the key: a typo in a
hyperparameter must never be silently ignored.
"""

from __future__ import annotations

import contextlib
import dataclasses
import types
import typing
from collections.abc import Iterable
from typing import Any

import yaml

from core.errors import UserError


def split_overrides(items: Iterable[str], sections: tuple[str, ...] = ("model", "train")) -> dict[str, dict[str, str]]:
    """`["model.d_model=64", "train.epochs=3"]` -> {"model": {"d_model": "64"}, "train": {"epochs": "3"}}.

    The values stay strings here; `coerce` checks each against its config's fields.
    """
    out: dict[str, dict[str, str]] = {name: {} for name in sections}
    for item in items:
        key, sep, raw = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot or section not in out:
            raise UserError(f"--set {item!r}: expected <section>.<field>=<value>, section one of {', '.join(sections)}")
        out[section][name] = raw
    return out


def coerce(cls: type, values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Checks `values` against the fields of dataclass `cls` and converts strings to each field's type."""
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    out: dict[str, Any] = {}
    for name, value in values.items():
        where = f"{prefix}.{name}" if prefix else name
        if name not in known:
            raise UserError(f"{where}: unknown config key (known: {', '.join(sorted(known))})")
        out[name] = _convert(hints[name], yaml.safe_load(value) if isinstance(value, str) else value, where)
    return out


def _convert(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if origin is tuple:
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, list | tuple):
            raise UserError(f"{where}: expected a list, got {value!r}")
        return tuple(value)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    if hint is bool:
        if not isinstance(value, bool):
            raise UserError(f"{where}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"{where}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            with contextlib.suppress(ValueError):
                value = float(value)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise UserError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        return str(value)
    return value
