"""`ember`: entry point. Sub-apps import their heavy dependencies (torch, feast, ...) inside commands only."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import typer

from cli import data

app = typer.Typer(
    name="ember",
    help="Ember: a workflow-orchestrated feed recommender (data -> features -> models -> serving -> monitoring).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(data.app, name="data")


def main(argv: list[str] | None = None) -> Any:
    """Runs the CLI; a UserError becomes one line on stderr and exit status 2 (no traceback)."""
    from core.errors import UserError

    runner: Callable[..., Any] = app
    try:
        return runner(args=argv, standalone_mode=True)
    except UserError as err:
        typer.echo(f"error: {err}", err=True)
        sys.exit(err.exit_code)


if __name__ == "__main__":
    main()
