"""`ember features ...`: batch feature build, Feast apply/materialize, point-in-time training sets."""

from __future__ import annotations

from contextlib import AbstractContextManager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from core.online_store import REDIS_ADDRESS

if TYPE_CHECKING:
    from features.store import StoreConfig

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

    with _status(f"building features from {data}"):
        rows = build_features(data, out, BuildConfig(history_length=history_length, memory_limit=memory_limit))
    typer.echo(f"wrote {out}: " + ", ".join(f"{k}={v:,}" for k, v in rows.items()))


def _status(message: str) -> AbstractContextManager[object]:
    """A rich spinner with elapsed time on stderr for steps that take seconds to minutes."""
    from rich.console import Console

    return Console(stderr=True).status(message)


def _store(online_store: str, repo: Path, engine: str = "duckdb") -> StoreConfig:
    from features.store import StoreConfig

    return StoreConfig(repo=repo, online_store=online_store, engine=engine)


ONLINE = typer.Option("sqlite", "--online-store", help="Online store: sqlite (default) or redis (production).")
REPO = typer.Option(Path("features/repo"), "--repo", help="The Feast repository directory.")
REDIS = typer.Option(REDIS_ADDRESS, "--redis", help="Redis address when --online-store redis.")
ENGINE = typer.Option(
    "duckdb",
    "--engine",
    help="duckdb (default) or ray: Feast's Ray offline store and compute engine (feature_store.ray.yaml); the "
    "cluster from RAY_ADDRESS, else a local Ray.",
)


@app.command("apply")
def apply_cmd(online_store: str = ONLINE, repo: Path = REPO) -> None:
    """Register entities, feature views and feature services (`feast apply`)."""
    from features.store import apply

    with _status(f"feast apply {repo}"):
        output = apply(_store(online_store, repo)).strip().splitlines()
    typer.echo(f"applied {repo}: {len([line for line in output if line.startswith('Created')])} objects created")


@app.command("materialize")
def materialize_cmd(
    online_store: str = ONLINE,
    repo: Path = REPO,
    end: datetime | None = typer.Option(None, "--end", help="Materialize up to this time (default: newest snapshot)."),
    redis: str = REDIS,
    engine: str = ENGINE,
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON (for flows)."),
) -> None:
    """Load the newest feature rows into the online store, incrementally."""
    import json

    from features.store import StoreConfig, materialize

    end_utc = end.replace(tzinfo=UTC) if end is not None and end.tzinfo is None else end
    result = materialize(StoreConfig(repo=repo, online_store=online_store, redis=redis, engine=engine), end=end_utc)
    if as_json:
        typer.echo(json.dumps(result))
    else:
        typer.echo(f"materialized {len(result['views'])} views in {result['seconds']} s")


@app.command("training-set")
def training_set_cmd(
    model: str = typer.Option(..., "--model", help="retrieval or ranker."),
    out: Path = typer.Option(..., "--out", help="Output directory (replaced atomically)."),
    start: datetime | None = typer.Option(None, "--start", help="First impression time (UTC); with --end."),
    end: datetime | None = typer.Option(None, "--end", help="End of the window, exclusive (UTC); with --start."),
    days: int | None = typer.Option(
        None, "--days", help="Instead of --start/--end: the last N whole days before the newest impression of --data."
    ),
    as_of: datetime | None = typer.Option(None, "--as-of", help="With --days: end the window here instead (UTC)."),
    data: Path = typer.Option(Path("data/synth"), "--data", help="Canonical dataset the impressions come from."),
    online_store: str = ONLINE,
    repo: Path = REPO,
    engine: str = ENGINE,
) -> None:
    """Point-in-time training set from Feast's offline store (get_historical_features)."""
    from features.store import training_set
    from features.windows import training_window

    w_start, w_end, rule = training_window(data, start, end, days, as_of)
    with _status(f"point-in-time join of {model} rows in [{w_start}, {w_end})"):
        result = training_set(_store(online_store, repo, engine), model, data, w_start, w_end, out, window=rule)
    typer.echo(f"wrote {out}: {result['rows']:,} rows x {result['columns']} columns, [{w_start}, {w_end})")


@app.command("show")
def show_cmd(
    user: int = typer.Option(..., "--user", help="User id to read from the online store."),
    posts: str = typer.Option("", "--posts", help="Comma-separated post ids to read as candidates."),
    online_store: str = ONLINE,
    redis: str = REDIS,
) -> None:
    """Read one user (and optional candidates) through the serving hot path (direct store read, no Feast import)."""
    import time

    from features.online import open_online

    reader = open_online(online_store, redis=redis)
    start = time.perf_counter()
    u = reader.user(user)
    ms = (time.perf_counter() - start) * 1000
    stats = {k: u.stats[k] for k in ("user_country", "user_activity", "user_impressions_7d", "user_click_7d")}
    typer.echo(f"user {user} ({ms:.2f} ms, missing={list(u.missing)}): {stats}")
    typer.echo(f"  history: {u.history['hist_length']} engagements, last posts {list(u.history['hist_post_ids'][-5:])}")
    typer.echo(f"  graph: {len(u.graph['followee_ids'])} followees, {len(u.graph['blocked_author_ids'])} blocked")
    if posts:
        ids = [int(p) for p in posts.split(",") if p.strip()]
        c = reader.candidates(ids)
        for k, pid in enumerate(ids):
            typer.echo(
                f"  post {pid}: author {c.author_ids[k]}, clicks {c.post['post_click_count'][k]}, "
                f"author click rate {c.author['author_click_rate'][k]:.3f}, missing={bool(c.post_missing[k])}"
            )
