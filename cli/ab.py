"""`ember ab report`: the A/B readout of an exposure log (monitoring/ab_report.py)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

app = typer.Typer(help="A/B tests: the readout of the served variants.", no_args_is_help=True)


@app.command("report")
def report(
    exposure: Path = typer.Option(Path("logs/exposure.jsonl"), "--exposure", help="The exposure log (or its folder)."),
    config: Path = typer.Option(
        Path("artifacts/deploy/variants.yaml"), "--config", help="The variants YAML the service ran with."
    ),
    control: str | None = typer.Option(None, "--control", help="Baseline variant (default: the champion)."),
    outcomes: Path | None = typer.Option(
        None, "--outcomes", help="Outcomes file (JSONL or parquet: request_id, post_id, action flags)."
    ),
    synthetic: Path | None = typer.Option(
        None, "--synthetic", help="Synthetic dataset: draw the outcomes from its truth model (no --outcomes)."
    ),
    alpha: float = typer.Option(0.05, "--alpha", help="Significance level of the test (two-sided)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the simulated outcomes."),
    json_out: Path | None = typer.Option(None, "--json", help="Also write the readout as JSON here."),
) -> None:
    """Per-variant reward per request with its interval (and the true reward on a synthetic world), each challenger
    against the control (fixed-horizon Welch z-test over users), the sample-ratio check, and the decision."""
    from core.io import atomic_write_text
    from monitoring.ab_report import report_from_log

    result = report_from_log(exposure, config, control, outcomes, synthetic, alpha, seed)
    for name, v in result["variants"].items():
        truth = f", true {v['true_reward_per_request']:.4f}" if "true_reward_per_request" in v else ""
        typer.echo(f"{name}: {v['users']} users, {v['requests']} requests, reward/request "
                   f"{v['reward_per_request']:.4f} [{v['ci'][0]:.4f}, {v['ci'][1]:.4f}]{truth}")  # fmt: skip
    for name, c in result["comparisons"].items():
        typer.echo(f"{name} - {result['control']}: {c['difference']:+.4f} [{c['ci'][0]:+.4f}, {c['ci'][1]:+.4f}], "
                   f"p = {c['p_value']:.3g}")  # fmt: skip
    if result["srm"] is not None:
        typer.echo(
            f"sample ratio: p = {result['srm']['p_value']:.3g}" + (" MISMATCH" if result["srm"]["mismatch"] else "")
        )
    d = result["decision"]
    typer.echo(f"test: {result['test']}\ndecision: {d['action']} {d['variant'] or ''} ({d['why']})")
    if json_out is not None:
        atomic_write_text(Path(json_out), json.dumps(result, indent=2, default=float) + "\n")
