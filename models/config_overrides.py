"""`--set section.key=value` overrides for the typed model and training configs, checked against their fields.

A key the config does not have, or a value of the wrong type, is a one-line `UserError` naming the key: a typo in a
hyperparameter must never be silently ignored.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import typing
from collections.abc import Iterable
from typing import Any

import yaml
from pydantic import TypeAdapter, ValidationError

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
    """`value` (as YAML read it from the command line) checked against the field's type by pydantic, strictly: no
    bool for a number, no number for a bool. Two spellings a command line needs are read first: "a,b" for a tuple,
    and "1e-3" for a float (YAML 1.1 reads an exponent without a dot as a string)."""
    origin = typing.get_origin(hint)
    if origin is tuple:
        if isinstance(value, str):
            value = tuple(v for v in value.split(",") if v)
        elif isinstance(value, list):
            value = tuple(value)
    elif hint is str or (str in typing.get_args(hint) and value is not None):  # str, or str | None
        value = str(value)
    elif float in (hint, *typing.get_args(hint)) and isinstance(value, str):
        with contextlib.suppress(ValueError):
            value = float(value)
    try:
        return _adapter(hint).validate_python(value, strict=True)
    except ValidationError as err:
        first = err.errors()[0]
        raise UserError(f"{where}: {first['msg'][:1].lower()}{first['msg'][1:]}, got {value!r}") from None


@functools.cache
def _adapter(hint: Any) -> TypeAdapter[Any]:
    return TypeAdapter(hint)
