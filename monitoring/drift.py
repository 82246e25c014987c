"""Data drift and prediction drift between a reference frame (a ranker training set) and a current window (the
exposure log, flattened by monitoring/exposure_frame.py), computed with Evidently 0.7.

Both checks return a DriftResult whose status is one of:

- "pass": enough data, and the drift stayed under the configured thresholds;
- "fail": enough data, and too many features drifted (data drift) or any action's prediction drifted;
- "insufficient_data": no verdict. An empty or too small window, a missing column or a column with too few non-null
  values (an all-NaN feature) is reported here with a reason naming it: bad input never raises and never fails.

The numbers come from the Evidently snapshot's dict: `DriftedColumnsCount` (the share of drifted columns) and one
`ValueDrift` per column (score, method, threshold), and each column's drift verdict is Evidently's own ValueDrift
test status.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from monitoring.config import MonitorConfig

Status = Literal["pass", "fail", "insufficient_data"]


@dataclass
class DriftResult:
    """The verdict of one drift check. per_feature: {column: {drifted, score, method, threshold}}."""

    status: Status
    share_drifted: float | None
    per_feature: dict[str, dict[str, Any]] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)
    threshold: float | None = None  # the share of drifted features (data) or of drifted actions (prediction) failing
    n_reference: int = 0
    n_current: int = 0
    kind: str = "data_drift"

    def drifted(self) -> list[str]:
        """The drifted columns, most drifted first (an ordering valid within one method's scores)."""
        cols = [c for c, v in self.per_feature.items() if v["drifted"]]
        return sorted(cols, key=lambda c: _severity(self.per_feature[c]), reverse=True)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _is_p_value(method: str) -> bool:
    return "p_value" in method.lower()


def _severity(entry: dict[str, Any]) -> float:
    """Larger = more drifted: a p-value is small when drifted, a distance large."""
    score = entry.get("score")
    if score is None or not np.isfinite(score):
        return float("-inf")
    return -float(np.log10(max(score, 1e-300))) if _is_p_value(str(entry.get("method", ""))) else float(score)


def _check_inputs(
    reference: pd.DataFrame | None, current: pd.DataFrame | None, columns: list[str], min_rows: int
) -> tuple[list[str], list[str]]:
    """(reasons for no verdict, the usable columns). Never raises."""
    reasons: list[str] = []
    frames = {"reference": reference, "current": current}
    for name, frame in frames.items():
        if frame is None or len(frame) == 0:
            reasons.append(f"{name} window is empty")
        elif len(frame) < min_rows:
            reasons.append(f"{name} window has {len(frame)} rows, fewer than min_rows={min_rows}")
    if not columns:
        reasons.append("no columns to check")
    usable: list[str] = []
    for col in columns:
        ok = True
        for name, frame in frames.items():
            if frame is None or len(frame) == 0:
                ok = False
                continue
            if col not in frame.columns:
                reasons.append(f"column {col!r} is missing from the {name} window")
                ok = False
                continue
            non_null = int(frame[col].notna().sum())
            if non_null == 0:
                reasons.append(f"column {col!r} is all NaN in the {name} window")
                ok = False
            elif non_null < min_rows:
                reasons.append(
                    f"column {col!r} has {non_null} non-null values in the {name} window, fewer than "
                    f"min_rows={min_rows}"
                )
                ok = False
        if ok:
            usable.append(col)
    return reasons, usable


def _datasets(
    reference: pd.DataFrame, current: pd.DataFrame, columns: list[str], cfg: MonitorConfig
) -> tuple[Any, Any]:
    """Evidently Datasets with an explicit DataDefinition: numeric columns numerical, everything else categorical.
    A frame longer than cfg.max_rows is down-sampled (seeded) first."""
    from evidently import DataDefinition, Dataset

    def prep(frame: pd.DataFrame) -> pd.DataFrame:
        if len(frame) > cfg.max_rows:
            frame = frame.sample(n=cfg.max_rows, random_state=cfg.seed)
        out = frame[columns].copy()
        for c in columns:
            if pd.api.types.is_bool_dtype(out[c]):
                out[c] = out[c].astype("float64")
        return out.reset_index(drop=True)

    ref, cur = prep(reference), prep(current)
    numerical = [c for c in columns if pd.api.types.is_numeric_dtype(ref[c]) and pd.api.types.is_numeric_dtype(cur[c])]
    categorical = [c for c in columns if c not in numerical]
    for c in categorical:  # one type on both sides, or Evidently compares "1" with 1
        ref[c] = ref[c].astype("string")
        cur[c] = cur[c].astype("string")
    definition = DataDefinition(numerical_columns=numerical, categorical_columns=categorical)
    return (
        Dataset.from_pandas(ref, data_definition=definition),
        Dataset.from_pandas(cur, data_definition=definition),
    )


def _extract(snapshot: Any) -> tuple[float | None, bool | None, dict[str, dict[str, Any]]]:
    """(share of drifted columns, whether Evidently's share test failed, per column entries) from snapshot.dict()."""
    data = snapshot.dict()
    columns_by_metric: dict[str, str] = {}
    per_column: dict[str, dict[str, Any]] = {}
    share: float | None = None
    share_metric: str | None = None
    for metric in data.get("metrics", []):
        config = metric.get("config", {})
        kind = str(config.get("type", ""))
        if kind.endswith(":DriftedColumnsCount"):
            share = float(metric["value"]["share"])
            share_metric = metric["id"]
        elif kind.endswith(":ValueDrift"):
            column = config["column"]
            method = str(config.get("method") or "")
            threshold = config.get("threshold")
            score = float(metric["value"]) if metric.get("value") is not None else None
            columns_by_metric[metric["id"]] = column
            per_column[column] = {
                "drifted": _drifted_by_rule(method, score, threshold),
                "score": score,
                "method": method,
                "threshold": threshold,
            }
    share_failed: bool | None = None
    for test in data.get("tests", []):
        metric_id = test.get("metric_config", {}).get("metric_id")
        raw = test.get("status", "")
        status = str(getattr(raw, "value", raw)).upper()  # a TestStatus enum in 0.7.23: str() gives "TESTSTATUS.FAIL"
        if metric_id in columns_by_metric and status in ("SUCCESS", "FAIL"):
            per_column[columns_by_metric[metric_id]]["drifted"] = status == "FAIL"  # Evidently's own verdict
        elif metric_id is not None and metric_id == share_metric and status in ("SUCCESS", "FAIL"):
            share_failed = status == "FAIL"
    return share, share_failed, per_column


def _drifted_by_rule(method: str, score: float | None, threshold: float | None) -> bool:
    """Evidently's rule, used only where a ValueDrift test result is absent."""
    if score is None or threshold is None:
        return False
    return score < threshold if _is_p_value(method) else score >= threshold


def _save_html(snapshot: Any, path: Path) -> None:
    from core.io import atomic_write_text

    atomic_write_text(Path(path), snapshot.get_html_str(as_iframe=False))


def _drift_report(reference: pd.DataFrame, current: pd.DataFrame, usable: list[str], cfg: MonitorConfig) -> Any:
    """Evidently's DataDriftPreset (with its tests) over the usable columns, by cfg.data_drift's method and
    thresholds (a per-feature method where one is set)."""
    from evidently import Report
    from evidently.presets import DataDriftPreset

    dd = cfg.data_drift
    preset = DataDriftPreset(
        columns=usable,
        drift_share=dd.drift_share,
        method=dd.method,
        threshold=dd.threshold,
        per_column_method={c: m for c, m in dd.per_feature_method.items() if c in usable} or None,
    )
    ref_ds, cur_ds = _datasets(reference, current, usable, cfg)
    return Report([preset], include_tests=True).run(current_data=cur_ds, reference_data=ref_ds)


def _judged_share(
    per_feature: dict[str, dict[str, Any]], judged: set[str], reasons: list[str]
) -> tuple[float, None, dict[str, dict[str, Any]]]:
    """(the drifted share of the judged features, no test verdict, those features); a note in `reasons` says how
    many of the others drifted (reported, not judged)."""
    counted = {c: v for c, v in per_feature.items() if c in judged}
    others = [c for c in per_feature if c not in counted]
    if others:
        moved = [c for c in others if per_feature[c]["drifted"]]
        reasons.append(f"reported, not judged: {len(moved)} of {len(others)} other features drifted")
    return sum(v["drifted"] for v in counted.values()) / max(len(counted), 1), None, counted


def data_drift(
    reference: pd.DataFrame | None,
    current: pd.DataFrame | None,
    features: list[str],
    cfg: MonitorConfig,
    html: Path | None = None,
    judged: list[str] | None = None,
) -> DriftResult:
    """Evidently's DataDriftPreset on `features`; fails when the share of drifted features reaches
    cfg.data_drift.drift_share. Bad input is status "insufficient_data" with the reasons, never an exception.

    `judged`: the features the verdict counts (None = all); the others are measured and reported (per_feature, the
    HTML report, a reason line) but neither drifted nor missing ones decide the status."""
    features = list(dict.fromkeys(features))
    dd = cfg.data_drift
    reasons, usable = _check_inputs(reference, current, features, cfg.min_rows)
    if judged is not None:
        counted = set(judged)
        reasons = [r for r in reasons if not _names_other_column(r, features, counted)]
        if not counted & set(usable):
            reasons.append("no judged column to check")
    result = DriftResult(
        status="insufficient_data",
        share_drifted=None,
        reasons=reasons,
        threshold=dd.drift_share,
        n_reference=0 if reference is None else len(reference),
        n_current=0 if current is None else len(current),
    )
    if not usable or any("window" in r and "column" not in r for r in reasons):
        return result  # nothing Evidently could compare
    assert reference is not None and current is not None
    try:
        snapshot = _drift_report(reference, current, usable, cfg)
        share, share_failed, per_feature = _extract(snapshot)
    except Exception as err:  # an Evidently failure on odd data is no verdict, not a crash of the monitor
        result.reasons.append(f"Evidently could not compute drift: {type(err).__name__}: {err}".splitlines()[0])
        return result
    result.per_feature = per_feature
    blocking = bool(reasons)  # the reasons so far name input that stops a verdict; the notes below do not
    if judged is not None:  # the share is recounted over the judged features; Evidently's verdict is not theirs
        share, share_failed, counted_features = _judged_share(per_feature, set(judged), result.reasons)
    else:
        counted_features = per_feature
        if share is None:
            share = sum(v["drifted"] for v in per_feature.values()) / max(len(per_feature), 1)
    result.share_drifted = share
    if html is not None:
        _save_html(snapshot, html)
    if blocking:
        return result  # partial numbers for the usable columns, but no verdict
    failed = share_failed if share_failed is not None else share >= dd.drift_share
    result.status = "fail" if failed else "pass"
    if failed:
        top = ", ".join([c for c in result.drifted() if c in counted_features][:10])
        result.reasons.append(
            f"{share:.0%} of {len(counted_features)} features drifted (fails at {dd.drift_share:.0%}): {top}"
        )
    return result


def _names_other_column(reason: str, columns: list[str], counted: set[str]) -> bool:
    """Whether a reason of _check_inputs is about one column that the verdict does not count."""
    return any(f"column {c!r} " in reason for c in columns if c not in counted)


def prediction_column(action: str) -> str:
    return action if action.startswith("pred_") else f"pred_{action}"


def prediction_drift(
    reference: pd.DataFrame | None,
    current: pd.DataFrame | None,
    actions: list[str],
    cfg: MonitorConfig,
    html: Path | None = None,
) -> DriftResult:
    """One Evidently ValueDrift per action on its `pred_<action>` column (cfg.prediction_drift's method and per-action
    threshold); fails when any action's predictions drifted. per_feature is keyed by action."""
    from evidently import Report
    from evidently.metrics import ValueDrift

    pd_cfg = cfg.prediction_drift
    actions = [a.removeprefix("pred_") for a in dict.fromkeys(actions)]
    columns = [prediction_column(a) for a in actions]
    reasons, usable = _check_inputs(reference, current, columns, cfg.min_rows)
    result = DriftResult(
        status="insufficient_data",
        share_drifted=None,
        reasons=reasons,
        threshold=None,
        n_reference=0 if reference is None else len(reference),
        n_current=0 if current is None else len(current),
        kind="prediction_drift",
    )
    if not usable or any("window" in r and "column" not in r for r in reasons):
        return result
    assert reference is not None and current is not None
    metrics = [
        ValueDrift(column=c, method=pd_cfg.method, threshold=pd_cfg.threshold_for(c.removeprefix("pred_")))
        for c in usable
    ]
    try:
        ref_ds, cur_ds = _datasets(reference, current, usable, cfg)
        snapshot = Report(metrics, include_tests=True).run(current_data=cur_ds, reference_data=ref_ds)
        _, _, per_column = _extract(snapshot)
    except Exception as err:
        result.reasons.append(f"Evidently could not compute drift: {type(err).__name__}: {err}".splitlines()[0])
        return result
    result.per_feature = {c.removeprefix("pred_"): v for c, v in per_column.items()}
    n_drifted = sum(v["drifted"] for v in result.per_feature.values())
    result.share_drifted = n_drifted / max(len(result.per_feature), 1)
    if html is not None:
        _save_html(snapshot, html)
    if reasons:
        return result
    result.status = "fail" if n_drifted else "pass"
    if n_drifted:
        result.reasons.append("predictions drifted for: " + ", ".join(result.drifted()))
    return result
