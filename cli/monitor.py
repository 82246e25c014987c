"""`ember monitor drift`: data drift (and, with --actions, prediction drift) of a current window against a reference,
with Evidently 0.7 (monitoring/drift.py).

Exit status: 0 pass; 1 fail (drift past the thresholds in monitoring/thresholds.yaml); 0 with an "insufficient data"
message when there is no verdict (an empty or too small window, a missing or all-NaN column): a monitor that has no
data is not an alarm. Bad input (a missing file, an unreadable table, a bad thresholds key) is one line on stderr,
exit 2.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

app = typer.Typer(help="Monitoring: drift checks with Evidently.", no_args_is_help=True)


def _csv(value: str | None) -> list[str] | None:
    if value is None:
        return None
    items = [v.strip() for v in value.split(",") if v.strip()]
    return items or None


def _read_parquet(path: Path, wanted: list[str] | None) -> Any:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from core.errors import UserError

    if not path.is_file():
        raise UserError(f"{path}: file not found")
    try:
        schema = pq.read_schema(path)
        keep = [
            f.name
            for f in schema
            if (wanted is None and not pa.types.is_nested(f.type)) or (wanted is not None and f.name in wanted)
        ]
        return pq.read_table(path, columns=keep).to_pandas()
    except (OSError, pa.ArrowException) as err:
        raise UserError(f"{path}: not a readable parquet file: {str(err).splitlines()[0]}") from None


def _read_current(path: Path, wanted: list[str] | None) -> tuple[Any, str]:
    from core.errors import UserError
    from monitoring.exposure_frame import read_exposure

    if not path.exists():
        raise UserError(f"{path}: file or directory not found")
    if path.is_file() and path.suffix == ".parquet":
        return _read_parquet(path, wanted), ""
    read = read_exposure(path)
    note = f"exposure log: {len(read.files)} files, {read.records} records, {len(read.frame)} served items"
    if read.malformed:
        note += f", {read.malformed} malformed lines skipped"
    return read.frame, note


def _report(result: Any, top: int) -> None:
    label = "data drift" if result.kind == "data_drift" else "prediction drift"
    if result.status == "insufficient_data":
        typer.echo(f"{label}: insufficient data (no verdict): " + "; ".join(result.reasons[:5]))
        return
    share = f"{result.share_drifted:.0%}" if result.share_drifted is not None else "-"
    checked = len(result.per_feature)
    typer.echo(
        f"{label}: {result.status.upper()} ({share} of {checked} drifted; "
        f"reference {result.n_reference} rows, current {result.n_current} rows)"
    )
    for name in result.drifted()[:top]:
        v = result.per_feature[name]
        typer.echo(f"  {name}: score {v['score']:.4g} ({v['method']}, threshold {v['threshold']})")


@app.command("drift")
def drift(
    reference: Path = typer.Option(..., "--reference", help="Reference parquet (e.g. the ranker training set)."),
    current: Path = typer.Option(
        ..., "--current", help="Current window: a parquet file, an exposure .jsonl file or a directory of them."
    ),
    features: str | None = typer.Option(
        None, "--features", help="Comma-separated features (default: shared numeric user_/post_/author_ columns)."
    ),
    actions: str | None = typer.Option(None, "--actions", help="Also check prediction drift of pred_<action> columns."),
    thresholds: Path | None = typer.Option(
        None, "--thresholds", help="Thresholds YAML (default monitoring/thresholds.yaml)."
    ),
    html: Path | None = typer.Option(None, "--html", help="Write Evidently's HTML report of the data drift here."),
    json_out: Path | None = typer.Option(None, "--json", help="Write the verdicts as JSON here."),
    top: int = typer.Option(10, "--top", help="How many drifted features to list."),
) -> None:
    """Data drift of --current against --reference. Exit 0 pass, 1 fail, 0 with "insufficient data" (no verdict)."""
    from core.errors import UserError
    from core.io import atomic_write_text
    from monitoring.config import load_config
    from monitoring.drift import data_drift, prediction_column, prediction_drift

    cfg = load_config(thresholds)
    wanted = _csv(features)
    action_list = _csv(actions)
    read_cols = None if wanted is None else wanted + [prediction_column(a) for a in action_list or []]
    ref = _read_parquet(reference, read_cols)
    cur, note = _read_current(current, read_cols)
    if note:
        typer.echo(note)
    if top < 0:
        raise UserError(f"--top: must be >= 0, got {top}")
    from monitoring.monitor import default_features

    chosen = wanted if wanted is not None else default_features(ref, cur)
    results = [data_drift(ref, cur, chosen, cfg, html=html)]
    if action_list:
        results.append(prediction_drift(ref, cur, action_list, cfg))
    for result in results:
        _report(result, top)
    if json_out is not None:
        atomic_write_text(json_out, json.dumps({r.kind: r.to_dict() for r in results}, indent=2, default=str) + "\n")
    if any(r.status == "fail" for r in results):
        raise typer.Exit(1)


def _iso(value: str | None, option: str) -> Any:
    from core.io import parse_iso

    return parse_iso(value, option)


@app.command("run")
def run(
    reference: Path = typer.Option(
        ..., "--reference", help="Reference: the ranker training set (directory or parquet)."
    ),
    current: Path = typer.Option(
        ..., "--current", help="Current window: an exposure .jsonl file or a directory of them (or a parquet)."
    ),
    out: Path = typer.Option(..., "--out", help="Directory for the Evidently reports, result.json and summary.json."),
    baseline: Path | None = typer.Option(
        None,
        "--baseline",
        help="Baseline served window of the same model (exposure .jsonl file, directory or parquet; e.g. the "
        "champion's first days): the reference of served-item features, predictions, outcome rates, quality and "
        "served-post embeddings. Without it those report insufficient data.",
    ),
    json_out: Path | None = typer.Option(None, "--json", help="Also write the summary as JSON here."),
    outcomes: Path | None = typer.Option(
        None, "--outcomes", help="Outcomes file (JSONL or parquet: request_id, post_id, action flags)."
    ),
    synthetic: Path | None = typer.Option(
        None,
        "--synthetic",
        help="Synthetic dataset: simulate outcomes from its ground truth when --outcomes is absent.",
    ),
    features: Path | None = typer.Option(
        None, "--features", help="Offline feature tables (data/features): skew, embedding drift, topics, coverage."
    ),
    retrieval_model: Path | None = typer.Option(
        None, "--retrieval-model", help="Two-tower model directory (artifacts/retrieval/best): embedding drift."
    ),
    as_of: str | None = typer.Option(
        None, "--as-of", help="ISO time the service served at (a fixed-time world); default: each record's ts."
    ),
    start: str | None = typer.Option(None, "--start", help="Window start (ISO), inclusive."),
    end: str | None = typer.Option(None, "--end", help="Window end (ISO), exclusive."),
    thresholds: Path | None = typer.Option(
        None, "--thresholds", help="Thresholds YAML (default monitoring/thresholds.yaml)."
    ),
) -> None:
    """Every monitoring check over one window. Exit 0 pass, 1 fail, 0 with "insufficient data" (no verdict)."""
    from core.io import atomic_write_text
    from monitoring.config import load_config
    from monitoring.monitor import MonitorInputs, run_monitor

    cfg = load_config(thresholds)
    result = run_monitor(
        MonitorInputs(
            reference,
            current,
            baseline=baseline,
            outcomes=outcomes,
            synthetic=synthetic,
            features=features,
            retrieval_model=retrieval_model,
            as_of=_iso(as_of, "--as-of"),
            window_start=_iso(start, "--start"),
            window_end=_iso(end, "--end"),
        ),
        out,
        cfg,
    )
    summary = result.summary()
    _print_result(result, summary, out)
    if json_out is not None:
        atomic_write_text(json_out, json.dumps(summary, indent=2, default=str) + "\n")
    if result.status == "fail":
        raise typer.Exit(1)


def _print_result(result: Any, summary: dict[str, Any], out: Path) -> None:
    """The run's notes, one line per check (its status and first reasons), the quality numbers and the verdict."""
    for note in result.notes:
        typer.echo(note)
    reasons = result.reasons()
    for name, status in summary["tests"].items():
        label = "insufficient data" if status == "insufficient_data" else status.upper()
        why = "; ".join(reasons[name][:3])
        typer.echo(f"{name}: {label}" + (f" ({why})" if why else ""))
    quality = ", ".join(f"{k} {v:.4g}" for k, v in summary["quality"].items() if v is not None)
    if quality:
        typer.echo(f"quality: {quality}")
    verdict = "insufficient data" if result.status == "insufficient_data" else result.status.upper()
    typer.echo(f"monitor: {verdict}; reports in {out}")
