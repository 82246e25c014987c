"""Each filter keeps and removes exactly what it should; kept + removed is always the input."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from serving.filters.age import AgeFilter
from serving.filters.author_socialgraph import AuthorSocialgraphFilter
from serving.filters.drop_duplicates import DropDuplicatesFilter
from serving.filters.previously_seen import PreviouslySeenFilter
from serving.filters.self_post import SelfPostFilter
from serving.types import Candidate, Query

NOW = datetime(2026, 1, 5, 12, tzinfo=UTC)


def _c(post_id: int, author_id: int = 100, hours_old: float = 1.0) -> Candidate:
    created = int((NOW - timedelta(hours=hours_old)).timestamp() * 1000)
    return Candidate(post_id, author_id, created, "test")


def _ids(cands: list[Candidate]) -> list[int]:
    return [c.post_id for c in cands]


def test_drop_duplicates_keeps_first_occurrence() -> None:
    first, dup = _c(1), _c(1)
    result = DropDuplicatesFilter().filter(Query(1, NOW), [first, _c(2), dup])
    assert result.kept[0] is first and _ids(result.kept) == [1, 2] and result.removed == [dup]


def test_self_posts_removed() -> None:
    result = SelfPostFilter().filter(Query(7, NOW), [_c(1, author_id=7), _c(2, author_id=8)])
    assert (_ids(result.kept), _ids(result.removed)) == ([2], [1])


def test_age_filter_boundaries() -> None:
    cands = [_c(1, hours_old=47.99), _c(2, hours_old=48.0), _c(3, hours_old=48.01), _c(4, hours_old=-0.1)]
    result = AgeFilter().filter(Query(1, NOW), cands)
    assert (_ids(result.kept), _ids(result.removed)) == ([1, 2], [3, 4])
    assert _ids(AgeFilter(max_age=timedelta(hours=1)).filter(Query(1, NOW), cands).kept) == []


def test_previously_seen_drops_the_seen_ids() -> None:
    f = PreviouslySeenFilter()
    result = f.filter(Query(1, NOW, seen_ids=frozenset({2, 3})), [_c(1), _c(2), _c(3)])
    assert (_ids(result.kept), _ids(result.removed)) == ([1], [2, 3])
    assert _ids(f.filter(Query(9, NOW), [_c(3)]).kept) == [3]


def test_blocked_and_muted_authors_removed() -> None:
    query = Query(1, NOW, blocked_author_ids=frozenset({5}), muted_author_ids=frozenset({6}))
    result = AuthorSocialgraphFilter().filter(query, [_c(1, 5), _c(2, 6), _c(3, 7)])
    assert (_ids(result.kept), _ids(result.removed)) == ([3], [1, 2])
    assert not AuthorSocialgraphFilter().enabled(Query(1, NOW))


@pytest.mark.parametrize(
    "f", [DropDuplicatesFilter(), SelfPostFilter(), AgeFilter(), PreviouslySeenFilter(), AuthorSocialgraphFilter()]
)
def test_kept_plus_removed_is_the_input(f) -> None:
    cands = [_c(1, 1), _c(1, 2, 50.0), _c(2, 5), _c(3, 7, 0.5)]
    query = Query(1, NOW, seen_ids=frozenset({3}), blocked_author_ids=frozenset({5}))
    result = f.filter(query, cands)
    assert sorted(map(id, result.kept + result.removed)) == sorted(map(id, cands))
