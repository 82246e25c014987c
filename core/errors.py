"""Typed errors: a UserError is bad input that the CLI reports as one line (exit 2), never a traceback."""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Any


class UserError(Exception):
    """Bad input from the user: a missing file, a wrong column, an invalid parameter.

    The message must name the file, field or parameter at fault, on one line.
    """

    exit_code = 2


class SchemaError(UserError):
    """A table does not match the canonical schema (missing/unexpected column, wrong type, empty)."""


def dotted_key(loc: Iterable[Any], skip: Collection[str] = ()) -> str:
    """A pydantic error location as the one dotted key every message names ("variants[1].share", "events[3].type"):
    list indexes in brackets; "[key]" (the mapping key itself was refused) and the names in `skip` (a tagged union's
    tags, a request-body wrapper) are not fields and are left out."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part != "[key]" and part not in skip:
            out += f".{part}" if out else str(part)
    return out


def first_error(err: Any) -> tuple[str, dict[str, Any]]:
    """A pydantic ValidationError's first error (an unknown key before any other) as (its dotted key, "<root>" at
    the top, and the error itself): what the one-line messages of every typed config name."""
    errors = err.errors()
    # A misspelt key also leaves the intended one missing: naming the unknown key says what to fix.
    first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    return dotted_key(first["loc"]) or "<root>", first


def config_error(where: str, err: Any, nested: bool = False) -> UserError:
    """The one-line UserError of every typed config: "<where>: <dotted key>: <why>[, got <value>]" from a pydantic
    ValidationError's first error (an unknown key says so; a missing one shows no value). `nested`: `where` is the
    config's own key in a larger file, and the message names "<where>.<dotted key>" ("recommender.top_k")."""
    key, first = first_error(err)
    head = f"{where}.{key}" if nested and key != "<root>" else f"{where}: {key}"
    if first["type"] == "extra_forbidden":
        return UserError(f"{head}: unknown key")
    why = first["msg"].removeprefix("Value error, ")
    shown = first["type"] == "missing" or ", got " in why or repr(first.get("input")) in why  # said already
    got = "" if shown else f", got {first.get('input')!r}"
    return UserError(f"{head}: {why[:1].lower()}{why[1:]}{got}")
