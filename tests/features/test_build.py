"""Batch feature snapshots: exact values on a hand-written dataset, and nothing from at-or-after the snapshot."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from core.actions import BY_NAME
from features.build import build_features
from tests.features.tiny import ts, write_tiny


@pytest.fixture(scope="module")
def feats(tmp_path_factory: pytest.TempPathFactory) -> dict[str, pd.DataFrame]:
    root = tmp_path_factory.mktemp("build")
    out = root / "features"
    build_features(write_tiny(root / "tiny"), out)
    names = ("user_stats", "author_stats", "post_stats", "user_history", "user_graph")
    return {n: pd.read_parquet(out / f"{n}.parquet") for n in names}


def _row(df: pd.DataFrame, key: str, value: int, at) -> pd.Series:
    rows = df[(df[key] == value) & (df.event_timestamp == pd.Timestamp(at))]
    assert len(rows) == 1, f"expected one row for {key}={value} at {at}, got {len(rows)}"
    return rows.iloc[0]


def test_user_counts_use_only_events_strictly_before_the_snapshot(feats: dict[str, pd.DataFrame]) -> None:
    us = feats["user_stats"]
    assert _row(us, "user_id", 1, ts(1)).user_impressions_28d == 0
    day2 = _row(us, "user_id", 1, ts(2))
    # The click at exactly 2026-01-02 00:00 belongs to the next snapshot, not this one.
    assert (day2.user_impressions_1d, day2.user_click_1d, day2.user_like_1d) == (1, 1, 1)
    day3 = _row(us, "user_id", 1, ts(3))
    assert (day3.user_impressions_1d, day3.user_click_1d, day3.user_block_author_1d) == (2, 1, 1)
    assert (day3.user_impressions_7d, day3.user_click_7d, day3.user_like_7d) == (3, 2, 1)
    assert day3.user_click_rate_7d == pytest.approx(2 / 3)
    assert day3.user_followee_count == 1 and day3.user_country == "US"


def test_author_rates_are_smoothed_towards_the_global_rate_before_the_snapshot(feats: dict[str, pd.DataFrame]) -> None:
    day1 = _row(feats["author_stats"], "author_id", 10, ts(1))
    assert day1.author_click_rate == 0.0  # nothing happened before the first day: no prior either
    day2 = _row(feats["author_stats"], "author_id", 10, ts(2))
    # Before 2026-01-02 there is one impression (clicked): the prior is 1/1, not the full-data 3/5.
    assert day2.author_click_rate == pytest.approx((1 + 20 * 1.0) / (1 + 20))
    day3 = _row(feats["author_stats"], "author_id", 10, ts(3))
    prior = 2 / 4  # 4 impressions before 2026-01-03, 2 clicked
    assert day3.author_click_rate == pytest.approx((2 + 20 * prior) / (4 + 20))
    assert day3.author_negative_rate == pytest.approx((1 + 20 * 1 / 4) / (4 + 20))
    assert day2.author_follower_count == 1
    assert day2.author_posts_per_day == pytest.approx(2 / 7)


def test_post_rows_start_at_creation_and_count_by_hour(feats: dict[str, pd.DataFrame]) -> None:
    ps = feats["post_stats"]
    created = _row(ps, "post_id", 100, ts(1))
    assert created.post_impressions == 0 and created.post_click_count == 0
    after = _row(ps, "post_id", 100, ts(1, 11))
    assert (after.post_impressions, after.post_click_count, after.post_like_count) == (1, 1, 1)
    # The impression at exactly 00:00 on day 2 shows up at the 01:00 boundary, never at 00:00.
    assert ps[(ps.post_id == 101) & (ps.event_timestamp == pd.Timestamp(ts(2)))].empty
    assert _row(ps, "post_id", 101, ts(2, 1)).post_click_count == 1


def test_history_is_last_engagements_oldest_first_with_action_masks(feats: dict[str, pd.DataFrame]) -> None:
    hist = feats["user_history"]
    day2 = _row(hist, "user_id", 1, ts(2))
    assert list(day2.hist_post_ids) == [100]
    assert list(day2.hist_actions) == [(1 << BY_NAME["click"].bit) | (1 << BY_NAME["like"].bit)]
    day3 = _row(hist, "user_id", 1, ts(3))
    assert list(day3.hist_post_ids) == [100, 101, 100]
    assert list(day3.hist_actions)[-1] == 1 << BY_NAME["block_author"].bit
    assert list(day3.hist_timestamps) == sorted(day3.hist_timestamps)
    # User 2's impression without any action is not an engagement.
    assert hist[(hist.user_id == 2) & (hist.event_timestamp <= pd.Timestamp(ts(3)))].empty


def test_graph_has_followees_and_blocked_authors_as_of_the_snapshot(feats: dict[str, pd.DataFrame]) -> None:
    graph = feats["user_graph"]
    assert list(_row(graph, "user_id", 1, ts(2)).blocked_author_ids) == []
    day3 = _row(graph, "user_id", 1, ts(3))
    assert list(day3.followee_ids) == [10] and list(day3.blocked_author_ids) == [10]
    assert list(day3.muted_author_ids) == []


def test_missing_dataset_is_a_one_line_user_error(tmp_path: Path) -> None:
    from core.errors import UserError

    with pytest.raises(UserError, match="manifest"):
        build_features(tmp_path / "nope", tmp_path / "out")
    assert not (tmp_path / "out").exists()
