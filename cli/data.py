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
