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


@app.command("off-policy")
def off_policy(
    exposure: Path = typer.Option(Path("logs/exposure.jsonl"), "--exposure", help="The exposure log (or its folder)."),
    variant: str | None = typer.Option(None, "--variant", help="The exploring variant (default: the only one)."),
    outcomes: Path | None = typer.Option(
        None, "--outcomes", help="Outcomes file (JSONL or parquet: request_id, post_id, action flags)."
    ),
    synthetic: Path | None = typer.Option(
        None, "--synthetic", help="Synthetic dataset: draw the outcomes from its truth model (no --outcomes)."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the simulated outcomes."),
    json_out: Path | None = typer.Option(None, "--json", help="Also write the estimates as JSON here."),
) -> None:
    """What an exploring variant (explore_temperature > 0) would earn serving its ranked order instead: IPS, SNIPS and
    DR from the logged propensities and the outcomes, beside the reward it logged."""
    from core.io import atomic_write_text
    from monitoring.off_policy import ranked_target_from_log

    r = ranked_target_from_log(exposure, variant, outcomes, synthetic, seed)
    e = r["ranked_target"]
    truth = f" (true {r['logged_true_reward_per_request']:.4f})" if "logged_true_reward_per_request" in r else ""
    typer.echo(f"{r['variant']}: {r['requests']} requests of {r['slate_length']} items ({r['requests_dropped']} "
               f"dropped), logged reward/request {r['logged_reward_per_request']:.4f} +- "
               f"{r['logged_reward_se']:.4f}{truth}")  # fmt: skip
    typer.echo(
        f"ranked order, estimated: IPS {e['ips']:.4f}, SNIPS {e['snips']:.4f}, DR {e['dr']:.4f} "
        f"(effective sample share {e['effective_sample_share']:.3f}, max weight {e['max_weight']:.1f})"
    )
    if json_out is not None:
        atomic_write_text(Path(json_out), json.dumps(r, indent=2, default=float) + "\n")
