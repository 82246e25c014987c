"""`ember features ...`: batch feature build, Feast apply/materialize, point-in-time training sets."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(
    help="Feature store: batch features, Feast registry, online store, training sets.", no_args_is_help=True
)


@app.command()
def build(
    data: Path = typer.Option(Path("data/synth"), "--data", help="Canonical dataset directory."),
    out: Path = typer.Option(Path("data/features"), "--out", help="Offline feature directory (replaced atomically)."),
    history_length: int = typer.Option(128, "--history-length", min=1, max=1024, help="Engagements kept per user."),
    memory_limit: str = typer.Option("2GB", "--memory-limit", help="DuckDB memory limit; it spills beyond it."),
) -> None:
    """Build event-time windowed feature snapshots (users, authors, posts, histories, graphs) with DuckDB."""
    from features.build import BuildConfig, build_features

    rows = build_features(data, out, BuildConfig(history_length=history_length, memory_limit=memory_limit))
    typer.echo(f"wrote {out}: " + ", ".join(f"{k}={v:,}" for k, v in rows.items()))
