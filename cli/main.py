"""`ember`: entry point. Sub-apps import their heavy dependencies (torch, feast, ...) inside commands only."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import typer

from cli import ab, data, events, features, lineage, models, monitor, serve, simulate
from cli.dashboards import dashboards

app = typer.Typer(
    name="ember",
    help="Ember: a workflow-orchestrated feed recommender (data -> features -> models -> serving -> monitoring).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(data.app, name="data")
app.add_typer(features.app, name="features")
app.add_typer(models.train_app, name="train")
app.add_typer(models.evaluate_app, name="evaluate")
app.add_typer(models.index_app, name="index")
app.add_typer(monitor.app, name="monitor")
app.add_typer(ab.app, name="ab")
app.add_typer(events.app, name="events")
app.command("serve")(serve.serve)
app.command("promote")(lineage.promote_cmd)
app.command("rollback")(lineage.rollback_cmd)
app.command("lineage")(lineage.lineage_cmd)
app.command("dashboards")(dashboards)
app.command("simulate")(simulate.simulate)


@app.command("run")
def run(
    online_store: str = typer.Option("sqlite", "--online-store", help="Online store to load: sqlite or redis."),
    redis: str = features.REDIS,
    push: bool = typer.Option(False, "--push", help="`dvc push` the artifacts at the end."),
    bento: bool = typer.Option(False, "--bento", help="Build the Bento (`make bento`) and record its tag."),
    report: Path | None = typer.Option(None, "--report", help="Also write the flow's result (seconds per step) here."),
) -> None:
    """Run the main job, the `ember-pipeline` Prefect flow, against PREFECT_API_URL when set, else against a local
    `prefect server start` (PREFECT_HOME .prefect/) started for the run and stopped afterwards (flows/api.py)."""
    from core.params import load_params
    from flows.api import prefect_api
    from flows.pipeline import PROJECT, ember_pipeline

    load_params(PROJECT / "params.yaml")  # bad parameters: one line, before the Prefect API starts
    with prefect_api() as url:
        typer.echo(f"Prefect API: {url}")
        result = ember_pipeline(online_store=online_store, redis=redis, push=push, bento=bento)
    if report is not None:
        from core.io import atomic_write_text

        atomic_write_text(report, json.dumps(result, indent=2, default=str))
    ran = ", ".join(result["stages_run"]) or "none (all cached)"
    typer.echo(f"ember-pipeline done: stages run: {ran}; online store: {len(result['online']['views'])} views")
    promotion, deployed = result["promotion"], result["deployment"]
    verdict = "promoted" if promotion["promoted"] else "not promoted"
    shadow = f", challenger {deployed['challenger']} in shadow" if deployed["challenger"] else ""
    typer.echo(f"gate: {verdict}; champion {promotion['champion']} serving from {deployed['file']}{shadow}")
    slowest = sorted(result["seconds"].items(), key=lambda kv: -kv[1])[:3]
    typer.echo("slowest steps: " + ", ".join(f"{name} {s:.0f} s" for name, s in slowest))


def main(argv: list[str] | None = None) -> None:
    """Runs the CLI. Bad input (a UserError or a bad option) is one line on stderr and exit status 2."""
    # typer 0.29 vendors click: its exceptions live in typer._click.
    from typer._click import exceptions as click_errors

    from core.errors import UserError

    try:
        code = app(args=argv, standalone_mode=False)
    except UserError as err:
        typer.echo(f"error: {err}", err=True)
        sys.exit(err.exit_code)
    except click_errors.NoArgsIsHelpError as err:
        typer.echo(err.ctx.get_help() if err.ctx else "")
        sys.exit(0)
    except click_errors.UsageError as err:
        where = f"{err.ctx.command_path}: " if err.ctx else ""
        typer.echo(f"error: {where}{err.format_message()}", err=True)
        sys.exit(2)
    except click_errors.ClickException as err:
        typer.echo(f"error: {err.format_message()}", err=True)
        sys.exit(err.exit_code)
    except typer.Abort:
        typer.echo("aborted", err=True)
        sys.exit(130)
    except typer.Exit as done:
        sys.exit(done.exit_code)
    status = code if isinstance(code, int) else 0
    if "ibis" in sys.modules and argv is None:
        # Feast's DuckDB offline store (ibis) keeps DuckDB objects alive until interpreter shutdown, where DuckDB's
        # nanobind bindings print pages of spurious "leaked instance" warnings: the work is done, skip finalization.
        # Only as the `ember` program (argv from sys.argv): an in-process caller (the tests) must get SystemExit,
        # never a hard exit of its own process.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    sys.exit(status)


if __name__ == "__main__":
    main()
