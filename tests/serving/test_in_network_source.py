"""The in-network source: followees only, newest first, age cut-off, per-author and total caps."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from serving.recent_posts import RecentPost, RecentPostStore
from serving.sources.in_network import InNetworkSource
from serving.types import Query

NOW = datetime(2026, 1, 5, 12, tzinfo=UTC)


def _ms(hours_ago: float) -> int:
    return int((NOW - timedelta(hours=hours_ago)).timestamp() * 1000)


def _store() -> RecentPostStore:
    store = RecentPostStore()
    store.extend(
        [
            RecentPost(_ms(1), 11, author_id=1),
            RecentPost(_ms(5), 12, author_id=1),
            RecentPost(_ms(47), 13, author_id=1),
            RecentPost(_ms(49), 14, author_id=1),  # older than 48 h
            RecentPost(_ms(2), 21, author_id=2),
            RecentPost(_ms(3), 31, author_id=3),  # not followed
            RecentPost(_ms(-1), 15, author_id=1),  # created after the request time
        ]
    )
    return store


def test_followed_authors_recent_posts_newest_first() -> None:
    got = InNetworkSource(_store()).fetch(Query(user_id=9, now=NOW, followee_ids=frozenset({1, 2})))
    assert [c.post_id for c in got] == [11, 21, 12, 13]
    assert all(c.in_network and c.source == "InNetworkSource" for c in got)


def test_per_author_cap_keeps_each_authors_newest() -> None:
    got = InNetworkSource(_store(), per_author_cap=1).fetch(Query(user_id=9, now=NOW, followee_ids=frozenset({1, 2})))
    assert [c.post_id for c in got] == [11, 21]


def test_total_cap_and_age_are_configurable() -> None:
    source = InNetworkSource(_store(), max_age=timedelta(hours=4), max_results=1)
    assert [c.post_id for c in source.fetch(Query(user_id=9, now=NOW, followee_ids=frozenset({1, 2})))] == [11]


def test_no_followees_means_disabled_and_empty() -> None:
    source, query = InNetworkSource(_store()), Query(user_id=9, now=NOW)
    assert not source.enabled(query) and source.fetch(query) == []


def test_trim_drops_posts_past_retention() -> None:
    store = _store()
    assert store.trim(_ms(0)) == 1 and len(store) == 6
    assert [p.post_id for p in store.newest(1, 0, 2**62, 10)] == [15, 11, 12, 13]
