"""The fake pipeline (serving/fake.py): the production stages over a generated catalogue, no DVC run, for wiring tests.

The slates of untrained models are arbitrary; what is asserted is the wiring: the stage order, every eligibility
rule, the fallbacks, and that the scores served are the one scoring rule applied to the ranker's predictions.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from features.catalog import View
from features.online import FeatureStoreUnavailable, MemoryBackend
from serving.fake import FakeCatalogue, fake_recommender
from serving.recommender_pipeline import PipelineRecommender
from serving.scorers.weighted import ScoringWeights, blend_table
from serving.types import ActionRow, ActionTable

K = 10
ORDER = [
    "UserFeaturesHydrator",
    "UserGraphHydrator",
    "InNetworkSource",
    "TwoTowerSource",
    "PostFeaturesHydrator",
    "DropDuplicatesFilter",
    "CoreDataFilter",
    "AgeFilter",
    "SelfPostFilter",
    "PreviouslySeenFilter",
    "AuthorSocialgraphFilter",
    "RankerScorer",
    "WeightedScorer",
    "AuthorDiversityScorer",
    "OutOfNetworkScorer",
    "TopKSelector",
    "AuthorCapFilter",
]


@pytest.fixture(scope="module")
def fake() -> tuple[PipelineRecommender, MemoryBackend]:
    return fake_recommender()


def test_the_same_seed_builds_the_same_pipeline() -> None:
    a, _ = fake_recommender(FakeCatalogue(seed=3))
    b, _ = fake_recommender(FakeCatalogue(seed=3))
    c, _ = fake_recommender(FakeCatalogue(seed=4))
    slate = [i.post_id for i in a.recommend(2, K).items]
    assert slate == [i.post_id for i in b.recommend(2, K).items]
    assert slate != [i.post_id for i in c.recommend(2, K).items]


@pytest.mark.parametrize("user", [1, 7, 23])
def test_a_slate_runs_every_stage_in_order_and_follows_every_rule(
    fake: tuple[PipelineRecommender, MemoryBackend], user: int
) -> None:
    rec, store = fake
    out = rec.recommend(user, K)
    assert not out.degraded and out.fallback == ""
    names = [s["name"] for s in out.stages]
    assert [n for n in names if n in ORDER] == [n for n in ORDER if n in names], "the production order"
    optional = {"AuthorSocialgraphFilter"}  # enabled only for a user who blocks or mutes someone
    assert set(ORDER) - optional <= set(names)
    assert all("error" not in s for s in out.stages)
    assert len(out.items) == K and len({i.post_id for i in out.items}) == K
    assert all(i.author_id != user for i in out.items), "no self posts"
    assert max(Counter(i.author_id for i in out.items).values()) <= rec.cfg.author_cap
    followees = set(store.rows["user_graph"][user]["followee_ids"])
    assert all(i.in_network == (i.author_id in followees) for i in out.items)
    scores = [i.score for i in out.items]
    assert scores == sorted(scores, reverse=True)
    assert out.as_of is not None  # a fixed-time world says which time it served
    assert out.features["hist_length"] == FakeCatalogue().history


def test_authors_blocked_in_the_store_are_not_served(fake: tuple[PipelineRecommender, MemoryBackend]) -> None:
    rec, store = fake
    user = 5
    authors = list(dict.fromkeys(i.author_id for i in rec.recommend(user, K).items))
    graph = store.rows["user_graph"][user]
    store.rows["user_graph"][user] = {
        **graph,
        "blocked_author_ids": tuple(authors[:2]),
        "muted_author_ids": (authors[2],),
    }
    try:
        after = rec.recommend(user, K)
    finally:
        store.rows["user_graph"][user] = graph
    assert after.items and not {i.author_id for i in after.items} & set(authors[:3])
    social = next(s for s in after.stages if s["name"] == "AuthorSocialgraphFilter")
    assert social["in"] > social["out"]


def test_an_unknown_user_gets_a_ranked_cold_start_slate(fake: tuple[PipelineRecommender, MemoryBackend]) -> None:
    rec, _ = fake
    out = rec.recommend(10_000, K)
    assert out.fallback == "cold_start" and not out.degraded
    assert {i.source for i in out.items} == {"PopularSource"} and len(out.items) == K
    assert all(i.actions for i in out.items), "ranked by the full pipeline, not by popularity alone"


class _Down(MemoryBackend):
    def read(self, view: View, ids: Sequence[int]) -> list[dict[str, Any] | None]:
        raise FeatureStoreUnavailable("the store is down")


def test_a_store_that_is_down_gives_a_degraded_popular_slate() -> None:
    rec, store = fake_recommender()
    rec.online.backend = _Down(store.rows)
    out = rec.recommend(3, K)
    assert out.degraded and out.fallback == "popular"
    assert {i.source for i in out.items} == {"PopularSource"} and len(out.items) == K
    scores = [i.score for i in out.items]
    assert scores == sorted(scores, reverse=True) and scores[0] > 0


def test_served_scores_are_the_one_blend_of_the_ranker_predictions(
    fake: tuple[PipelineRecommender, MemoryBackend],
) -> None:
    rec, _ = fake
    ranked = rec.rank(4, [11, 12, 13, 14])
    assert [i.post_id for i in ranked.items] == [11, 12, 13, 14]
    for item in ranked.items:
        names = tuple(item.actions)
        table_row = np.array([[item.actions[n] for n in names]])
        expected = blend_table(ActionTable(names, table_row), np.zeros(1, dtype=np.int64), ScoringWeights())[0]
        assert item.score == pytest.approx(expected, rel=1e-12)
    assert all(isinstance(v, float) for i in ranked.items for v in i.actions.values())
    assert not any(isinstance(i.actions, ActionRow) for i in ranked.items)  # responses carry plain values


def test_an_exploring_variant_serves_draws_with_propensities() -> None:
    rec, _ = fake_recommender(explore_slots=3, explore_seed=0)
    out = rec.recommend(2, K)
    assert len(out.items) == K
    assert all(i.propensity is not None and 0 < i.propensity <= 1 for i in out.items)
    assert all(i.propensity == 1.0 for i in out.items[: K - 3]), "the ranked top is kept"


def test_a_bad_config_value_is_one_line_naming_the_key() -> None:
    from core.errors import UserError

    with pytest.raises(UserError, match=r"^recommender\.top_k: input should be greater than or equal to 1, got 0$"):
        fake_recommender(top_k=0)


def test_the_ann_source_drops_aged_posts_itself_and_the_slates_stay_the_same() -> None:
    """With the post catalogue the two-tower source drops posts past max_age (the age filter's rule) before they are
    hydrated, and hands the rest on with their author and time; what is served is what the age filter alone gave."""
    from serving.sources.two_tower import TwoTowerSource

    rec, _ = fake_recommender(max_age_hours=20)  # the catalogue's posts span 40 hours: about half are aged
    source = next(s for s in rec.pipeline.sources if isinstance(s, TwoTowerSource))
    assert source.catalog is not None and source.max_age is not None
    for user in (1, 7, 23):
        with_catalog = rec.recommend(user, K)
        fetched = {s["name"]: s for s in with_catalog.stages}
        source.catalog = None  # ids only: the hydrator fills author and time, the age filter drops the aged
        without = rec.recommend(user, K)
        source.catalog = rec.catalog
        assert [(i.post_id, i.score) for i in with_catalog.items] == [(i.post_id, i.score) for i in without.items]
        before = {s["name"]: s for s in without.stages}
        assert fetched["TwoTowerSource"]["out"] < before["TwoTowerSource"]["out"]  # aged posts never fetched
        assert fetched["AgeFilter"]["out"] == before["AgeFilter"]["out"]  # the same candidates past the age filter


def test_the_post_catalogue_looks_up_authors_and_times_by_post_id() -> None:
    import pandas as pd

    from serving.sources.two_tower import PostCatalog

    corpus = pd.DataFrame({"post_id": [30, 10, 20, 40], "author_id": [3, 1, 2, 4],
                           "post_created_at_ms": [300.0, 100.0, 200.0, float("nan")]})  # fmt: skip
    catalog = PostCatalog.of_corpus(corpus)
    found, authors, created = catalog.lookup(np.array([20, 40, 10, 99, 5, 30]))
    assert found.tolist() == [True, False, True, False, False, True]  # 40: no known time; 99, 5: unknown
    assert authors.tolist() == [2, 0, 1, 0, 0, 3] and created.tolist() == [200, 0, 100, 0, 0, 300]
    empty = PostCatalog.of_corpus(corpus.iloc[:0])
    assert not empty.lookup(np.array([1, 2]))[0].any()
