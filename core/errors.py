"""Typed errors: a UserError is bad input that the CLI reports as one line (exit 2), never a traceback."""

from __future__ import annotations

from typing import Any


class UserError(Exception):
    """Bad input from the user: a missing file, a wrong column, an invalid parameter.

    The message must name the file, field or parameter at fault, on one line.
    """

    exit_code = 2


class SchemaError(UserError):
    """A table does not match the canonical schema (missing/unexpected column, wrong type, empty)."""


def first_error(err: Any) -> tuple[str, dict[str, Any]]:
    """A pydantic ValidationError's first error as (its dotted key, "<root>" at the top, and the error itself): what
    the one-line messages of every typed config name."""
    first = err.errors()[0]
    return ".".join(str(part) for part in first["loc"]) or "<root>", first
