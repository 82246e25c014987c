"""run_monitor and `ember monitor run` on a small self-made world: reference training rows, real-format exposure logs
(a baseline served window and the current one), outcomes, offline feature tables (and, for simulated outcomes, a nano
synthetic dataset)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pytest

from core.errors import UserError
from monitoring.config import MonitorConfig, parse_config
from monitoring.monitor import NO_BASELINE, TEST_NAMES, MonitorInputs, run_monitor
from monitoring.replay import request_sample

N_USERS, N_POSTS, SLATE = 300, 3000, 5
N_REFERENCE, N_SERVED = 1000, 1000  # requests
T0 = pd.Timestamp("2026-01-02", tz="UTC")
SERVED_AT = T0 + pd.Timedelta(days=1, hours=6)
BASELINE_AT = T0 + pd.Timedelta(days=1, hours=1)
SUMMARY_KEYS = {
    "model", "window_start", "window_end", "status", "data_drift_share", "prediction_mean", "quality", "skew_rate",
    "embedding_drift_share", "target_drift_share", "tests", "alarms",
}  # fmt: skip
QUALITY_KEYS = {"ndcg@10", "precision@10", "recall@10", "novelty", "diversity", "popularity_bias", "coverage"}
POLICY_TESTS = ("prediction_drift", "target_drift", "quality")

Policy = Literal["same", "worse"]


@dataclass
class World:
    root: Path
    reference: Path
    baseline: Path
    exposure: Path
    outcomes: Path
    features: Path
    stats: pd.DataFrame


def user_stats(rng: np.random.Generator) -> pd.DataFrame:
    """Two daily snapshots with the same values (a quiet world)."""
    day0 = pd.DataFrame(
        {
            "user_id": np.arange(1, N_USERS + 1),
            "event_timestamp": T0,
            "user_click_rate_7d": rng.beta(2, 8, N_USERS).astype(np.float32),
            "user_impressions_7d": rng.integers(0, 300, N_USERS).astype(np.int32),
            "user_account_age_days": rng.uniform(1, 1000, N_USERS).astype(np.float32),
            "user_country": rng.choice(["US", "BR", "IN"], N_USERS),
        }
    )
    return pd.concat([day0, day0.assign(event_timestamp=T0 + pd.Timedelta(days=1))], ignore_index=True)


def reference_requests() -> pd.DataFrame:
    """Who asked in the training window: a few users ask far more often than most (heavy-tailed activity), as
    under the logging policy; served windows are drawn from it with monitoring.replay.request_sample."""
    rng = np.random.default_rng(7)
    activity = rng.pareto(1.2, N_USERS) + 0.05
    users = rng.choice(np.arange(1, N_USERS + 1), N_REFERENCE, p=activity / activity.sum())
    return pd.DataFrame({"request_id": np.arange(N_REFERENCE), "user_id": users})


def slates(rng: np.random.Generator, users: np.ndarray, policy: Policy = "same", p_top: float = 0.5) -> pd.DataFrame:
    """One slate of SLATE random posts per request, with outcomes and the ranker's predictions. "same": clicks are
    likeliest on top (a policy that ranks well); "worse": fewer clicks, and likeliest at the bottom."""
    n = len(users)
    frame = pd.DataFrame(
        {
            "request_id": np.repeat(np.arange(n), SLATE),
            "user_id": np.repeat(users, SLATE),
            "post_id": rng.integers(1, N_POSTS + 1, n * SLATE),
            "position": np.tile(np.arange(SLATE), n),
        }
    )
    pos = frame["position"].to_numpy()
    p = p_top * 0.8**pos if policy == "same" else 0.6 * p_top * 0.8 ** (SLATE - 1 - pos)
    frame["click"] = (rng.random(len(frame)) < p).astype("int8")
    frame["like"] = (frame["click"].to_numpy() * (rng.random(len(frame)) < 0.3)).astype("int8")
    frame["pred_click"] = np.clip(p * rng.lognormal(0.0, 0.2, len(frame)), 0.0, 1.0)
    frame["pred_like"] = 0.3 * frame["pred_click"].to_numpy()
    return frame


def exposure_lines(served: pd.DataFrame, stats: pd.DataFrame, ts: float, prefix: str = "req") -> list[str]:
    day1 = stats[stats["event_timestamp"] == T0 + pd.Timedelta(days=1)].set_index("user_id")
    lines = []
    for rid, group in served.groupby("request_id", sort=True):
        user = int(group["user_id"].iloc[0])
        row = day1.loc[user]
        features = {
            "user_click_rate_7d": float(row["user_click_rate_7d"]),
            "user_impressions_7d": int(row["user_impressions_7d"]),
            "user_account_age_days": float(row["user_account_age_days"]),
            "user_country": str(row["user_country"]),
            "hist_length": 0,
            "n_followees": 0,
            "missing_views": [],
        }
        items = [
            {"post_id": int(p), "position": int(k), "score": 1.0 - k / 10, "source": "TwoTowerSource",
             "actions": {"click": float(c), "like": float(lk)}}
            for p, k, c, lk in zip(group["post_id"], group["position"], group["pred_click"], group["pred_like"],
                                   strict=True)
        ]  # fmt: skip
        record = {"kind": "exposure", "endpoint": "recommend", "request_id": f"{prefix}-{rid}", "ts": ts,
                  "user_id": user, "surface": 0, "variant": "ranker", "version": "v1", "degraded": False,
                  "fallback": "", "items": items, "features": features}  # fmt: skip
        lines.append(json.dumps(record))
    return lines


def outcome_lines(served: pd.DataFrame, prefix: str) -> str:
    rows = served[(served["click"] > 0) | (served["like"] > 0)]
    return "".join(
        json.dumps({"request_id": f"{prefix}-{r}", "post_id": int(p), "click": int(c), "like": int(lk)}) + "\n"
        for r, p, c, lk in zip(rows["request_id"], rows["post_id"], rows["click"], rows["like"], strict=True)
    )


def build(
    root: Path,
    seed: int = 0,
    click_top: float = 0.5,
    perturb_features: bool = False,
    policy: Policy = "same",
    young_only: bool = False,
) -> World:
    """A world whose baseline window is served by the same policy as the training window's; the current window is
    served by `policy` (with `click_top` as its top-slot click rate), to users drawn like the reference's, or
    (`young_only`) only to accounts younger than 100 days."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    stats = user_stats(np.random.default_rng(99))  # the same offline tables in every world
    features = root / "features"
    features.mkdir(exist_ok=True)
    stats.to_parquet(features / "user_stats.parquet")
    users = np.arange(1, N_USERS + 1)
    pd.DataFrame({"user_id": users, "event_timestamp": T0, "hist_post_ids": [[]] * N_USERS}).to_parquet(
        features / "user_history.parquet"
    )
    pd.DataFrame({"user_id": users, "event_timestamp": T0, "followee_ids": [[]] * N_USERS}).to_parquet(
        features / "user_graph.parquet"
    )
    posts = np.arange(1, N_POSTS + 1)
    pd.DataFrame(
        {"post_id": posts, "event_timestamp": T0, "post_topic": posts % 16, "post_created_at_ms": 0}
    ).to_parquet(features / "post_stats.parquet")

    # Reference: the training window's logged slates, each row with its user's day-0 features.
    requests = reference_requests()
    ref = slates(np.random.default_rng(1000), requests["user_id"].to_numpy()).drop(columns=["pred_click", "pred_like"])
    day0 = stats[stats["event_timestamp"] == T0].set_index("user_id")
    ref = ref.join(day0[["user_click_rate_7d", "user_impressions_7d", "user_account_age_days"]], on="user_id")
    ref["event_timestamp"] = T0 + pd.Timedelta(hours=12)
    ref["post_topic"] = ref["post_id"] % 16
    reference = root / "training_set.parquet"
    ref.to_parquet(reference)

    # Baseline: the first served window, the same policy; current: `policy`, to the same (or a younger) population.
    base = slates(rng, request_sample(ref, N_SERVED, seed=seed)["user_id"].to_numpy())
    asking = ref
    if young_only:
        young = day0.index[day0["user_account_age_days"] < 100]
        asking = ref[ref["user_id"].isin(young)]
    served = slates(rng, request_sample(asking, N_SERVED, seed=seed + 1)["user_id"].to_numpy(), policy, click_top)
    stats_logged = stats.copy()
    if perturb_features:
        stats_logged["user_click_rate_7d"] += 0.05
    baseline = root / "baseline" / "exposure.jsonl"
    baseline.parent.mkdir(exist_ok=True)
    baseline.write_text("\n".join(exposure_lines(base, stats, BASELINE_AT.timestamp(), "base")) + "\n")
    exposure = root / "logs" / "exposure.jsonl"
    exposure.parent.mkdir(exist_ok=True)
    exposure.write_text("\n".join(exposure_lines(served, stats_logged, SERVED_AT.timestamp())) + "\n")
    outcomes = root / "outcomes.jsonl"
    outcomes.write_text(outcome_lines(base, "base") + outcome_lines(served, "req"))
    return World(root, reference, baseline, exposure, outcomes, features, stats)


@pytest.fixture(scope="module")
def cfg() -> MonitorConfig:
    return parse_config({"quality": {"k": 10}})


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> World:
    return build(tmp_path_factory.mktemp("good"))


def run_good(w: World, cfg: MonitorConfig, out: Path | None = None, **kwargs: Any) -> Any:
    return run_monitor(
        MonitorInputs(w.reference, w.exposure, baseline=w.baseline, outcomes=w.outcomes, features=w.features, **kwargs),
        out,
        cfg,
    )


def test_same_policy_as_the_baseline_passes_every_test_and_writes_reports(
    good: World, cfg: MonitorConfig, tmp_path: Path
) -> None:
    out = tmp_path / "reports"
    res = run_good(good, cfg, out)
    summary = res.summary()
    assert set(summary) == SUMMARY_KEYS and set(summary["quality"]) == QUALITY_KEYS
    assert set(summary["tests"]) == set(TEST_NAMES)
    assert summary["status"] == "pass", res.reasons()
    assert summary["tests"] == {
        "data_drift": "pass", "prediction_drift": "pass", "target_drift": "pass", "quality": "pass",
        "embedding_drift": "insufficient_data", "skew": "pass",
    }  # fmt: skip
    assert summary["skew_rate"] == 0.0 and summary["target_drift_share"] == 0.0
    # Data drift is on the user side, one row per request: 3 numeric features, 1000 reference requests.
    assert set(res.data_drift.per_feature) == {"user_click_rate_7d", "user_impressions_7d", "user_account_age_days"}
    assert res.data_drift.n_reference == N_REFERENCE and res.data_drift.n_current == N_SERVED
    assert set(summary["prediction_mean"]) == {"click", "like"}
    assert summary["window_start"] == summary["window_end"] == SERVED_AT.isoformat()
    assert all(isinstance(v, float) for v in summary["quality"].values())
    assert summary["quality"]["coverage"] == pytest.approx(res.quality.metrics["coverage"])
    assert res.outcomes["source"] == "file" and str(good.outcomes) in res.outcomes["detail"]
    assert any(n.startswith("baseline exposure log: 1 files, 1000 records") for n in res.notes)
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(summary))
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(
        [
            "summary.json",
            "result.json",
            "data_drift.html",
            "quality.html",
            "quality.json",
            "target_drift.html",
            "target_drift.json",
        ]
    )  # fmt: skip  (no temporary file left behind)
    full = json.loads((out / "result.json").read_text())
    assert full["checks"]["quality"]["reference_metrics"]["ndcg@10"] > 0  # the baseline's slates


def test_requests_drawn_like_the_logging_policy_follow_activity() -> None:
    ref = reference_requests()
    drawn = request_sample(ref, 20_000, seed=3)
    assert request_sample(ref, 500, seed=3).equals(request_sample(ref, 500, seed=3))
    share_ref = ref["user_id"].value_counts(normalize=True)
    share_drawn = drawn["user_id"].value_counts(normalize=True).reindex(share_ref.index, fill_value=0.0)
    top = share_ref.index[:5]  # the most active users come back as often as they asked
    assert np.allclose(share_drawn[top], share_ref[top], atol=0.01)
    assert set(drawn["user_id"]) <= set(ref["user_id"]) and (drawn["surface"] == 0).all()


def test_without_a_baseline_policy_checks_have_no_verdict_but_quality_is_reported(
    good: World, cfg: MonitorConfig
) -> None:
    res = run_monitor(
        MonitorInputs(good.reference, good.exposure, outcomes=good.outcomes, features=good.features), None, cfg
    )
    tests = res.tests()
    assert tests["data_drift"] == "pass" and tests["skew"] == "pass" and res.status == "pass"
    for name in POLICY_TESTS:
        assert tests[name] == "insufficient_data" and NO_BASELINE in res.reasons()[name], (name, res.reasons())
    assert all(isinstance(v, float) for v in res.summary()["quality"].values())
    assert res.quality.reference_metrics == {}
    assert res.summary()["prediction_mean"]["click"] > 0


def test_without_a_baseline_a_worse_policy_never_fails(cfg: MonitorConfig, tmp_path: Path) -> None:
    worse = build(tmp_path / "worse", seed=2, policy="worse")
    res = run_monitor(
        MonitorInputs(worse.reference, worse.exposure, outcomes=worse.outcomes, features=worse.features), None, cfg
    )
    assert res.status == "pass" and all(res.tests()[name] == "insufficient_data" for name in POLICY_TESTS)


def test_a_worse_policy_than_the_baseline_fails_quality_and_target_drift(cfg: MonitorConfig, tmp_path: Path) -> None:
    worse = build(tmp_path / "worse", seed=2, policy="worse")
    res = run_good(worse, cfg)
    assert res.status == "fail"
    assert res.quality.status == "fail" and "ndcg@10" in res.quality.reasons[0]
    assert res.target_drift.status == "fail" and res.target_drift.per_feature["click"]["drifted"]
    assert res.prediction_drift.status == "fail"
    assert res.data_drift.status == "pass" and res.skew.status == "pass"  # the same people asked


def test_a_shifted_request_population_fails_data_drift(cfg: MonitorConfig, tmp_path: Path) -> None:
    young = build(tmp_path / "young", seed=3, young_only=True)
    res = run_good(young, cfg)
    assert res.data_drift.status == "fail" and res.status == "fail"
    assert res.data_drift.per_feature["user_account_age_days"]["drifted"]


def test_perturbed_features_and_outcomes_fail(cfg: MonitorConfig, tmp_path: Path) -> None:
    bad = build(tmp_path / "bad", seed=1, click_top=0.95, perturb_features=True)
    res = run_good(bad, cfg)
    assert res.status == "fail"
    assert res.skew.status == "fail" and res.skew.per_feature["user_click_rate_7d"]["rate"] == 1.0
    assert res.skew.per_feature["user_country"]["rate"] == 0.0
    assert res.target_drift.status == "fail" and res.target_drift.per_feature["click"]["drifted"]


def test_simulated_outcomes_on_a_synthetic_dataset(good: World, cfg: MonitorConfig, tmp_path: Path) -> None:
    from features.synth import SynthConfig, generate

    synth = tmp_path / "synth"
    generate(SynthConfig.for_scale("nano", seed=5), synth)
    kwargs: dict[str, Any] = {"baseline": good.baseline, "synthetic": synth, "features": good.features}
    res = run_monitor(MonitorInputs(good.reference, good.exposure, **kwargs), None, cfg)
    assert res.outcomes["source"] == "simulated" and res.outcomes["n_with_outcome"] == N_SERVED * SLATE
    assert any(n.startswith("baseline outcomes: simulated") for n in res.notes)
    assert res.quality.status != "insufficient_data" and res.target_drift.share_drifted is not None
    again = run_monitor(MonitorInputs(good.reference, good.exposure, **kwargs), None, cfg)
    assert again.summary() == res.summary()  # seeded


def test_prediction_columns_give_means_and_drift(good: World, cfg: MonitorConfig, tmp_path: Path) -> None:
    from monitoring.exposure_frame import read_exposure

    frame = read_exposure(good.exposure).frame
    frame["pred_click"] = np.linspace(0.1, 0.3, len(frame))
    base = frame.assign(pred_click=np.linspace(0.1, 0.3, len(frame))[::-1])
    res = run_monitor(MonitorInputs(good.reference, frame, baseline=base), None, cfg)
    means = res.summary()["prediction_mean"]
    assert set(means) == {"click", "like"} and means["click"] == pytest.approx(0.2)
    assert res.prediction_drift.status == "pass"
    shifted = run_monitor(
        MonitorInputs(good.reference, frame, baseline=base.assign(pred_click=base["pred_click"] + 0.1)), None, cfg
    )
    assert shifted.prediction_drift.status == "fail" and shifted.prediction_drift.per_feature["click"]["drifted"]
    assert res.skew.status == "insufficient_data" and "--features" in res.skew.reasons[0]


def test_served_item_features_are_compared_with_the_baseline_not_the_training_window(
    good: World, cfg: MonitorConfig
) -> None:
    from monitoring.exposure_frame import read_exposure

    rng = np.random.default_rng(4)
    cur = read_exposure(good.exposure).frame
    base = read_exposure(good.baseline).frame
    cur["post_click_rate"] = rng.beta(2, 8, len(cur))
    base["post_click_rate"] = rng.beta(2, 8, len(base))
    # The training window's posts were picked by another policy: far more clicked. Not the comparison.
    ref = pd.read_parquet(good.reference).assign(post_click_rate=0.9)
    same = run_monitor(MonitorInputs(ref, cur, baseline=base), None, cfg)
    assert same.data_drift.status == "pass" and "post_click_rate" in same.data_drift.per_feature
    shifted = run_monitor(
        MonitorInputs(ref, cur, baseline=base.assign(post_click_rate=base["post_click_rate"] + 0.2)), None, cfg
    )
    assert shifted.data_drift.status == "fail" and shifted.data_drift.per_feature["post_click_rate"]["drifted"]
    alone = run_monitor(MonitorInputs(ref, cur), None, cfg)
    assert alone.data_drift.status == "pass" and "post_click_rate" not in alone.data_drift.per_feature
    assert alone.data_drift.reasons == [
        "reported, not judged: 0 of 2 other features drifted",
        f"1 post/author features not compared: {NO_BASELINE}",
    ]


def test_user_counters_are_reported_beside_the_population_but_not_judged(good: World, cfg: MonitorConfig) -> None:
    """What users did with earlier slates moves with the serving policy: a request population whose counters all
    moved, but not its attributes, passes; its counters are measured and named. Moving the account age fails."""
    from monitoring.exposure_frame import read_exposure

    cur = read_exposure(good.exposure).frame
    counters = cur.assign(user_click_rate_7d=cur["user_click_rate_7d"] + 0.3,
                          user_impressions_7d=cur["user_impressions_7d"] * 3)  # fmt: skip
    res = run_monitor(MonitorInputs(good.reference, counters), None, cfg)
    assert res.data_drift.status == "pass", res.data_drift.reasons
    assert res.data_drift.per_feature["user_click_rate_7d"]["drifted"]
    assert res.data_drift.per_feature["user_impressions_7d"]["drifted"]
    assert "reported, not judged: 2 of 2 other features drifted" in res.data_drift.reasons
    assert not res.data_drift.per_feature["user_account_age_days"]["drifted"]
    assert res.data_drift.share_drifted == 0.0  # of the judged features (the training set has no country here)
    older = cur.assign(user_account_age_days=cur["user_account_age_days"] + 500)
    res = run_monitor(MonitorInputs(good.reference, older), None, cfg)
    assert res.data_drift.status == "fail" and res.data_drift.share_drifted == 1.0
    assert "user_account_age_days" in res.data_drift.reasons[-1]


def test_embedding_drift_compares_both_towers_with_the_baseline(
    good: World, cfg: MonitorConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The towers are replaced by a fixed random vector per id: the wiring (who is compared with whom) is tested."""
    import monitoring.embedding_drift as ed_module

    calls: list[tuple[int, int]] = []

    def vectors(ids: np.ndarray, salt: int) -> np.ndarray | None:
        return np.stack([np.random.default_rng([salt, int(i)]).normal(size=8) for i in ids]) if len(ids) else None

    def fake(model_dir: Path, features: Path, users: pd.DataFrame, post_ids: np.ndarray, as_of: Any) -> dict:
        calls.append((len(users), len(post_ids)))
        out = {"user": vectors(users["user_id"].to_numpy(), 1), "post": vectors(np.asarray(post_ids), 2)}
        return {k: v for k, v in out.items() if v is not None}

    monkeypatch.setattr(ed_module, "tower_embeddings", fake)
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    res = run_good(good, cfg, retrieval_model=model)
    assert res.embedding_drift.status == "pass", res.embedding_drift.reasons
    assert {c.split("_")[0] for c in res.embedding_drift.per_feature} == {"user", "post"}
    # current (users and posts), then the baseline (users and posts); the training window is not encoded
    assert calls == [(N_SERVED, N_SERVED * SLATE), (N_SERVED, N_SERVED * SLATE)]
    alone = run_monitor(
        MonitorInputs(good.reference, good.exposure, features=good.features, retrieval_model=model), None, cfg
    )
    assert alone.embedding_drift.status == "insufficient_data"
    assert alone.embedding_drift.reasons == [f"towers not compared: {NO_BASELINE}"]
    young = build(tmp_path / "young", seed=3, young_only=True)
    shifted = run_good(young, cfg, retrieval_model=model)
    assert shifted.embedding_drift.status == "fail"  # other users asked than in the baseline
    assert {c for c in shifted.embedding_drift.drifted() if c.startswith("user")}


def test_empty_window_is_insufficient_not_a_crash(good: World, cfg: MonitorConfig, tmp_path: Path) -> None:
    empty = tmp_path / "exposure.jsonl"
    empty.write_text("")
    res = run_monitor(
        MonitorInputs(good.reference, empty, outcomes=good.outcomes, features=good.features), tmp_path / "out", cfg
    )
    summary = res.summary()
    assert summary["status"] == "insufficient_data" and set(summary) == SUMMARY_KEYS
    assert all(s == "insufficient_data" for s in summary["tests"].values())
    assert summary["window_start"] is None and summary["quality"]["ndcg@10"] is None
    assert (tmp_path / "out" / "summary.json").is_file()


def test_window_bounds_filter_the_log(good: World, cfg: MonitorConfig) -> None:
    before = (SERVED_AT - pd.Timedelta(hours=1)).to_pydatetime()
    res = run_monitor(MonitorInputs(good.reference, good.exposure, window_end=before), None, cfg)
    assert res.status == "insufficient_data" and res.summary()["window_end"] == before.isoformat()


# The CLI ------------------------------------------------------------------------------------------------------------


def cli_args(w: World, out: Path, *extra: str) -> list[str]:
    return ["monitor", "run", "--reference", str(w.reference), "--current", str(w.exposure), "--out", str(out),
            "--baseline", str(w.baseline), "--outcomes", str(w.outcomes), "--features", str(w.features),
            *extra]  # fmt: skip


def quiet_thresholds(tmp_path: Path) -> Path:
    path = tmp_path / "t.yaml"
    path.write_text("quality: {k: 10}\n")
    return path


def test_cli_pass_exit_0_with_json(run_cli: Callable[..., Any], good: World, tmp_path: Path) -> None:
    js = tmp_path / "summary.json"
    res = run_cli(*cli_args(good, tmp_path / "out", "--json", str(js), "--thresholds", str(quiet_thresholds(tmp_path))))
    assert res.code == 0, res.stdout + res.stderr
    assert "monitor: PASS" in res.stdout and "skew: PASS" in res.stdout and "quality: ndcg@10" in res.stdout
    assert "embedding_drift: insufficient data" in res.stdout and "target_drift: PASS" in res.stdout
    assert json.loads(js.read_text())["status"] == "pass"


def test_cli_without_baseline_says_why(run_cli: Callable[..., Any], good: World, tmp_path: Path) -> None:
    args = cli_args(good, tmp_path / "out")
    i = args.index("--baseline")
    res = run_cli(*args[:i], *args[i + 2 :])
    assert res.code == 0, res.stdout + res.stderr
    assert f"target_drift: insufficient data ({NO_BASELINE})" in res.stdout
    assert f"quality: insufficient data ({NO_BASELINE})" in res.stdout and "monitor: PASS" in res.stdout


def test_cli_fail_exit_1(run_cli: Callable[..., Any], tmp_path: Path) -> None:
    bad = build(tmp_path / "bad", seed=1, click_top=0.95, perturb_features=True)
    res = run_cli(*cli_args(bad, tmp_path / "out"))
    assert res.code == 1
    assert "monitor: FAIL" in res.stdout and "skew: FAIL" in res.stdout


def test_cli_empty_window_exit_0_insufficient(run_cli: Callable[..., Any], good: World, tmp_path: Path) -> None:
    empty = tmp_path / "logs"
    empty.mkdir()
    res = run_cli(
        "monitor", "run", "--reference", str(good.reference), "--current", str(empty), "--out", str(tmp_path / "o")
    )
    assert res.code == 0 and "monitor: insufficient data" in res.stdout


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"--reference": "missing.parquet"}, "missing.parquet: reference not found"),
        ({"--current": "missing-logs"}, "missing-logs: current window not found"),
        ({"--baseline": "missing-base"}, "missing-base: baseline not found"),
        ({"--outcomes": "missing.jsonl"}, "missing.jsonl: outcomes file not found"),
        ({"--as-of": "yesterday"}, "--as-of: not an ISO time"),
        ({"--thresholds": "bad.yaml"}, "quality.kk: unknown key"),
    ],
)
def test_cli_bad_input_is_one_line_exit_2(
    run_cli: Callable[..., Any], good: World, tmp_path: Path, change: dict[str, str], expected: str
) -> None:
    (tmp_path / "bad.yaml").write_text("quality: {kk: 3}\n")
    args = cli_args(good, tmp_path / "out")
    for option, value in change.items():
        value = str(tmp_path / value) if value != "yesterday" else value
        if option in args:
            args[args.index(option) + 1] = value
        else:
            args += [option, value]
    res = run_cli(*args)
    assert expected in res.error_line()
    assert not (tmp_path / "out").exists()  # bad input writes nothing


@pytest.mark.parametrize(
    "raw, match",
    [
        ({"quality": {"ndcg_drop": 0.1}}, "quality.ndcg_drop: unknown key"),
        ({"skew": {"max_rate": 2}}, "skew.max_rate"),
        ({"quality": {"relevant_actions": ["clik"]}}, "unknown actions \\['clik'\\]"),
        ({"embedding_drift": {"n_components": 0}}, "embedding_drift.n_components"),
        ({"target_drift": {"per_action_threshold": {"click": -1}}}, "target_drift.per_action_threshold.click"),
    ],
)
def test_new_threshold_keys_are_typed(raw: dict[str, Any], match: str) -> None:
    from core.errors import UserError

    with pytest.raises(UserError, match=match):
        parse_config(raw)


def test_shipped_thresholds_parse_with_every_section() -> None:
    from monitoring.config import load_config

    cfg = load_config()
    assert cfg.quality.k == 10 and cfg.quality.relevant_actions == ("click",)
    assert cfg.skew.max_rate == 0.01 and cfg.embedding_drift.n_components == 8
    assert cfg.target_drift.threshold_for("click") == cfg.target_drift.threshold


def test_embedding_inputs_the_model_cannot_read_are_no_verdict(good: World, cfg: MonitorConfig, tmp_path: Path) -> None:
    """The world's tables lack the tower's attribute columns: embedding drift has no verdict, the rest stands."""
    import torch

    from models.retrieval.model import TwoTower, TwoTowerConfig, save

    torch.manual_seed(0)
    save(TwoTower(TwoTowerConfig.preset("nano")), tmp_path / "model")
    res = run_good(good, cfg, retrieval_model=tmp_path / "model")
    assert res.embedding_drift.status == "insufficient_data"
    assert "could not encode" in res.embedding_drift.reasons[0] and "missing columns" in res.embedding_drift.reasons[0]
    assert res.status == "pass" and res.skew.status == "pass"


def test_cli_rejects_a_directory_that_is_not_a_model(run_cli: Callable[..., Any], good: World, tmp_path: Path) -> None:
    res = run_cli(*cli_args(good, tmp_path / "out", "--retrieval-model", str(tmp_path)))
    assert "not a saved two-tower model" in res.error_line()


def test_only_the_alarm_checks_fail_the_run(good: World, cfg: MonitorConfig) -> None:
    """Predictions that moved fail prediction drift, which is reported, but the run passes unless the config makes
    prediction drift an alarm check; a failing alarm check is named in the summary's alarms."""
    from monitoring.exposure_frame import read_exposure

    cur = read_exposure(good.exposure).frame
    moved = cur.assign(pred_click=cur["pred_click"] * 3, pred_like=cur["pred_like"] * 3)
    res = run_monitor(MonitorInputs(good.reference, moved, baseline=good.baseline, outcomes=good.outcomes), None, cfg)
    assert res.prediction_drift.status == "fail" and res.status == "pass"
    assert res.summary()["alarms"] == [] and res.summary()["tests"]["prediction_drift"] == "fail"
    strict = parse_config({"quality": {"k": 10}, "alarm_checks": ["prediction_drift", "target_drift"]})
    res = run_monitor(
        MonitorInputs(good.reference, moved, baseline=good.baseline, outcomes=good.outcomes), None, strict
    )
    assert res.status == "fail" and res.summary()["alarms"] == ["prediction_drift"]
    with pytest.raises(UserError, match="alarm_checks"):
        parse_config({"alarm_checks": ["drift"]})
