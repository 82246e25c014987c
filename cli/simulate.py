"""`ember simulate`: days of production against a synthetic world's ground truth (flows/simulate.py)."""

from __future__ import annotations

from pathlib import Path

import typer


def simulate(
    data: Path = typer.Option(..., "--data", help="Synthetic dataset (ember data synth): the world and its history."),
    days: int = typer.Option(..., "--days", help="Simulated days after the dataset's last."),
    out: Path = typer.Option(..., "--out", help="Run directory: simulate.json, simulate.csv and the run's project."),
    drift: str = typer.Option("none", "--drift", help="Drift starting mid-run: none or topic_shift."),
    drift_day: int | None = typer.Option(None, "--drift-day", help="Simulated day (1..days) the drift starts on."),
    policies: str = typer.Option(
        "loop,frozen,oracle,popular,random", "--policies", help="Policies whose true reward is reported."
    ),
    requests_per_day: int = typer.Option(
        0, "--requests-per-day", help="Requests served per simulated day (0: the world's own, nano 510, small 25,000)."
    ),
    k: int = typer.Option(10, "--k", help="Slate size."),
    seed: int = typer.Option(0, "--seed", help="Seed of requests, new posts, reference slates and outcomes."),
    retrain_every: int = typer.Option(
        1,
        "--retrain-every",
        help="Retrain (both models, gated) every N days, besides the monitor's alarms: 1, as the deployed main job "
        "retrains daily (flows/prefect.yaml); 0: only when the daily monitor alarms.",
    ),
    explore_slots: int | None = typer.Option(
        None,
        "--explore-slots",
        help="Last slots of each served slate drawn at random from the rest of the ranked "
        "pool, so the loop keeps seeing how users take what it under-rates (0: the ranked slate; default 2).",
    ),
    overrides: list[str] = typer.Option(
        [], "--set", help="params.yaml of the run's project: stage.key=value (repeatable), e.g. train_ranker.epochs=1."
    ),
    http: bool = typer.Option(
        False,
        "--http",
        help="Serve the loop's requests through the real BentoML service (`ember serve` per day, POST /recommend, "
        "its own exposure log) instead of in-process; each day is then served at its start (the service's as_of).",
    ),
    live_hours: int = typer.Option(
        1,
        "--live-hours",
        help="Serve each day this many hours at a time, the users' engagements pushed to the online store as they "
        "happen (in-process through the push source, --http as POST /events; the next request that day sees them) "
        "and the hourly materialize flow run after each block; 0: the whole day from its start's features.",
    ),
) -> None:
    """N simulated days of production: requests through the deployed pipeline, outcomes drawn from the truth, the
    served days as the next day's data, the deployed flows' daily steps (materialize, monitor, retrain on alarm,
    gate), and the true reward per day of the loop, the frozen first model, the oracle, popular and random."""
    import yaml

    from core.errors import UserError
    from monitoring.simulate import check_args, load_synthetic, parse_policies, synth_params

    chosen = parse_policies(policies)
    check_args(days, requests_per_day, drift, drift_day, seed, k, retrain_every, explore_slots or 0)
    from monitoring.simulate_live import check_live_hours

    check_live_hours(live_hours)
    load_synthetic(data)
    synth = synth_params(data)
    parsed = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or "." not in key:
            raise UserError(f"--set: expected stage.key=value, got {item!r}")
        parsed[key.strip()] = yaml.safe_load(value)

    from flows.api import prefect_api
    from flows.pipeline import PROJECT
    from flows.simulate import EXPLORE_SLOTS, run_params, simulate_flow

    run_params(PROJECT / "params.yaml", synth, parsed)  # an unknown --set key, before anything starts

    with prefect_api() as url:
        typer.echo(f"Prefect API: {url}")
        result = simulate_flow(
            data=str(data), out=str(out), days=days, policies=chosen, requests_per_day=requests_per_day, seed=seed,
            drift=drift, drift_day=drift_day, k=k, retrain_every=retrain_every, overrides=parsed,
            explore_slots=EXPLORE_SLOTS if explore_slots is None else explore_slots, http=http, live_hours=live_hours,
        )  # fmt: skip
    typer.echo(result["summary"])
    typer.echo(f"per day: {Path(out) / 'simulate.csv'} (DVC plot), {Path(out) / 'simulate.json'}")
