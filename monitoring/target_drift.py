"""Target drift: each action's outcome rate in the current window (outcomes of the served items) against the
reference (the training window's labels in the ranker training set), with Evidently 0.7's ValueDrift on the 0/1 labels
as categories. Same verdicts and bad-input rules as monitoring/drift.py: a DriftResult of kind "target_drift", with
per action {drifted, score, method, threshold, reference_rate, current_rate}.
"""

from __future__ import annotations

import pandas as pd

from monitoring.config import MonitorConfig
from monitoring.drift import DriftResult, _check_inputs, _datasets, _extract


def target_drift(
    reference: pd.DataFrame | None, current: pd.DataFrame | None, actions: list[str], cfg: MonitorConfig
) -> tuple[DriftResult, object | None]:
    """(the verdict, Evidently's snapshot or None); fails when at least cfg.target_drift.drift_share of the actions
    drifted. Bad input is "insufficient_data" with reasons, never an exception."""
    from evidently import Report
    from evidently.metrics import ValueDrift

    td = cfg.target_drift
    actions = list(dict.fromkeys(actions))
    reasons, usable = _check_inputs(reference, current, actions, cfg.min_rows)
    result = DriftResult(
        status="insufficient_data",
        share_drifted=None,
        reasons=reasons,
        threshold=td.drift_share,
        n_reference=0 if reference is None else len(reference),
        n_current=0 if current is None else len(current),
        kind="target_drift",
    )
    if not usable or any("window" in r and "column" not in r for r in reasons):
        return result, None
    assert reference is not None and current is not None

    def labels(frame: pd.DataFrame) -> pd.DataFrame:
        # Text categories: a 0/1 column is categorical, whatever its dtype on either side.
        return pd.DataFrame({a: (frame[a].astype("float64") > 0).map({True: "1", False: "0"}) for a in usable})

    ref, cur = labels(reference.dropna(subset=usable)), labels(current.dropna(subset=usable))
    metrics = [ValueDrift(column=a, method=td.method, threshold=td.threshold_for(a)) for a in usable]
    try:
        ref_ds, cur_ds = _datasets(ref, cur, usable, cfg)
        snapshot = Report(metrics, include_tests=True).run(current_data=cur_ds, reference_data=ref_ds)
        _, _, per_action = _extract(snapshot)
    except Exception as err:  # an Evidently failure on odd data is no verdict, not a crash of the monitor
        result.reasons.append(f"Evidently could not compute target drift: {type(err).__name__}: {err}".splitlines()[0])
        return result, None
    for a, entry in per_action.items():
        entry["reference_rate"] = float((ref[a] == "1").mean())
        entry["current_rate"] = float((cur[a] == "1").mean())
    result.per_feature = per_action
    n_drifted = sum(v["drifted"] for v in per_action.values())
    result.share_drifted = n_drifted / max(len(per_action), 1)
    if reasons:
        return result, snapshot
    failed = result.share_drifted >= td.drift_share
    result.status = "fail" if failed else "pass"
    if failed:
        moved = ", ".join(
            f"{a} {per_action[a]['reference_rate']:.4f} -> {per_action[a]['current_rate']:.4f}"
            for a in result.drifted()
        )
        result.reasons.append(f"{result.share_drifted:.0%} of {len(per_action)} outcome rates drifted: {moved}")
    return result, snapshot
