"""Typed errors: a UserError is bad input that the CLI reports as one line (exit 2), never a traceback."""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user: a missing file, a wrong column, an invalid parameter.

    The message must name the file, field or parameter at fault, on one line.
    """

    exit_code = 2


class SchemaError(UserError):
    """A table does not match the canonical schema (missing/unexpected column, wrong type, empty)."""
