"""Data and prediction drift verdicts (Evidently 0.7) on small seeded synthetic frames."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.errors import UserError
from monitoring.config import MonitorConfig, load_config, parse_config
from monitoring.drift import data_drift, prediction_drift

FEATURES = [f"user_f{i}" for i in range(10)]


def frame(seed: int, n: int, shift: dict[str, float] | None = None) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    out = pd.DataFrame(rng.normal(size=(n, len(FEATURES))), columns=FEATURES)
    for col, sd in (shift or {}).items():
        out[col] += sd
    return out


@pytest.fixture(scope="module")
def cfg() -> MonitorConfig:
    return load_config()


def test_same_distribution_passes(cfg: MonitorConfig) -> None:
    res = data_drift(frame(0, 1500), frame(1, 1200), FEATURES, cfg)
    assert res.status == "pass", res.reasons
    assert res.share_drifted is not None and res.share_drifted < cfg.data_drift.drift_share
    assert set(res.per_feature) == set(FEATURES)
    entry = res.per_feature[FEATURES[0]]
    assert set(entry) >= {"drifted", "score", "method"} and isinstance(entry["score"], float)


def test_shifted_half_fails_naming_them(cfg: MonitorConfig, tmp_path: Path) -> None:
    shifted = FEATURES[:5]
    html = tmp_path / "report" / "drift.html"
    res = data_drift(frame(0, 1500), frame(1, 1200, {c: 3.0 for c in shifted}), FEATURES, cfg, html=html)
    assert res.status == "fail"
    assert res.share_drifted == pytest.approx(0.5)
    assert set(res.drifted()) == set(shifted)
    assert all(c in res.reasons[0] for c in shifted)
    assert html.read_text().lstrip().lower().startswith("<")  # Evidently's HTML, written atomically
    assert [p.name for p in html.parent.iterdir()] == ["drift.html"]


def test_small_windows_use_evidently_default_ks(cfg: MonitorConfig) -> None:
    res = data_drift(frame(0, 400), frame(1, 300, {FEATURES[0]: 3.0}), FEATURES, cfg)
    assert res.per_feature[FEATURES[0]]["method"].startswith("K-S")
    assert res.per_feature[FEATURES[0]]["drifted"]


@pytest.mark.parametrize("current", [None, frame(1, 0), frame(1, 50)])
def test_empty_or_small_current_is_insufficient(cfg: MonitorConfig, current: pd.DataFrame | None) -> None:
    res = data_drift(frame(0, 1500), current, FEATURES, cfg)
    assert res.status == "insufficient_data" and res.share_drifted is None
    assert "current window" in res.reasons[0]


def test_missing_column_is_insufficient_naming_it(cfg: MonitorConfig) -> None:
    cur = frame(1, 1200, {c: 3.0 for c in FEATURES[:5]}).drop(columns=[FEATURES[7]])
    res = data_drift(frame(0, 1500), cur, FEATURES, cfg)
    assert res.status == "insufficient_data"  # never a "fail" without a complete check
    assert any(repr(FEATURES[7]) in r and "missing from the current" in r for r in res.reasons)


def test_all_nan_feature_is_insufficient_naming_it(cfg: MonitorConfig) -> None:
    cur = frame(1, 1200)
    cur[FEATURES[2]] = np.nan
    res = data_drift(frame(0, 1500), cur, FEATURES, cfg)
    assert res.status == "insufficient_data"
    assert any(repr(FEATURES[2]) in r and "all NaN" in r for r in res.reasons)
    assert FEATURES[2] not in res.per_feature  # the other columns were still measured


def test_no_features_is_insufficient(cfg: MonitorConfig) -> None:
    assert data_drift(frame(0, 1500), frame(1, 1200), [], cfg).status == "insufficient_data"


def test_prediction_drift_per_action(cfg: MonitorConfig) -> None:
    rng = np.random.default_rng(3)
    ref = pd.DataFrame({"pred_like": rng.beta(2, 8, 1500), "pred_click": rng.beta(2, 8, 1500)})
    same = pd.DataFrame({"pred_like": rng.beta(2, 8, 1200), "pred_click": rng.beta(2, 8, 1200)})
    moved = same.assign(pred_click=rng.beta(8, 2, 1200))
    assert prediction_drift(ref, same, ["like", "click"], cfg).status == "pass"
    res = prediction_drift(ref, moved, ["like", "pred_click"], cfg)
    assert res.status == "fail" and res.drifted() == ["click"]
    assert res.per_feature["click"]["threshold"] == cfg.prediction_drift.threshold_for("click")
    missing = prediction_drift(ref, same.drop(columns=["pred_like"]), ["like", "click"], cfg)
    assert missing.status == "insufficient_data" and "'pred_like'" in missing.reasons[0]


def test_per_action_threshold_is_used() -> None:
    cfg = parse_config({"prediction_drift": {"per_action_threshold": {"like": 5.0}}})
    assert cfg.prediction_drift.threshold_for("like") == 5.0
    assert cfg.prediction_drift.threshold_for("click") == cfg.prediction_drift.threshold


def test_unknown_key_is_a_user_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="thresholds: data_drift.drift_shar: unknown key$"):
        parse_config({"data_drift": {"drift_shar": 0.3}})
    with pytest.raises(UserError, match="thresholds: min_row: unknown key$"):
        parse_config({"min_row": 10})
    bad = tmp_path / "t.yaml"
    bad.write_text("min_rows: -1\n")
    with pytest.raises(UserError, match="min_rows"):
        load_config(bad)


def test_large_windows_are_down_sampled() -> None:
    cfg = parse_config({"min_rows": 100, "max_rows": 300})
    res = data_drift(frame(0, 1500), frame(1, 1200), FEATURES, cfg)
    # 300 sampled rows a side: Evidently's small-sample default (K-S) is chosen, so the sample reached it.
    assert res.status == "pass" and res.per_feature[FEATURES[0]]["method"].startswith("K-S")
    assert res.n_reference == 1500 and res.n_current == 1200


def test_a_p_value_method_named_in_the_config_keeps_evidentlys_own_verdict() -> None:
    """Evidently's test status (an enum) decides a column's verdict: same distributions do not drift under K-S."""
    cfg = load_config(None)
    cfg = cfg.model_copy(update={"data_drift": cfg.data_drift.model_copy(update={"per_feature_method": {"x": "ks"}})})
    rng = np.random.default_rng(0)
    ref = pd.DataFrame({"x": rng.normal(size=600)})
    same = pd.DataFrame({"x": rng.normal(size=600)})
    shifted = pd.DataFrame({"x": rng.normal(1.0, 1.0, size=600)})
    assert not data_drift(ref, same, ["x"], cfg).per_feature["x"]["drifted"]
    assert data_drift(ref, shifted, ["x"], cfg).per_feature["x"]["drifted"]
