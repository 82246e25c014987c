"""`ember data ...`: generate the synthetic feed and import real datasets into the canonical schema."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

import typer

app = typer.Typer(help="Datasets: synthetic feed generation and real-dataset import.", no_args_is_help=True)
import_app = typer.Typer(help="Import a real dataset into the canonical schema.", no_args_is_help=True)
app.add_typer(import_app, name="import")


class Scale(StrEnum):
    nano = "nano"
    small = "small"
    medium = "medium"
    large = "large"


class Drift(StrEnum):
    none = "none"
    topic_shift = "topic_shift"
    new_users = "new_users"
    author_spam = "author_spam"


@app.command()
def synth(
    out: Path = typer.Option(..., "--out", help="Output dataset directory (replaced atomically)."),
    scale: Scale = typer.Option(Scale.small, "--scale", help="nano (tests), small, medium (x10), large (x100)."),
    seed: int = typer.Option(7, "--seed", help="Random seed: same seed, same bytes."),
    drift: Drift = typer.Option(Drift.none, "--drift", help="Drift scenario that starts on --drift-day."),
    drift_day: int = typer.Option(-1, "--drift-day", help="Day the drift starts (default: the scale's own)."),
    days: int = typer.Option(0, "--days", help="Simulated days of impressions (default: the scale's own)."),
) -> None:
    """Generate the synthetic social feed with ground-truth action probabilities."""
    from features.synth import SynthConfig, generate

    cfg = SynthConfig.for_scale(
        scale.value,
        seed=seed,
        drift=drift.value,
        drift_day=None if drift_day < 0 else drift_day,
        days=days or None,
    )
    manifest = generate(cfg, out, progress=True)
    typer.echo(f"wrote {out}: " + ", ".join(f"{k}={v:,}" for k, v in manifest.rows.items()))


@import_app.command("kuairand")
def import_kuairand(
    src: Path = typer.Option(..., "--src", help="Directory holding the KuaiRand-Pure CSV(.gz) files."),
    out: Path = typer.Option(..., "--out", help="Output dataset directory (replaced atomically)."),
) -> None:
    """Import the KuaiRand-Pure log and user/video features."""
    from features.importers.kuairand import import_kuairand as run

    manifest = run(src, out)
    typer.echo(f"wrote {out}: " + ", ".join(f"{k}={v:,}" for k, v in manifest.rows.items()))


@import_app.command("movielens")
def import_movielens(
    src: Path = typer.Option(..., "--src", help="Directory holding the MovieLens-100K files (u.data[.gz], ...)."),
    out: Path = typer.Option(..., "--out", help="Output dataset directory (replaced atomically)."),
) -> None:
    """Import MovieLens-100K ratings as impressions (click; like when rating >= 4; not_interested when <= 2)."""
    from features.importers.movielens import import_movielens as run

    manifest = run(src, out)
    typer.echo(f"wrote {out}: " + ", ".join(f"{k}={v:,}" for k, v in manifest.rows.items()))


@app.command()
def stats(
    dataset: Path = typer.Argument(..., help="A canonical dataset directory."),
    out: Path = typer.Option(Path("metrics/data.json"), "--out", help="Metrics JSON to write."),
) -> None:
    """Summarise a dataset into a DVC metrics file (row counts, action rates, exposure, oracle means)."""
    from features.stats import write_stats

    summary = write_stats(dataset, out)
    typer.echo(f"wrote {out}: {summary['rows']}")


@app.command()
def exposures(
    out: Path = typer.Option(..., "--out", help="Output dataset directory (replaced atomically)."),
    exposure: Path = typer.Option(Path("logs"), "--exposure", help="The exposure log: a .jsonl file or its directory."),
    data: Path = typer.Option(Path("data/synth"), "--data", help="The dataset the served posts and users are from."),
    outcomes: Path | None = typer.Option(
        None, "--outcomes", help="Outcomes file (JSONL or parquet: request_id, post_id, 0/1 per action)."
    ),
    synthetic: Path | None = typer.Option(
        None, "--synthetic", help="Instead of --outcomes: draw them from this synthetic dataset's truth model."
    ),
    as_of: str | None = typer.Option(
        None,
        "--as-of",
        help="The time the service served at (its variants' as_of): an ISO time, or 'data' (the end of the newest "
        "day of --data); default: each record's ts.",
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the synthetic outcomes."),
    allow_missing: bool = typer.Option(
        False, "--allow-missing", help="A served item without an outcome row had no action (default: refused)."
    ),
) -> None:
    """What was served, with its outcomes, as canonical impressions (the exposure log back into training)."""
    from datetime import UTC, datetime

    from core.errors import UserError
    from features.windows import AS_OF_DATA, data_end
    from monitoring.served_impressions import served_dataset

    when: datetime | None = None
    if as_of == AS_OF_DATA:
        when = data_end(data)
    elif as_of is not None:
        try:
            when = datetime.fromisoformat(as_of)
        except ValueError:
            raise UserError(f"--as-of: not an ISO time or {AS_OF_DATA!r}: {as_of!r}") from None
        when = when if when.tzinfo is not None else when.replace(tzinfo=UTC)
    result = served_dataset(exposure, data, out, outcomes, synthetic, when, seed, allow_missing)
    typer.echo(
        f"wrote {out}: {result['rows']:,} served impressions of {result['requests']:,} requests; "
        f"outcomes {result['outcomes']}"
    )


@app.command()
def merge(
    base: Path = typer.Argument(..., help="The base dataset (its users, follows, posts and impressions)."),
    extras: list[Path] = typer.Argument(..., help="Datasets whose impressions are added (e.g. data/served)."),
    out: Path = typer.Option(..., "--out", help="Output dataset directory (replaced atomically)."),
) -> None:
    """The base dataset plus the impressions of others, as one canonical dataset."""
    from features.merge import merge_datasets

    result = merge_datasets(base, extras, out)
    added = ", ".join(f"{p['dataset']} {p['impressions']:,}" for p in result["parts"])
    typer.echo(f"wrote {out}: impressions {added}")
