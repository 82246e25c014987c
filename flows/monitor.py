"""`monitor`, the daily drift and quality check of what was served, and `retrain`, which it starts when a check fails.

monitor: `ember monitor run` over the exposure log against the ranker training set (data, prediction and target drift,
recommendation quality, train/serve skew, embedding drift; thresholds in monitoring/thresholds.yaml), the run added
to the Evidently UI workspace (`ember dashboards`), a markdown artifact; a "fail" verdict starts `retrain`.
"insufficient data" (nothing served yet, too few rows) is no alarm and starts nothing.

retrain: the training stages forced to run again on the data DVC has now (`dvc repro --force --single-item`), then
the rest of `ember-pipeline` (index, gate: a retrained model is still only promoted through the gate).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from flows.pipeline import PROJECT, ember_pipeline
from flows.tasks import monitor_window, publish_monitor, record_dashboard

RETRAIN_STAGES = ("train_retrieval", "build_index", "train_ranker")


@flow(name="monitor", log_prints=True)
def monitor_flow(
    project: str = str(PROJECT),
    current: str = "logs",
    retrain_on_fail: bool = True,
    dashboards: bool = True,
) -> dict[str, Any]:
    """Checks the served window (`current`: the exposure log directory or a file) and starts `retrain` when a check
    fails. Reports go to monitoring/reports/<UTC time>/ of the project."""
    root = Path(project)
    out = Path("monitoring") / "reports" / datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    summary = monitor_window(root, Path(current), out)
    if dashboards:
        record_dashboard(root, summary)
    publish_monitor(summary, out)
    retrained = None
    if summary["status"] == "fail" and retrain_on_fail:
        failed = [name for name, status in summary["tests"].items() if status == "fail"]
        retrained = retrain_flow(project=project, reason="monitor: " + ", ".join(failed))
    return {"summary": summary, "reports": str(out), "retrained": retrained}


@flow(name="retrain", log_prints=True)
def retrain_flow(project: str = str(PROJECT), reason: str = "scheduled") -> dict[str, Any]:
    """Retrains both models on the current data, then gates them like any challenger."""
    get_run_logger().info("retrain: %s", reason)
    return ember_pipeline(project=project, force=RETRAIN_STAGES)
