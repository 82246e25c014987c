"""`ember promote`, `ember rollback`, `ember lineage`: the promotion gate and the deployment registry
(release/, artifacts/registry.json)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

ROOT = typer.Option(Path("."), "--root", help="Project root (registry, dvc.lock, artifacts, serving/variants.yaml).")


def _short(value: str | None) -> str:
    return "-" if value is None else value[:12]


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{value:.5f}"
    return str(value)[:10]


def _print_checks(checks: list[dict[str, Any]]) -> None:
    if not checks:
        return
    width = max(len("check"), *(len(c["metric"]) for c in checks))
    typer.echo(f"{'check':<{width}}  {'challenger':>10}  {'champion':>10}  {'rule':<24}  ok")
    for c in checks:
        cells = f"{_cell(c['challenger']):>10}  {_cell(c['champion']):>10}  {c['rule']:<24}"
        typer.echo(f"{c['metric']:<{width}}  {cells}  {'yes' if c['ok'] else 'NO'}")


def _line(entry: dict[str, Any], champion: str | None) -> str:
    """One deployment on one line: version, when, models, headline metrics, status."""
    if entry["version"] == champion:
        status = "champion"
    elif entry.get("rolled_back_at"):
        status = f"rolled back {entry['rolled_back_at']}"
    else:
        status = "retired"
    models = " ".join(f"{m} {_short(v)}" for m, v in sorted(entry.get("models", {}).items()))
    ranker = entry.get("metrics", {}).get("ranker", {})
    shown = " ".join(f"{k} {ranker[k]:.4f}" for k in ("auc_mean", "logloss_mean") if k in ranker)
    return f"{entry['version']:>4}  {entry.get('promoted_at') or '-'}  {models}  {shown}  [{status}]"


def lineage_cmd(
    as_json: bool = typer.Option(False, "--json", help="Print {champion, history} as JSON."),
    root: Path = ROOT,
) -> None:
    """The champion's lineage (models, data, features, Bento, A/B config) and every deployment, one per line."""
    from release.registry import champion_entry, read_registry

    registry = read_registry(root)
    champion = champion_entry(registry)
    if as_json:
        typer.echo(json.dumps({"champion": champion, "history": registry["history"]}, indent=2, sort_keys=True))
        return
    if champion is None:
        typer.echo("no champion yet (run `ember promote`)")
    else:
        typer.echo(f"champion {champion['version']} (promoted {champion['promoted_at']})")
        models = ", ".join(f"{m} {v}" for m, v in sorted(champion["models"].items()))
        typer.echo(f"  models: {models}")
        typer.echo("  data: " + ", ".join(f"{p} {_short(v)}" for p, v in sorted(champion["data"].items())))
        features = champion["features"]
        typer.echo(f"  features: {', '.join(features['services'])} (definitions {features['definitions']})")
        typer.echo(f"  bento: {champion.get('bento') or '-'}")
        typer.echo(f"  A/B config: {champion['ab_config']}")
        for model, values in sorted(champion.get("metrics", {}).items()):
            typer.echo(f"  {model} metrics: " + ", ".join(f"{k}={v}" for k, v in sorted(values.items())))
    if registry["history"]:
        typer.echo("history:")
        for entry in registry["history"]:
            typer.echo("  " + _line(entry, registry["champion"]))


def promote_cmd(
    challenger_metrics: Path = typer.Option(
        Path("metrics/ranker.json"), "--challenger-metrics", help="The challenger ranker's metrics JSON."
    ),
    retrieval_metrics: Path | None = typer.Option(
        None, "--retrieval-metrics", help="The challenger retrieval model's metrics JSON (not gated when left out)."
    ),
    drift_passed: bool | None = typer.Option(
        None, "--drift-passed/--drift-failed", help="The drift tests' verdict (left out: not measured)."
    ),
    shadow_metrics: Path | None = typer.Option(
        None, "--shadow-metrics", help='Shadow agreement JSON ({"overlap@k": ..., "spearman": ...}).'
    ),
    gate: Path | None = typer.Option(None, "--gate", help="Gate config (default: <root>/flows/promotion.yaml)."),
    bento: str | None = typer.Option(None, "--bento-tag", help="The Bento tag these models are served from."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Run the gate only; never write the registry."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON (after the table)."),
    root: Path = ROOT,
) -> None:
    """Gate the models in artifacts/ against the champion; promote them when every check passes (exit 0 either way)."""
    from release.promotion import run_gate

    result = run_gate(
        root,
        challenger_metrics,
        retrieval_metrics,
        gate_file=gate,
        drift_passed=drift_passed,
        shadow_metrics=shadow_metrics,
        bento=bento,
        dry_run=dry_run,
    )
    decision = result["decision"]
    _print_checks(decision["checks"])
    for note in decision["notes"]:
        typer.echo(f"note: {note}")
    why = "; ".join(decision["reasons"])
    before = result["champion_before"] or "none"
    if not decision["promote"]:
        typer.echo(f"stays shadow: {why} (champion: {before})")
    elif dry_run:
        typer.echo(f"would promote (dry run, registry unchanged): {why} (champion: {before})")
    elif not result["changed"]:
        typer.echo(f"{before} is already the champion (same models, data, features and A/B config): nothing changed")
    else:
        typer.echo(f"promoted {result['champion']} (was {before}): {why}")
    if as_json:
        typer.echo(json.dumps(result, indent=2, sort_keys=True))


def rollback_cmd(root: Path = ROOT) -> None:
    """Restore the previous champion (the current one is marked rolled back); an error when there is none."""
    from release.registry import champion_entry, read_registry, rollback

    before = champion_entry(read_registry(root))
    restored = rollback(root)
    was = before["version"] if before else "none"
    typer.echo(f"rolled back {was} -> {restored['version']} (models {json.dumps(restored['models'], sort_keys=True)})")
    from flows.deploy import MODEL_STORE, set_key, write_deployment

    key = set_key(restored["models"])
    if (root / MODEL_STORE / key).is_dir():  # sets stored by the pipeline (flows/deploy.py) are deployed again
        deployed = write_deployment(root, key)
        typer.echo(f"deployment {deployed['file']}: champion models {key}")
    else:
        typer.echo(f"{MODEL_STORE / key}: not stored, the deployment file is unchanged")
