"""`monitor`, the daily drift and quality check of what was served, and `retrain`, which it starts when a check fails.

monitor: `ember monitor run` over the last day of the exposure log: the request population against the ranker
training set, what depends on the serving policy (predictions, outcome rates, quality, served posts) against the
champion's baseline window (its first monitored window, kept under artifacts/baselines/<version>/), train/serve skew
and embedding drift (thresholds in monitoring/thresholds.yaml); the run added to the Evidently UI workspace (`ember
dashboards`), a markdown artifact; a "fail" verdict starts `retrain`. "insufficient data" (nothing served yet, too
few rows, no baseline yet) is no alarm and starts nothing.

After a failing check the next days' monitor runs retrain too, `follow_up` of them (default: params.yaml
training_set_ranker.days, the ranker's training window), whatever their verdict: the retrain on the alarm's day
learns from at most one day of the changed world, and the new champion's first window has no baseline to judge it
by (its policy checks say "insufficient data"), so without them the loop stays on that first retrain. After the
follow-ups the ranker's window holds only days from the alarm on. The count left is kept in
artifacts/monitor/follow_up.json; a new alarm starts it again.

retrain: the training stages forced to run again on the data DVC has now (`dvc repro --force --single-item`), then
the rest of `ember-pipeline` (index, gate: a retrained model is still only promoted through the gate).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from flows.deploy import DEPLOY_FILE
from flows.pipeline import PROJECT, ember_pipeline
from flows.tasks import champion_baseline, monitor_window, publish_monitor, record_dashboard
from release.lineage import VARIANTS_FILE

RETRAIN_STAGES = ("train_retrieval", "build_index", "train_ranker")
FOLLOW_UP_FILE = Path("artifacts") / "monitor" / "follow_up.json"


def follow_up_days(project: Path) -> int:
    """Retrains after an alarm's: the ranker's training window in days (params.yaml training_set_ranker.days)."""
    import yaml

    params = yaml.safe_load((Path(project) / "params.yaml").read_text()) or {}
    return int(params.get("training_set_ranker", {}).get("days", 1))


def follow_ups_left(project: Path) -> int:
    """The follow-up retrains still due (0 without a recorded alarm)."""
    path = Path(project) / FOLLOW_UP_FILE
    return int(json.loads(path.read_text())["left"]) if path.is_file() else 0


def set_follow_ups(project: Path, left: int, reason: str) -> None:
    """Records the follow-up retrains still due and why."""
    from core.io import atomic_write_text

    path = Path(project) / FOLLOW_UP_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps({"left": max(left, 0), "reason": reason}) + "\n")


@flow(name="monitor", log_prints=True)
def monitor_flow(
    project: str = str(PROJECT),
    current: str = "logs",
    window_hours: float = 24.0,
    retrain_on_fail: bool = True,
    dashboards: bool = True,
    request_time: bool = False,
    outcomes: str | None = None,
    follow_up: int | None = None,
) -> dict[str, Any]:
    """Checks the last `window_hours` served (`current`: the exposure log directory or a file) and starts `retrain`
    when a check fails. Reports go to monitoring/reports/<UTC time>/ of the project. `request_time`: each request
    was served at its own logged time (ember simulate), not at the deployment's fixed `as_of`. `outcomes`: an outcome
    log (JSONL/parquet: request_id, post_id, actions) joined with the served items, instead of outcomes drawn from
    data/synth's truth. `follow_up`: retrains on the days after an alarm (None: params.yaml training_set_ranker.days;
    see the module doc)."""
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
        reason = "monitor: " + ", ".join(failed)
        retrained = retrain_flow(project=project, reason=reason)
        set_follow_ups(root, follow_up_days(root) if follow_up is None else follow_up, f"alarm ({reason})")
    elif retrain_on_fail and (left := follow_ups_left(root)) > 0:
        retrained = retrain_flow(project=project, reason=f"follow-up of an alarm ({left} left)")
        set_follow_ups(root, left - 1, f"follow-up ({left - 1} left)")
    return {"summary": summary, "reports": str(out), "retrained": retrained}


@flow(name="retrain", log_prints=True)
def retrain_flow(project: str = str(PROJECT), reason: str = "scheduled") -> dict[str, Any]:
    """Retrains both models on the current data, then gates them like any challenger."""
    get_run_logger().info("retrain: %s", reason)
    return ember_pipeline(project=project, force=RETRAIN_STAGES)
