"""PopularRecommender: order, k, seen posts, own posts, rank order, and loading from parquet."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from core.errors import UserError
from serving.static_recommender import PopularRecommender

TABLE = {1: (10, 5.0), 2: (11, 9.0), 3: (12, 9.0), 4: (7, 1.0)}


def test_recommend_is_by_score_then_post_id_and_honours_k_and_seen() -> None:
    rec = PopularRecommender(TABLE)
    assert [i.post_id for i in rec.recommend(1, k=10).items] == [2, 3, 1, 4]
    assert [i.post_id for i in rec.recommend(1, k=2, seen_ids=frozenset({2})).items] == [3, 1]
    item = rec.recommend(1, k=1).items[0]
    assert (item.author_id, item.score, item.source, item.actions) == (11, 9.0, "popular", {})
    assert rec.ready() and not rec.recommend(1, 3).degraded


def test_own_posts_are_never_recommended() -> None:
    assert 4 not in [i.post_id for i in PopularRecommender(TABLE).recommend(7, k=10).items]


def test_rank_keeps_the_given_order_and_scores_unknown_posts_zero() -> None:
    items = PopularRecommender(TABLE).rank(1, [4, 99, 2]).items
    assert [(i.post_id, i.score) for i in items] == [(4, 1.0), (99, 0.0), (2, 9.0)]


def test_from_parquet_reads_the_post_stats_view_newest_snapshot(tmp_path: Path) -> None:
    path = tmp_path / "post_stats.parquet"
    pd.DataFrame(
        {
            "post_id": [1, 1, 2],
            "event_timestamp": pd.to_datetime(["2026-01-01", "2026-01-02", "2026-01-01"], utc=True),
            "post_author_id": [5, 5, 6],
            "post_like_count": [1, 10, 4],
            "post_click_count": [0, 3, 2],
            "post_report_count": [0, 50, 0],  # negative: not popularity
        }
    ).to_parquet(path)
    rec = PopularRecommender.from_parquet(path)
    assert [(i.post_id, i.author_id, i.score) for i in rec.recommend(0, 5).items] == [(1, 5, 13.0), (2, 6, 6.0)]


def test_from_parquet_reads_a_plain_table_and_rejects_other_layouts(tmp_path: Path) -> None:
    plain = tmp_path / "plain.parquet"
    pd.DataFrame({"post_id": [3, 4], "author_id": [1, 2], "score": [0.5, 0.7]}).to_parquet(plain)
    assert [i.post_id for i in PopularRecommender.from_parquet(plain, limit=1).recommend(0, 5).items] == [4]
    other = tmp_path / "other.parquet"
    pd.DataFrame({"x": [1]}).to_parquet(other)
    with pytest.raises(UserError, match="other.parquet: expected columns"):
        PopularRecommender.from_parquet(other)
    with pytest.raises(UserError, match="no such parquet"):
        PopularRecommender.from_parquet(tmp_path / "missing.parquet")


def test_from_parquet_ranks_post_stats_by_the_popular_sources_rule_with_ties_by_post_id(tmp_path: Path) -> None:
    from serving.sources.popular import popular_posts

    path = tmp_path / "post_stats.parquet"
    stats = pd.DataFrame(
        {
            "post_id": [3, 2, 1, 4],
            "event_timestamp": pd.to_datetime(["2026-01-02"] * 4, utc=True),
            "post_author_id": [13, 12, 11, 14],
            "post_created_at_ms": [300, 200, 100, 400],  # post 3 is the newest of the tie
            "post_click_count": [1, 1, 4, 0],
            "post_share_count": [1, 1, 0, 0],
            "post_mute_author_count": [0, 0, 0, 9],  # negative: not popularity
        }
    )
    stats.to_parquet(path)
    items = PopularRecommender.from_parquet(path, limit=2).recommend(0, 5).items
    assert [(i.post_id, i.author_id, i.score) for i in items] == [(1, 11, 4.0), (2, 12, 2.0)]  # 2 and 3 tie: 2 first
    corpus = stats.rename(columns={"post_author_id": "author_id"})
    engagement = {p.post_id: p.engagement for p in popular_posts(corpus)}
    full = PopularRecommender.from_parquet(path).recommend(0, 5).items
    assert {i.post_id: i.score for i in full} == engagement == {1: 4.0, 2: 2.0, 3: 2.0, 4: 0.0}
