"""The monitoring dashboards: an Evidently 0.7 UI workspace with one project per model and one snapshot per monitor run.

A run is logged from the monitor's summary dict (monitoring/monitor.py, `MonitorRun.summary()`):

    {"model": "ranker", "window_start": iso, "window_end": iso, "status": "pass" | "fail" | "insufficient_data",
     "data_drift_share": float | None, "prediction_mean": {action: float}, "quality": {"ndcg@10": float, ...},
     "skew_rate": float | None, "embedding_drift_share": float | None, "target_drift_share": float | None,
     "tests": {name: status}}

Evidently's dashboards plot metric results stored in snapshots, so each number of the summary is logged the way
Evidently logs a scalar: `MeanValue` of a one-row column (the mean of one value is that value, exactly). The column
names are the series the panels select (`data_drift_share`, `ndcg@10`, `prediction_mean.like`, ...). A None (or
non-finite) value is not logged, so it is simply not plotted. When the run's reference and current frames are given,
Evidently's own `DataDriftPreset` runs on them and its results join the same snapshot.

Projects and panels are created idempotently: a project is found by its name, a panel by its title, and only what is
missing is added.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.actions import ACTION_NAMES
from core.errors import UserError

if TYPE_CHECKING:
    import pandas as pd
    from evidently.sdk.models import DashboardPanelPlot
    from evidently.ui.workspace import Project, Workspace

# Beside the models in artifacts/, but not a DVC output: the monitor flow appends runs to it over time.
DEFAULT_WORKSPACE = Path(__file__).resolve().parent.parent / "artifacts" / "evidently"
MODELS: tuple[str, ...] = ("ranker", "retrieval")
TAB = "Monitoring"
DEMO_TAG = "demo"

DRIFT_KEYS: tuple[str, ...] = ("data_drift_share", "embedding_drift_share", "target_drift_share")
RANKING_QUALITY: tuple[str, ...] = ("ndcg@10", "precision@10", "recall@10")
CATALOGUE_QUALITY: tuple[str, ...] = ("coverage", "diversity", "popularity_bias")
QUALITY_KEYS: tuple[str, ...] = (*RANKING_QUALITY, *CATALOGUE_QUALITY, "novelty")
SKEW_KEY = "skew_rate"
FAILED_CHECKS = "failed_checks"
PREDICTION_PREFIX = "prediction_mean."
# The share of drifted columns that Evidently's own DataDriftPreset reports, when the run's frames were given.
EVIDENTLY_DRIFT = "evidently_drift_share"

_MEAN = "evidently:metric_v2:MeanValue"
_DRIFTED_COLUMNS = "evidently:metric_v2:DriftedColumnsCount"

_PROJECT_DESCRIPTION = (
    "Ember {model}: one snapshot per monitor run (drift, prediction means, recommendation quality, "
    "train/serve skew). Runs tagged 'demo' are made-up data from `ember dashboards --seed-demo`."
)


@dataclass(frozen=True)
class MonitorRunRecord:
    """One logged run, read back from the workspace. values: {series: value}, the plotted numbers."""

    snapshot_id: str
    timestamp: datetime
    name: str | None
    tags: list[str]
    metadata: dict[str, str]
    values: dict[str, float] = field(default_factory=dict)

    @property
    def is_demo(self) -> bool:
        return DEMO_TAG in self.tags


def open_workspace(workspace_dir: str | Path) -> Workspace:
    """Opens (creating the directory if needed) the local Evidently workspace at `workspace_dir`."""
    from evidently.ui.workspace import Workspace

    path = Path(workspace_dir)
    if path.exists() and not path.is_dir():
        raise UserError(f"{path}: the Evidently workspace must be a directory")
    path.mkdir(parents=True, exist_ok=True)
    return Workspace(str(path))


def dashboard_panels() -> list[DashboardPanelPlot]:
    """The panels of every model's dashboard, in display order (titles are unique: they are the panels' keys)."""
    from evidently.sdk.models import PanelMetric
    from evidently.sdk.panels import bar_plot_panel, counter_panel, line_plot_panel

    def series(column: str, legend: str | None = None) -> PanelMetric:
        return PanelMetric(legend=legend or column, metric=_MEAN, metric_labels={"column": column})

    evidently_drift = PanelMetric(
        legend="evidently drift",  # DataDriftPreset: the share of drifted columns
        metric=_DRIFTED_COLUMNS,
        metric_labels={"value_type": "share"},
    )
    return [
        counter_panel("Data drift share (last run)", [series("data_drift_share", "share")], size="half"),
        counter_panel("Failed checks (last run)", [series(FAILED_CHECKS, "failed")], size="half"),
        line_plot_panel(
            "Drift share",
            [*(series(k, k.removesuffix("_share").replace("_", " ")) for k in DRIFT_KEYS), evidently_drift],
            description="Share of drifted features, embedding dimensions and targets per run.",
        ),
        line_plot_panel(
            "Prediction mean per action",
            [series(PREDICTION_PREFIX + a, a) for a in ACTION_NAMES],
            description="Mean predicted probability of each action over the served items of the window.",
        ),
        line_plot_panel(
            "Ranking quality@10",
            [series(k) for k in RANKING_QUALITY],
            description="NDCG, precision and recall at 10 on served slates with outcomes.",
            size="half",
        ),
        line_plot_panel(
            "Catalogue quality",
            [series(k, k.replace("_", " ")) for k in CATALOGUE_QUALITY],
            description="Item coverage, intra-list diversity and popularity bias of the served slates.",
            size="half",
        ),
        line_plot_panel(
            "Novelty", [series("novelty")], description="Mean self-information of served items.", size="half"
        ),
        line_plot_panel(
            "Train/serve skew rate",
            [series(SKEW_KEY, "mismatch rate")],
            description="Share of served feature values that differ from the offline recompute.",
            size="half",
        ),
        bar_plot_panel("Failed checks per run", [series(FAILED_CHECKS, "failed checks")], size="full"),
    ]


PANEL_TITLES: tuple[str, ...] = (
    "Data drift share (last run)",
    "Failed checks (last run)",
    "Drift share",
    "Prediction mean per action",
    "Ranking quality@10",
    "Catalogue quality",
    "Novelty",
    "Train/serve skew rate",
    "Failed checks per run",
)


def ensure_project(
    workspace: Workspace,
    model: str,
    panels: Sequence[DashboardPanelPlot] | None = None,
    description: str | None = None,
) -> Project:
    """The project named `model`, created with its dashboard if missing; panels missing by title are added
    (`panels`: a dashboard other than the models' monitoring one)."""
    found = workspace.search_project(model)
    if found:
        project = found[0]
    else:
        from evidently.sdk.models import ProjectModel

        about = description or _PROJECT_DESCRIPTION.format(model=model)
        project = workspace.add_project(ProjectModel(name=model, description=about))
    have = {panel.title for panel in project.dashboard.model().panels}
    for panel in panels if panels is not None else dashboard_panels():
        if panel.title not in have:
            project.dashboard.add_panel(panel, tab=TAB)
    return project


SIMULATION = "simulation"
REWARD_PREFIX = "true_reward."
SIMULATION_POLICIES: tuple[str, ...] = ("loop", "frozen", "oracle", "popular", "random")
SIMULATION_EVENTS: tuple[str, ...] = ("alarm", "retrained", "promoted")


def simulation_panels() -> list[DashboardPanelPlot]:
    """The dashboard of `ember simulate` runs: true reward per day and policy, and the loop's alarms, retrains and
    promotions."""
    from evidently.sdk.models import PanelMetric
    from evidently.sdk.panels import bar_plot_panel, line_plot_panel

    def series(column: str, legend: str) -> PanelMetric:
        return PanelMetric(legend=legend, metric=_MEAN, metric_labels={"column": column})

    return [
        line_plot_panel(
            "True reward per request",
            [series(REWARD_PREFIX + p, p) for p in SIMULATION_POLICIES],
            description="Expected weighted engagement of each policy's slates under the truth, per simulated day.",
        ),
        bar_plot_panel("Alarms, retrains, promotions", [series(e, e) for e in SIMULATION_EVENTS], size="full"),
    ]


def add_simulation_days(workspace_dir: str | Path, rows: Sequence[Mapping[str, Any]], run: str) -> list[str]:
    """Records an `ember simulate` run's days (monitoring/simulate.py rows: day, date, policy, true_reward, alarm,
    retrained, promoted) in the workspace's "simulation" project: one snapshot per simulated day at its date, tagged
    with the run's name, plotting each policy's true reward and the day's events. Returns the snapshot ids."""
    import pandas as pd
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import MeanValue

    workspace = open_workspace(workspace_dir)
    about = "Ember simulate: true reward of each policy per simulated day, the loop's alarms and promotions."
    project = ensure_project(workspace, SIMULATION, simulation_panels(), about)
    ids = []
    for day, group in pd.DataFrame(list(rows)).groupby("day", sort=True):
        first = group.iloc[0]
        values = {REWARD_PREFIX + str(r.policy): float(r.true_reward) for r in group.itertuples()}
        values |= {e: float(bool(first[e])) for e in SIMULATION_EVENTS if e in group.columns}
        when = datetime.fromisoformat(str(first["date"]))
        one_row = Dataset.from_pandas(
            pd.DataFrame([values]), data_definition=DataDefinition(numerical_columns=list(values))
        )
        snapshot = Report([MeanValue(column=c) for c in values]).run(
            one_row, None, timestamp=when, metadata={"run": run, "day": str(day)}, tags=[SIMULATION, run],
            name=f"{run} day {day}",
        )  # fmt: skip
        ids.append(str(workspace.add_run(project.id, snapshot).id))
    return ids


def init_workspace(workspace_dir: str | Path, models: Iterable[str] = MODELS) -> Workspace:
    """Opens the workspace and makes sure every model has its project and dashboard (idempotent)."""
    workspace = open_workspace(workspace_dir)
    for model in models:
        ensure_project(workspace, model)
    return workspace


def _finite(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def summary_values(summary: Mapping[str, Any]) -> dict[str, float]:
    """The numbers a summary plots, {series: value}; None, NaN and non-numbers are left out.

    `failed_checks` (the count of tests whose status is "fail") is always there, so that every run has a point.
    """
    values: dict[str, float] = {}
    for key in (*DRIFT_KEYS, SKEW_KEY):
        number = _finite(summary.get(key))
        if number is not None:
            values[key] = number
    for key, value in (summary.get("quality") or {}).items():
        number = _finite(value)
        if number is not None:
            values[str(key)] = number
    for action, value in (summary.get("prediction_mean") or {}).items():
        number = _finite(value)
        if number is not None:
            values[PREDICTION_PREFIX + str(action)] = number
    tests = summary.get("tests") or {}
    values[FAILED_CHECKS] = float(sum(str(status).lower() == "fail" for status in tests.values()))
    return values


def _as_utc_naive(moment: datetime) -> datetime:
    """Evidently sorts snapshot timestamps: keep them all naive UTC, so aware and naive ones never meet."""
    return moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo is not None else moment


def _run_timestamp(summary: Mapping[str, Any], timestamp: datetime | None) -> datetime:
    if timestamp is not None:
        return _as_utc_naive(timestamp)
    end = summary.get("window_end")
    if end:
        import pandas as pd

        try:  # pandas also reads the nanosecond ISO strings that a pandas Timestamp writes
            return _as_utc_naive(pd.Timestamp(str(end)).to_pydatetime(warn=False))
        except ValueError:
            raise UserError(f"summary.window_end: not an ISO timestamp: {end!r}") from None
    return datetime.now(UTC).replace(tzinfo=None)


def _metadata(summary: Mapping[str, Any], demo: bool) -> dict[str, str]:
    meta = {"model": str(summary["model"]), "status": str(summary.get("status", "unknown"))}
    for key in ("window_start", "window_end"):
        if summary.get(key):
            meta[key] = str(summary[key])
    meta["source"] = "demo" if demo else "monitor"
    return meta


def build_snapshot(
    summary: Mapping[str, Any],
    reference: pd.DataFrame | None = None,
    current: pd.DataFrame | None = None,
    timestamp: datetime | None = None,
    *,
    demo: bool = False,
) -> Any:
    """The Evidently snapshot of one run (see the module docstring); not yet stored."""
    import pandas as pd
    from evidently import DataDefinition, Dataset, Report
    from evidently.core.report import Snapshot
    from evidently.metrics import MeanValue

    model = summary.get("model")
    if not isinstance(model, str) or not model.strip():
        raise UserError(f"summary.model: a model name is required (e.g. 'ranker'), got {model!r}")
    when = _run_timestamp(summary, timestamp)
    values = summary_values(summary)
    status = str(summary.get("status", "unknown"))
    tags = [model, f"status:{status}"] + ([DEMO_TAG] if demo else [])
    name = f"{'demo: ' if demo else ''}{model} {when:%Y-%m-%d %H:%M}"
    meta: dict[str, Any] = dict(_metadata(summary, demo))
    one_row = Dataset.from_pandas(
        pd.DataFrame([values]), data_definition=DataDefinition(numerical_columns=list(values))
    )
    snapshot = Report([MeanValue(column=c) for c in values]).run(
        one_row, None, timestamp=when, metadata=meta, tags=tags, name=name
    )
    if reference is None or current is None or len(reference) == 0 or len(current) == 0:
        return snapshot
    from evidently.presets import DataDriftPreset

    columns = [c for c in reference.columns if c in current.columns]
    if not columns:
        return snapshot
    drift = Report([DataDriftPreset(columns=columns)]).run(current[columns], reference[columns], timestamp=when)
    # One run, one snapshot: the drift report's results join the summary's (metric ids are fingerprints of each
    # metric's parameters, so the two never collide).
    merged = snapshot.to_snapshot_model()
    extra = drift.to_snapshot_model()
    merged.metric_results.update(extra.metric_results)
    merged.top_level_metrics.extend(extra.top_level_metrics)
    merged.widgets.extend(extra.widgets)
    merged.tests_widgets.extend(extra.tests_widgets)
    return Snapshot.load_model(merged)


def add_monitor_run(
    workspace_dir: str | Path,
    summary: Mapping[str, Any],
    reference: pd.DataFrame | None = None,
    current: pd.DataFrame | None = None,
    timestamp: datetime | None = None,
    *,
    demo: bool = False,
) -> str:
    """Records one monitor run in the model's project (created, with its dashboard, if missing).

    Args:
        workspace_dir: the Evidently workspace directory (created if missing).
        summary: the monitor's summary dict (module docstring); "model" names the project.
        reference, current: the run's frames; when both are given, Evidently's DataDriftPreset joins the snapshot.
        timestamp: the run's time on the dashboards (default: the summary's window_end, else now).
        demo: made-up data: the snapshot is tagged and named as a demo run.

    Returns:
        The snapshot id of the run.
    """
    snapshot = build_snapshot(summary, reference, current, timestamp, demo=demo)
    workspace = open_workspace(workspace_dir)
    project = ensure_project(workspace, str(summary["model"]))
    return str(workspace.add_run(project.id, snapshot).id)


def list_monitor_runs(workspace_dir: str | Path, model: str) -> list[MonitorRunRecord]:
    """The runs logged for `model`, oldest first, with the values they plot. No project: no runs."""
    path = Path(workspace_dir)
    if not path.is_dir():
        return []
    workspace = open_workspace(path)
    found = workspace.search_project(model)
    if not found:
        return []
    records = []
    for snapshot_id in workspace.list_runs(found[0].id):
        run = workspace.get_run(found[0].id, snapshot_id)
        if run is None:
            continue
        values: dict[str, float] = {}
        for result in run.metric_results.values():
            params = result.metric_value_location.metric.params
            if params.get("type") == _MEAN and "column" in params:
                values[str(params["column"])] = float(result.value)
            elif params.get("type") == _DRIFTED_COLUMNS:
                values[EVIDENTLY_DRIFT] = float(result.share.value)
        records.append(
            MonitorRunRecord(
                snapshot_id=str(snapshot_id),
                timestamp=run.timestamp,
                name=run.name,
                tags=list(run.tags),
                metadata={k: str(v) for k, v in run.metadata.items()},
                values=values,
            )
        )
    return sorted(records, key=lambda r: (r.timestamp, r.snapshot_id))


def demo_summary(model: str, day: int, days: int, rng: random.Random, end: datetime) -> dict[str, Any]:
    """A made-up summary for day `day` of `days`: stable for most days, a drift episode over the last quarter."""
    drifting = day >= days - max(1, days // 4)
    window_end = end - timedelta(days=days - 1 - day)

    def jitter(scale: float) -> float:
        return rng.uniform(-scale, scale)

    drift_share = (0.45 if drifting else 0.05) + jitter(0.04)
    quality = {
        "ndcg@10": (0.27 if drifting else 0.34) + jitter(0.01),
        "precision@10": (0.11 if drifting else 0.14) + jitter(0.005),
        "recall@10": (0.21 if drifting else 0.26) + jitter(0.01),
        "novelty": (8.1 if drifting else 8.9) + jitter(0.1),
        "diversity": 0.62 + jitter(0.02),
        "popularity_bias": (0.41 if drifting else 0.33) + jitter(0.01),
        "coverage": (0.18 if drifting else 0.23) + jitter(0.01),
    }
    base = {a: 0.02 + 0.03 * (i % 5) for i, a in enumerate(ACTION_NAMES)}
    predictions = {a: max(0.0, p * (1.3 if drifting else 1.0) + jitter(0.003)) for a, p in base.items()}
    tests = {
        "data_drift": "fail" if drift_share > 0.3 else "pass",
        "ndcg@10": "fail" if quality["ndcg@10"] < 0.3 else "pass",
        "skew": "pass",
    }
    return {
        "model": model,
        "window_start": (window_end - timedelta(days=1)).isoformat(),
        "window_end": window_end.isoformat(),
        "status": "fail" if "fail" in tests.values() else "pass",
        "data_drift_share": drift_share,
        "prediction_mean": predictions,
        "quality": quality,
        "skew_rate": 0.004 + abs(jitter(0.003)),
        "embedding_drift_share": (0.30 if drifting else 0.03) + jitter(0.02),
        "target_drift_share": None if model == "retrieval" else (0.2 if drifting else 0.02) + jitter(0.02),
        "tests": tests,
    }


def seed_demo(
    workspace_dir: str | Path,
    days: int = 14,
    models: Sequence[str] = MODELS,
    end: datetime | None = None,
    seed: int = 0,
) -> int:
    """Fills the workspace with `days` daily demo runs per model (tagged 'demo'); days already seeded are skipped.

    Returns:
        The number of runs added.
    """
    if days < 1:
        raise UserError(f"--days: must be >= 1, got {days}")
    last = _as_utc_naive(end or datetime.now(UTC)).replace(hour=0, minute=0, second=0, microsecond=0)
    init_workspace(workspace_dir, models)
    added = 0
    for model in models:
        seeded = {r.timestamp for r in list_monitor_runs(workspace_dir, model) if r.is_demo}
        rng = random.Random(f"{seed}:{model}")
        for day in range(days):
            summary = demo_summary(model, day, days, rng, last)
            when = _run_timestamp(summary, None)
            if when in seeded:
                continue
            add_monitor_run(workspace_dir, summary, timestamp=when, demo=True)
            added += 1
    return added
