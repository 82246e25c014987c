"""The pipeline components of the real recommender that need no models or store: author cap, core-data filter,
the popular source and the cold-start rule of a hydrated query."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pandas as pd

from serving.filters.author_cap import AuthorCapFilter
from serving.filters.core_data import CoreDataFilter
from serving.sources.popular import PopularPost, PopularSource, popular_posts
from serving.types import Candidate, Query

NOW = datetime(2026, 1, 5, 12, tzinfo=UTC)
Q = Query(user_id=1, now=NOW)


def _ms(hours_ago: float) -> int:
    return int((NOW - timedelta(hours=hours_ago)).timestamp() * 1000)


def _c(post_id: int, author_id: int) -> Candidate:
    return Candidate(post_id, author_id, _ms(1), "test")


def test_author_cap_keeps_each_authors_best_posts_in_slate_order() -> None:
    slate = [_c(1, 7), _c(2, 7), _c(3, 8), _c(4, 7), _c(5, 8), _c(6, 8), _c(7, 9)]
    out = AuthorCapFilter(max_per_author=2).filter(Q, slate)
    assert [c.post_id for c in out.kept] == [1, 2, 3, 5, 7]
    assert [c.post_id for c in out.removed] == [4, 6]
    assert [c.post_id for c in AuthorCapFilter(1).filter(Q, slate).kept] == [1, 3, 7]


def test_core_data_filter_drops_candidates_without_an_author() -> None:
    out = CoreDataFilter().filter(Q, [_c(1, 0), _c(2, 5)])
    assert [c.post_id for c in out.kept] == [2] and [c.post_id for c in out.removed] == [1]


def test_popular_posts_rank_by_positive_engagement_then_freshness() -> None:
    corpus = pd.DataFrame(
        {
            "post_id": [1, 2, 3, 4],
            "author_id": [10, 20, 30, 40],
            "post_created_at_ms": [_ms(5), _ms(1), _ms(2), _ms(3)],
            "post_click_count": [5, 1, 1, 0],
            "post_like_count": [0, 1, 1, 0],
            "post_report_count": [0, 0, 0, 100],  # negative actions are not popularity
        }
    )
    ranked = popular_posts(corpus)
    assert [p.post_id for p in ranked] == [1, 2, 3, 4]  # 5, then 2 and 2 (newer first), then 0
    assert ranked[0] == PopularPost(1, 10, _ms(5), 5.0)


def test_popular_source_serves_fresh_posts_only_and_only_when_asked() -> None:
    posts = [PopularPost(1, 10, _ms(60), 9.0), PopularPost(2, 20, _ms(2), 5.0), PopularPost(3, 30, _ms(1), 4.0)]
    posts.append(PopularPost(4, 40, _ms(-1), 3.0))  # dated after now: a clock or data error
    posts.append(PopularPost(5, 0, 0, 1.0))  # from a list given at load: time unknown, kept
    source = PopularSource(posts, max_results=10, max_age=timedelta(hours=48))
    known = replace(Q, user_stats={}, history={})
    unknown = replace(Q, user_stats={}, history={}, missing_views=frozenset({"user_stats", "user_history"}))
    assert not source.enabled(Q) and not source.enabled(known) and source.enabled(unknown)
    assert unknown.cold_start and not known.cold_start and not Q.cold_start
    got = source.fetch(unknown)
    assert [(c.post_id, c.score, c.source) for c in got] == [
        (2, 5.0, "PopularSource"),
        (3, 4.0, "PopularSource"),
        (5, 1.0, "PopularSource"),
    ]
    assert [c.post_id for c in PopularSource(posts, max_results=1, always=True).fetch(Q)] == [2]


def test_ranker_inputs_from_shared_columns_equal_the_per_candidate_path() -> None:
    import numpy as np
    import torch

    from models.ranker.model import Ranker, RankerConfig
    from serving.hydrators.post_features import FeatureRow, FeatureTable
    from serving.scorers.ranker import candidate_batch

    model = Ranker(RankerConfig.preset("nano"))
    n = 5
    rng = np.random.default_rng(0)
    post = {
        "post_impressions": rng.integers(0, 100, n),
        "post_click_rate": rng.random(n),
        "post_topic": np.array(["a", "b", "a", "c", "b"], dtype=object),
        "post_created_at_ms": np.full(n, _ms(5)),
    }
    author = {"author_click_rate": rng.random(n), "author_follower_count": rng.integers(0, 9, n)}
    post_missing, author_missing = np.array([0, 0, 1, 0, 0], bool), np.array([0, 1, 0, 0, 0], bool)
    table = FeatureTable(post, author, post_missing, author_missing)
    viewed = [replace(_c(10 + i, 100 + i), features=FeatureRow(table, i)) for i in range(n)]
    plain = [replace(_c(10 + i, 100 + i), features=dict(FeatureRow(table, i))) for i in range(n)]
    assert "post_topic" not in plain[2].features and "author_click_rate" not in plain[1].features
    query = Query(user_id=1, now=NOW)
    fast, slow = candidate_batch(model, query, viewed), candidate_batch(model, query, plain)
    for name in ("dense", "attributes", "age_ms", "post_ids", "in_network"):
        assert torch.equal(getattr(fast, name), getattr(slow, name)), name
    assert fast.dense.abs().sum() > 0 and (fast.attributes[0, :, 0] != 0).sum() == 4  # one post row missing


def test_user_hydrators_fill_the_readers_defaults_for_an_unknown_user() -> None:
    from features.online import OnlineFeatures
    from serving.hydrators.user_features import HISTORY_ARRAYS, UserFeaturesHydrator
    from serving.hydrators.user_graph import UserGraphHydrator

    class NoRows:
        def read(self, view: object, ids: list[int]) -> list[None]:
            return [None] * len(ids)

    online = OnlineFeatures(NoRows())  # type: ignore[arg-type]
    user = online.user(Q.user_id)
    query = UserGraphHydrator(online).hydrate(UserFeaturesHydrator(online, post_attributes=()).hydrate(Q))
    assert query.user_stats == user.stats
    assert query.history == {name: tuple(user.history[name]) for name in HISTORY_ARRAYS}
    assert query.followee_ids == query.blocked_author_ids == query.muted_author_ids == frozenset()
    assert query.missing_views == {"user_stats", "user_history", "user_graph"} == set(user.missing)


def test_the_fallback_filters_are_the_pipelines_without_core_data() -> None:
    from pathlib import Path

    from serving.recommender_config import RecommenderConfig
    from serving.recommender_pipeline import eligibility_filters

    cfg = RecommenderConfig(retrieval_model=Path("r"), index=Path("i"), ranker=Path("k"), max_age_hours=12.0)
    names = [f.name for f in eligibility_filters(cfg, hydrated=True)]
    assert names == [
        "DropDuplicatesFilter",
        "CoreDataFilter",
        "AgeFilter",
        "SelfPostFilter",
        "PreviouslySeenFilter",
        "AuthorSocialgraphFilter",
    ]
    fallback = eligibility_filters(cfg, hydrated=False)
    assert [f.name for f in fallback] == [n for n in names if n != "CoreDataFilter"]
    assert fallback[1].max_age == timedelta(hours=12)  # type: ignore[attr-defined]
