"""Target drift: per-action outcome rates, training labels vs outcomes of the served items."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from monitoring.config import MonitorConfig, parse_config
from monitoring.target_drift import target_drift

ACTIONS = ["click", "like", "dwell", "report"]


def labels(seed: int, n: int, rates: dict[str, float]) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    base = {"click": 0.2, "like": 0.06, "dwell": 0.15, "report": 0.001} | rates
    return pd.DataFrame({a: (rng.random(n) < p).astype("int8") for a, p in base.items()})


@pytest.fixture(scope="module")
def cfg() -> MonitorConfig:
    return parse_config({})  # the defaults: PSI 0.005 per action, fails at 20% of the actions


def test_same_rates_pass_with_rates_reported(cfg: MonitorConfig) -> None:
    res, snapshot = target_drift(labels(0, 20_000, {}), labels(1, 5_000, {}), ACTIONS, cfg)
    assert res.status == "pass" and res.share_drifted == 0.0 and snapshot is not None
    assert res.kind == "target_drift" and set(res.per_feature) == set(ACTIONS)
    entry = res.per_feature["click"]
    assert entry["method"] == "psi" and entry["reference_rate"] == pytest.approx(0.2, abs=0.01)
    assert entry["current_rate"] == pytest.approx(0.2, abs=0.02)


def test_moved_rates_fail_naming_them(cfg: MonitorConfig) -> None:
    cur = labels(1, 5_000, {"click": 0.3, "like": 0.12})  # click +50%, like doubled
    res, _ = target_drift(labels(0, 20_000, {}), cur, ACTIONS, cfg)
    assert res.status == "fail" and res.share_drifted == pytest.approx(0.5)
    assert set(res.drifted()) == {"click", "like"}
    assert "click 0.19" in res.reasons[0] and "-> 0.30" in res.reasons[0]


def test_one_drifted_action_of_many_is_below_the_share() -> None:
    cfg = parse_config({"target_drift": {"drift_share": 0.5}})
    res, _ = target_drift(labels(0, 20_000, {}), labels(1, 5_000, {"click": 0.3}), ACTIONS, cfg)
    assert res.status == "pass" and res.drifted() == ["click"]  # measured and named, but no alarm


@pytest.mark.parametrize(
    "current, reason",
    [
        (None, "current window is empty"),
        (labels(1, 0, {}), "current window is empty"),
        (labels(1, 5_000, {}).drop(columns=["like"]), "'like' is missing from the current"),
        (labels(1, 5_000, {}).assign(dwell=np.nan), "'dwell' is all NaN"),
    ],
)
def test_bad_input_is_insufficient(cfg: MonitorConfig, current: pd.DataFrame | None, reason: str) -> None:
    res, _ = target_drift(labels(0, 20_000, {}), current, ACTIONS, cfg)
    assert res.status == "insufficient_data"
    assert any(reason in r for r in res.reasons), res.reasons
