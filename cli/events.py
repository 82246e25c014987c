"""`ember events import FILE`: a JSONL file of events (the schema of POST /events, serving/events.py) applied to the
stores the variants config names (`events:`, and `fresh_feed:` for impressions), by the function the endpoint calls.

The file is validated whole first: a bad line is one error naming the file, the line and the field, and nothing is
applied. New posts reach the online store here; a running service's in-process stores (in-network, fresh posts)
receive posts only through POST /events.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import typer

REPO_ROOT = Path(__file__).resolve().parent.parent

app = typer.Typer(help="Events in: engagements, impressions, new posts, follows.", no_args_is_help=True)


@app.command("import")
def import_cmd(
    file: Path = typer.Argument(..., help="JSONL: one event object per line."),
    config: Path = typer.Option(
        REPO_ROOT / "serving" / "variants.yaml", "--config", help="Variants config: its events: and fresh_feed:."
    ),
) -> None:
    """Apply a file of events (idempotent by event id: a replayed id is counted, not applied again)."""
    from core.errors import UserError
    from features.served import open_served
    from serving.ab import load_config
    from serving.events import EventSinks, import_events, read_events

    file, config = file.resolve(), config.resolve()
    settings = load_config(config)
    read_events(file)  # a bad line fails before any store is opened
    if settings.events.store == "off":
        raise UserError(f"{config}: events.store is off (set sqlite or redis to apply events)")
    with contextlib.chdir(REPO_ROOT):  # the config's relative paths are taken from the repository root, as in serve
        sinks = EventSinks.open(settings.events, open_served(settings.fresh_feed))
        assert sinks is not None
        result = import_events(file, sinks)
    by_type = ", ".join(f"{n} {t}" for t, n in result.applied_by_type.items() if n)
    typer.echo(f"{file}: {result.received} events, {result.applied} applied ({by_type or 'none'}), "
               f"{result.replayed} replayed")  # fmt: skip
