"""`monitor`, the daily drift and quality check of what was served, and `retrain`, which it starts when a check fails.

monitor: `ember monitor run` over the last day of the exposure log: the request population against the ranker
training set, what depends on the serving policy (predictions, outcome rates, quality, served posts) against the
champion's baseline window (its first monitored window, kept under artifacts/baselines/<version>/), train/serve skew
and embedding drift (thresholds in monitoring/thresholds.yaml); the run added to the Evidently UI workspace (`ember
dashboards`), a markdown artifact; a "fail" verdict starts `retrain`. "insufficient data" (nothing served yet, too
few rows, no baseline yet) is no alarm and starts nothing.

retrain: the training stages forced to run again on the data DVC has now (`dvc repro --force --single-item`), then
the rest of `ember-pipeline` (index, gate: a retrained model is still only promoted through the gate).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from flows.deploy import DEPLOY_FILE
from flows.pipeline import PROJECT, ember_pipeline
from flows.promotion import VARIANTS_FILE
from flows.tasks import champion_baseline, monitor_window, publish_monitor, record_dashboard

RETRAIN_STAGES = ("train_retrieval", "build_index", "train_ranker")


@flow(name="monitor", log_prints=True)
def monitor_flow(
    project: str = str(PROJECT),
    current: str = "logs",
    window_hours: float = 24.0,
    retrain_on_fail: bool = True,
    dashboards: bool = True,
    request_time: bool = False,
    outcomes: str | None = None,
) -> dict[str, Any]:
    """Checks the last `window_hours` served (`current`: the exposure log directory or a file) and starts `retrain`
    when a check fails. Reports go to monitoring/reports/<UTC time>/ of the project. `request_time`: each request
    was served at its own logged time (ember simulate), not at the deployment's fixed `as_of`. `outcomes`: an outcome
    log (JSONL/parquet: request_id, post_id, actions) joined with the served items, instead of outcomes drawn from
    data/synth's truth."""
    root = Path(project)
    now = datetime.now(UTC)
    start = now - timedelta(hours=window_hours)
    out = Path("monitoring") / "reports" / now.strftime("%Y%m%dT%H%M%SZ")
    variants = DEPLOY_FILE if (root / DEPLOY_FILE).is_file() else VARIANTS_FILE  # what `make run` serves
    baseline, note = champion_baseline(root, Path(current), start)
    summary = monitor_window(root, Path(current), out, variants, start, baseline, request_time,
                             Path(outcomes) if outcomes else None)  # fmt: skip
    summary["baseline"] = note
    if dashboards:
        record_dashboard(root, summary)
    publish_monitor(summary, out)
    retrained = None
    if summary["status"] == "fail" and retrain_on_fail:
        failed = summary.get("alarms") or [name for name, status in summary["tests"].items() if status == "fail"]
        retrained = retrain_flow(project=project, reason="monitor: " + ", ".join(failed))
    return {"summary": summary, "reports": str(out), "retrained": retrained}


@flow(name="retrain", log_prints=True)
def retrain_flow(project: str = str(PROJECT), reason: str = "scheduled") -> dict[str, Any]:
    """Retrains both models on the current data, then gates them like any challenger."""
    get_run_logger().info("retrain: %s", reason)
    return ember_pipeline(project=project, force=RETRAIN_STAGES)
