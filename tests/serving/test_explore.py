"""The exploring selectors: Plackett-Luce slates and epsilon slots, whose logged propensities are the policy's real
probabilities."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime

import numpy as np
import pytest

from core.errors import UserError
from serving.pipeline import Pipeline
from serving.selectors.explore import PlackettLuceExplorer, SlotExplorer, plackett_luce, standardised
from serving.selectors.top_k import TopKSelector
from serving.types import Candidate, Query


def exact_marginals(logits: np.ndarray, k: int) -> np.ndarray:
    """(P, k) slot marginals of a Plackett-Luce policy by enumerating every ordered slate."""
    w = np.exp(logits - logits.max())
    out = np.zeros((len(w), k))
    for slate in itertools.permutations(range(len(w)), k):
        left, p = w.sum(), 1.0
        for a in slate:
            p *= w[a] / left
            left -= w[a]
        for j, a in enumerate(slate):
            out[a, j] += p
    return out


def test_sampled_marginals_match_the_exact_ones() -> None:
    logits = np.array([2.0, 1.0, 0.5, 0.0, -1.0])
    exact = exact_marginals(logits, 3)
    _, sampled, inclusion = plackett_luce(logits, 3, 200_000, np.random.default_rng(0))
    np.testing.assert_allclose(sampled[:, 0], exact[:, 0], atol=1e-12)  # slot 0 is the softmax itself
    np.testing.assert_allclose(sampled, exact, atol=0.005)
    np.testing.assert_allclose(inclusion, exact.sum(1), atol=0.006)
    assert inclusion.sum() == pytest.approx(3.0, abs=1e-9)


def test_served_slates_occur_as_often_as_their_logged_propensities_say() -> None:
    # What the log claims is checked against what was served: 4,000 requests of one pool.
    pool = [Candidate(post_id=p, author_id=p, created_at_ms=0, source="s", score=float(s))
            for p, s in zip(range(1, 7), [3.0, 2.5, 2.0, 1.0, 0.5, 0.0], strict=True)]  # fmt: skip
    explorer = PlackettLuceExplorer(temperature=0.7, samples=2000, seed=1)
    query = Query(user_id=5, now=datetime(2026, 1, 9, tzinfo=UTC), k=3)
    counts: dict[tuple[int, int], int] = {}
    logged: dict[tuple[int, int], list[float]] = {}
    n = 4000
    for _ in range(n):
        slate = explorer.select(query, pool)
        assert len(slate) == 3 and len({c.post_id for c in slate}) == 3
        for j, c in enumerate(slate):
            assert c.propensity is not None and c.inclusion is not None
            assert 0.0 < c.propensity <= c.inclusion <= 1.0
            counts[(c.post_id, j)] = counts.get((c.post_id, j), 0) + 1
            logged.setdefault((c.post_id, j), []).append(c.propensity)
    exact = exact_marginals(standardised(np.array([c.score for c in pool])) / 0.7, 3)
    for (post, j), m in counts.items():
        p = exact[post - 1, j]
        assert abs(m / n - p) < 4 * np.sqrt(p * (1 - p) / n) + 1e-3, (post, j, m / n, p)
        assert abs(np.mean(logged[(post, j)]) - p) < 0.01, (post, j)


class _Pool:
    name = "Pool"

    def __init__(self, candidates: list[Candidate]) -> None:
        self.candidates = candidates

    def enabled(self, query: Query) -> bool:
        return True

    def fetch(self, query: Query) -> list[Candidate]:
        return list(self.candidates)


class _Failing(PlackettLuceExplorer):
    def select(self, query: Query, candidates: list[Candidate]) -> list[Candidate]:
        raise RuntimeError("no entropy")


def test_in_the_pipeline_a_cold_temperature_keeps_the_ranked_order_and_a_failure_fails_open() -> None:
    pool = [Candidate(post_id=p, author_id=p, created_at_ms=0, source="s", score=float(10 - p)) for p in range(1, 9)]
    query = Query(user_id=1, now=datetime(2026, 1, 9, tzinfo=UTC), k=4)
    cold = Pipeline(sources=[_Pool(pool)], selector=TopKSelector(8), explorer=PlackettLuceExplorer(0.01, 100, seed=0))
    result = cold.run(query)
    assert [c.post_id for c in result.selected] == [1, 2, 3, 4]
    assert result.selected[0].propensity == pytest.approx(1.0)
    assert [s.stage for s in result.stats][-1] == "explorer" and not result.degraded
    broken = Pipeline(sources=[_Pool(pool)], selector=TopKSelector(8), explorer=_Failing(1.0, 10))
    result = broken.run(query)
    assert [c.post_id for c in result.selected] == [1, 2, 3, 4] and result.degraded
    assert all(c.propensity is None for c in result.selected)  # a deterministic slate claims no propensity
    with pytest.raises(UserError, match="exploration.temperature"):
        PlackettLuceExplorer(temperature=0.0)
    with pytest.raises(UserError, match="exploration.samples"):
        PlackettLuceExplorer(temperature=1.0, samples=0)


def test_seeded_explorers_draw_the_same_slates() -> None:
    pool = [Candidate(post_id=p, author_id=p, created_at_ms=0, source="s", score=float(p % 3)) for p in range(1, 30)]
    query = Query(user_id=9, now=datetime(2026, 1, 9, tzinfo=UTC), k=10)
    a, b = PlackettLuceExplorer(1.0, 500, seed=3), PlackettLuceExplorer(1.0, 500, seed=3)
    first = [[c.post_id for c in a.select(query, pool)] for _ in range(3)]
    assert first == [[c.post_id for c in b.select(query, pool)] for _ in range(3)]
    assert len({tuple(x) for x in first}) > 1  # successive requests draw anew


def test_explored_slots_show_the_rest_of_the_pool_uniformly_below_the_ranked_order() -> None:
    pool = [Candidate(post_id=p, author_id=p, created_at_ms=0, source="s", score=float(20 - p)) for p in range(1, 13)]
    query = Query(user_id=3, now=datetime(2026, 1, 9, tzinfo=UTC), k=5)
    explorer = SlotExplorer(slots=2, seed=0)
    counts = np.zeros(13)
    n = 3000
    for _ in range(n):
        slate = explorer.select(query, pool)
        assert [c.post_id for c in slate[:3]] == [1, 2, 3]  # the ranked slots
        assert all(c.propensity == 1.0 and c.inclusion == 1.0 for c in slate[:3])
        explored = slate[3:]
        assert len(explored) == 2 and len({c.post_id for c in explored}) == 2
        for c in explored:
            assert c.post_id >= 4 and c.rank == c.post_id - 1  # from the rest of the pool, with its ranked place
            assert c.propensity == pytest.approx(1 / 9) and c.inclusion == pytest.approx(2 / 9)
            counts[c.post_id] += 1
    share = counts[4:] / n  # every post of the rest lands in the slate as often as its logged inclusion says
    assert np.all(np.abs(share - 2 / 9) < 4 * np.sqrt(2 / 9 * 7 / 9 / n)), share


def test_slot_exploration_needs_more_pool_than_slate_and_is_reproducible() -> None:
    query = Query(user_id=9, now=datetime(2026, 1, 9, tzinfo=UTC), k=10)
    small = [Candidate(post_id=p, author_id=p, created_at_ms=0, source="s", score=float(-p)) for p in range(1, 9)]
    slate = SlotExplorer(slots=2, seed=1).select(query, small)
    assert [c.post_id for c in slate] == list(range(1, 9)) and all(c.propensity == 1.0 for c in slate)
    pool = [Candidate(post_id=p, author_id=p, created_at_ms=0, source="s", score=float(-p)) for p in range(1, 40)]
    a, b = SlotExplorer(slots=3, seed=4), SlotExplorer(slots=3, seed=4)
    first = [[c.post_id for c in a.select(query, pool)] for _ in range(4)]
    assert first == [[c.post_id for c in b.select(query, pool)] for _ in range(4)]
    assert len({tuple(x) for x in first}) > 1  # successive requests draw anew
    with pytest.raises(UserError, match="^exploration.slots"):
        SlotExplorer(slots=0)
