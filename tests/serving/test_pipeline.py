"""The pipeline runner with fakes: stage order, fail-open filters, hydrator/scorer shape rule, counts, side effects."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from serving.filters import FilterResult
from serving.filters.age import AgeFilter
from serving.filters.drop_duplicates import DropDuplicatesFilter
from serving.filters.self_post import SelfPostFilter
from serving.pipeline import Pipeline
from serving.recent_posts import RecentPost, RecentPostStore
from serving.scorers.author_diversity import AuthorDiversityScorer
from serving.scorers.weighted import ScoringWeights, WeightedScorer
from serving.selectors.top_k import TopKSelector
from serving.sources.in_network import InNetworkSource
from serving.types import Candidate, Query

NOW = datetime(2026, 1, 5, 12, tzinfo=UTC)


def _ms(hours_ago: float) -> int:
    return int((NOW - timedelta(hours=hours_ago)).timestamp() * 1000)


class FollowsHydrator:
    name = "FollowsHydrator"

    def enabled(self, query: Query) -> bool:
        return True

    def hydrate(self, query: Query) -> Query:
        return replace(query, followee_ids=frozenset({1, 2}))


class ListSource:
    name = "ListSource"

    def __init__(self, cands: list[Candidate]) -> None:
        self.cands = cands

    def enabled(self, query: Query) -> bool:
        return True

    def fetch(self, query: Query) -> list[Candidate]:
        return [replace(c) for c in self.cands]


class FakeRanker:
    """Click probability = post_id / 100: deterministic, so the expected order is known."""

    name = "FakeRanker"

    def enabled(self, query: Query) -> bool:
        return True

    def score(self, query: Query, candidates: list[Candidate]) -> list[Candidate]:
        for c in candidates:
            c.actions = {"click": c.post_id / 100}
        return candidates


class Broken:
    name = "Broken"

    def enabled(self, query: Query) -> bool:
        return True

    def filter(self, query: Query, candidates: list[Candidate]) -> FilterResult:
        raise RuntimeError("store down")

    def score(self, query: Query, candidates: list[Candidate]) -> list[Candidate]:
        return candidates[:1]  # breaks the one-output-per-input rule


def fake_pipeline(extra_filters=(), extra_scorers=()) -> Pipeline:
    store = RecentPostStore()
    store.extend([RecentPost(_ms(1), 11, 1), RecentPost(_ms(2), 12, 1), RecentPost(_ms(3), 21, 2)])
    store.extend([RecentPost(_ms(60), 13, 1)])  # too old
    oon = [
        Candidate(31, 3, _ms(1), "ListSource"),
        Candidate(11, 1, _ms(1), "ListSource"),
        Candidate(41, 9, _ms(1), "x"),
    ]
    return Pipeline(
        query_hydrators=[FollowsHydrator()],
        sources=[InNetworkSource(store), ListSource(oon)],
        filters=[DropDuplicatesFilter(), SelfPostFilter(), AgeFilter(), *extra_filters],
        scorers=[FakeRanker(), WeightedScorer(ScoringWeights({"click": 1.0})), AuthorDiversityScorer(), *extra_scorers],
        selector=TopKSelector(k=50),
    )


def test_full_pipeline_with_fakes_orders_by_blended_diversified_score() -> None:
    result = fake_pipeline().run(Query(user_id=9, now=NOW, k=3))
    # Post 41 is the viewer's own. Blends: 31 -> .311, 21 -> .211, 12 -> .121, 11 -> .111 x 0.625 (author 1's second).
    assert [c.post_id for c in result.selected] == [31, 21, 12]
    assert not result.degraded
    stages = [(s.stage, s.component, s.count_in, s.count_out) for s in result.stats]
    assert ("source", "InNetworkSource", 0, 3) in stages and ("source", "ListSource", 0, 3) in stages
    assert ("filter", "DropDuplicatesFilter", 6, 5) in stages


def test_self_posts_are_removed_before_scoring() -> None:
    result = fake_pipeline().run(Query(user_id=9, now=NOW, k=10))
    assert [c.post_id for c in result.selected] == [31, 21, 12, 11]
    assert ("filter", "SelfPostFilter", 5, 4) in [(s.stage, s.component, s.count_in, s.count_out) for s in result.stats]


def test_failing_filter_fails_open_and_marks_the_response_degraded() -> None:
    result = fake_pipeline(extra_filters=[Broken()]).run(Query(user_id=1234, now=NOW, k=10))
    assert result.degraded
    assert [c.post_id for c in result.selected][:2] == [41, 31]  # the candidates went on past the broken filter
    failed = [s for s in result.stats if s.error]
    assert failed[0].component == "Broken" and "store down" in failed[0].error


def test_scorer_breaking_the_shape_rule_is_ignored() -> None:
    result = fake_pipeline(extra_scorers=[Broken()]).run(Query(user_id=1234, now=NOW, k=10))
    assert result.degraded and len(result.selected) == 5
