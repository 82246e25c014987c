"""Train/serve skew: 0 on consistent data, the exact rate when k values are perturbed, point-in-time lookups."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from monitoring.config import SkewConfig
from monitoring.skew import read_user_tables, train_serve_skew

DAY = pd.Timedelta(days=1)
T0 = pd.Timestamp("2026-01-02", tz="UTC")
N_USERS = 80


def tables(seed: int = 0) -> dict[str, pd.DataFrame]:
    """Two daily snapshots per user; the second one's values differ, so a wrong-time lookup is visible."""
    rng = np.random.default_rng(seed)
    rows = []
    for day in range(2):
        for u in range(1, N_USERS + 1):
            rows.append(
                {
                    "user_id": u,
                    "event_timestamp": T0 + day * DAY,
                    "user_click_rate_7d": float(np.float32(rng.random())),
                    "user_impressions_7d": int(rng.integers(0, 500)),
                    "user_country": ["US", "BR", "IN"][int(rng.integers(0, 3))],
                }
            )
    stats = pd.DataFrame(rows)
    history = pd.DataFrame(
        {
            "user_id": np.arange(1, N_USERS + 1),
            "event_timestamp": T0,
            "hist_post_ids": [list(range(u % 7)) for u in range(1, N_USERS + 1)],
        }
    )
    graph = pd.DataFrame(
        {
            "user_id": np.arange(1, N_USERS + 1),
            "event_timestamp": T0,
            "followee_ids": [list(range(u % 5)) for u in range(1, N_USERS + 1)],
        }
    )
    return {"user_stats": stats, "user_history": history, "user_graph": graph}


def served_from(tabs: dict[str, pd.DataFrame], day: int, slate: int = 3) -> pd.DataFrame:
    """What a consistent service would log for each user 6 h into `day` (slate rows per request)."""
    stats = tabs["user_stats"]
    snap = stats[stats["event_timestamp"] == T0 + day * DAY].reset_index(drop=True)
    ts = (T0 + day * DAY + pd.Timedelta(hours=6)).timestamp()
    requests = snap.drop(columns=["event_timestamp"]).assign(
        request_id=[f"req{i}" for i in range(len(snap))],
        ts=ts,
        hist_length=snap["user_id"] % 7,
        n_followees=snap["user_id"] % 5,
        n_missing_views=0,
    )
    return requests.loc[requests.index.repeat(slate)].assign(post_id=1, position=0).reset_index(drop=True)


CFG = SkewConfig(min_rows=20)


def test_consistent_log_has_no_skew() -> None:
    tabs = tables()
    for day in (0, 1):  # the lookup takes the snapshot in force at each request's time
        res = train_serve_skew(served_from(tabs, day), tabs, CFG)
        assert res.status == "pass", res.reasons
        assert res.rate == 0.0
        assert set(res.per_feature) == {
            "user_click_rate_7d", "user_impressions_7d", "user_country", "hist_length", "n_followees",
        }  # fmt: skip
        assert res.n_requests == res.n_compared == N_USERS  # one comparison per request, not per item


def test_perturbed_values_give_the_exact_rate() -> None:
    tabs = tables()
    served = served_from(tabs, 1)
    bad_requests = [f"req{i}" for i in range(8)]  # 8 of 80 requests: 10% of one feature, 2% of all 5 x 80 values
    hit = served["request_id"].isin(bad_requests)
    served.loc[hit, "user_click_rate_7d"] += 0.01
    res = train_serve_skew(served, tabs, CFG)
    assert res.per_feature["user_click_rate_7d"]["rate"] == pytest.approx(0.1)
    assert res.per_feature["user_impressions_7d"]["rate"] == 0.0
    assert res.rate == pytest.approx(8 / (5 * N_USERS))
    assert res.status == "fail" and "user_click_rate_7d 10.0%" in res.reasons[0]
    assert res.examples[0]["feature"] == "user_click_rate_7d"


def test_float_round_trip_and_text_are_matched_exactly() -> None:
    tabs = tables()
    served = served_from(tabs, 0)
    served["user_click_rate_7d"] = served["user_click_rate_7d"].map(lambda v: float(f"{v:.9g}"))  # JSON of a float32
    assert train_serve_skew(served, tabs, CFG).rate == 0.0
    served.loc[served["request_id"] == "req3", "user_country"] = "XX"
    res = train_serve_skew(served, tabs, CFG)
    assert res.per_feature["user_country"]["mismatched"] == 1


def test_stale_lookup_time_is_skew() -> None:
    """Served with day 1's values but looked up at day 0 (as_of): every changed value is a mismatch."""
    tabs = tables()
    res = train_serve_skew(served_from(tabs, 1), tabs, CFG, as_of=datetime(2026, 1, 2, 6, tzinfo=UTC))
    assert res.status == "fail"
    assert res.per_feature["user_click_rate_7d"]["rate"] > 0.9
    assert res.per_feature["hist_length"]["rate"] == 0.0  # history did not change


def test_unhydrated_and_unknown_users_are_counted_not_compared() -> None:
    tabs = tables()
    served = served_from(tabs, 0)
    features = ["user_click_rate_7d", "user_impressions_7d", "user_country", "hist_length", "n_followees"]
    served.loc[served["request_id"] == "req0", features] = np.nan  # a fallback response: no features logged
    served.loc[served["request_id"] == "req1", "user_id"] = 10_000  # no offline row
    res = train_serve_skew(served, tabs, CFG)
    assert res.rate == 0.0 and res.n_without_features == 1 and res.n_without_offline_row == 1
    assert res.n_compared == N_USERS - 2


@pytest.mark.parametrize(
    "served, reason",
    [
        (None, "current window is empty"),
        (pd.DataFrame(), "current window is empty"),
        (pd.DataFrame({"request_id": ["a"], "user_id": [1]}), "'ts' is missing"),
        (pd.DataFrame({"request_id": ["a"], "user_id": [1], "ts": [0.0], "x": [1.0]}), "no logged feature column"),
    ],
)
def test_bad_input_is_insufficient(served: pd.DataFrame | None, reason: str) -> None:
    res = train_serve_skew(served, tables(), CFG)
    assert res.status == "insufficient_data" and res.rate is None
    assert any(reason in r for r in res.reasons), res.reasons


def test_too_few_requests_is_insufficient() -> None:
    tabs = tables()
    res = train_serve_skew(served_from(tabs, 0).head(30), tabs, CFG)  # 10 requests
    assert res.status == "insufficient_data" and res.rate == 0.0  # measured, but no verdict


def test_read_user_tables_filters_users(tmp_path: Path) -> None:
    for name, frame in tables().items():
        frame.to_parquet(tmp_path / f"{name}.parquet")
    got = read_user_tables(tmp_path, np.array([3, 5, 5]))
    assert sorted(got["user_stats"]["user_id"].unique()) == [3, 5]
    assert set(got) == {"user_stats", "user_history", "user_graph"}


def test_read_candidate_tables_reads_only_the_logged_posts_and_authors(tmp_path: Path) -> None:
    from monitoring.skew import read_candidate_tables

    posts = pd.DataFrame({"post_id": [1, 2, 3], "event_timestamp": T0, "post_click_rate": [0.1, 0.2, 0.3]})
    authors = pd.DataFrame({"author_id": [7, 8], "event_timestamp": T0, "author_click_rate": [0.4, 0.5]})
    posts.to_parquet(tmp_path / "post_stats.parquet")
    authors.to_parquet(tmp_path / "author_stats.parquet")
    served = pd.DataFrame({"post_id": [1, 3, 2], "cand_post_click_rate": [0.1, 0.3, None],
                           "cand_post_author_id": [7, 7, None]})  # fmt: skip
    tables = read_candidate_tables(tmp_path, served)
    assert sorted(tables["post_stats"]["post_id"]) == [1, 3] and list(tables["author_stats"]["author_id"]) == [7]
    # Without the logged author column: the post rows only, not an error.
    tables = read_candidate_tables(tmp_path, served.drop(columns="cand_post_author_id"))
    assert set(tables) == {"post_stats"}
    assert read_candidate_tables(tmp_path, served.drop(columns=["cand_post_click_rate", "cand_post_author_id"])) == {}


def test_history_grown_by_the_events_pushed_since_the_day_began_is_not_skew() -> None:
    """Serving extends the history in real time (the push source); the offline one is frozen at the day's start.
    A request that logs how many of its history events are from its own day (hist_live) is compared with the
    offline length plus those, capped at the history length; one whose history grew by more is still skew."""
    tabs = tables()
    served = served_from(tabs, 0)
    offline_length = served["user_id"] % 7
    live = served["user_id"] % 3  # 0..2 events pushed today
    served["hist_length"] = offline_length + live
    without_count = train_serve_skew(served, tabs, CFG)
    assert without_count.per_feature["hist_length"]["rate"] > 0.5  # without the count: every grown history
    served["hist_live"] = live
    res = train_serve_skew(served, tabs, CFG)
    assert res.per_feature["hist_length"]["rate"] == 0.0 and res.status == "pass", res.reasons
    assert "hist_live" not in res.per_feature  # a count about the history, not a feature of an offline table
    capped = CFG.model_copy(update={"history_length": 6})
    served["hist_length"] = np.minimum(offline_length + live, 6)  # the push cut the history to its length
    assert train_serve_skew(served, tabs, capped).per_feature["hist_length"]["rate"] == 0.0
    assert train_serve_skew(served, tabs, CFG).per_feature["hist_length"]["rate"] > 0.0  # at 128 it is skew
    grew_more = served["request_id"].isin([f"req{i}" for i in range(8)])
    served["hist_length"] = offline_length + live + grew_more.astype(int)  # one event more than was pushed
    res = train_serve_skew(served, tabs, CFG)
    assert res.per_feature["hist_length"]["mismatched"] == 8
