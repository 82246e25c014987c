"""Live writes (features/live.py) on a real Feast repo with a SQLite and a Redis online store, and the applied-event
ids on a real SQLite file and a real Redis."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from features.live import REDIS_PREFIX, EventsSettings, Follow, LiveStore, NewPost, RedisSeen, SqliteSeen, open_seen
from features.online import OnlineFeatures
from features.store import Engagement, StoreConfig, apply, materialize, online_backend
from tests.features.test_feature_store import _project, _redis_available
from tests.features.tiny import ts

REDIS_DB = 13  # a database of its own, flushed by these tests
HOUR_MS = 3_600_000


# Applied event ids ---------------------------------------------------------------------------------------------------


def check_seen(store: SqliteSeen | RedisSeen) -> None:
    t0 = 1_767_000_000_000
    assert store.unseen(["a", "b", "a"], t0) == {"a", "b"}
    store.mark(["a"], t0)
    assert store.unseen(["a", "b"], t0 + 1) == {"b"}
    store.mark(["b"], t0 + HOUR_MS)
    assert store.unseen(["a", "b", "c"], t0 + HOUR_MS) == {"c"}


def test_sqlite_seen_ids_and_their_ttl(tmp_path: Path) -> None:
    store = SqliteSeen(tmp_path / "events.db", ttl_s=2 * 3600)
    check_seen(store)
    t0 = 1_767_000_000_000
    assert store.unseen(["a", "b"], t0 + 2 * HOUR_MS) == {"a"}  # a's TTL has passed, b's not
    again = SqliteSeen(tmp_path / "events.db", ttl_s=2 * 3600)  # kept on disk: a restart still knows them
    assert again.unseen(["b"], t0 + HOUR_MS) == set()


def test_redis_seen_ids_expire_with_their_ttl() -> None:
    if not _redis_available():
        if os.environ.get("CI") == "true":
            pytest.fail("no Redis on 127.0.0.1:6379 (CI runs Redis: its absence is a failure, not a skip)")
        pytest.skip("no Redis on 127.0.0.1:6379")
    import redis

    client = redis.Redis(db=REDIS_DB)
    client.flushdb()
    check_seen(RedisSeen(f"127.0.0.1:6379,db={REDIS_DB}", ttl_s=2 * 3600))
    assert 0 < client.pttl(f"{REDIS_PREFIX}a") <= 2 * HOUR_MS
    client.flushdb()


def test_an_unreachable_seen_store_fails_open() -> None:
    store = RedisSeen("127.0.0.1:1", ttl_s=60, timeout_s=0.2)  # nothing listens on port 1
    store.mark(["a"], 0)  # logged, not raised
    assert store.unseen(["a"], 0) == {"a"}  # applied rather than refused


def test_open_seen_follows_the_settings(tmp_path: Path) -> None:
    assert open_seen(EventsSettings()) is None  # off by default
    path = tmp_path / "new" / "events.db"
    assert isinstance(open_seen(EventsSettings(store="sqlite", seen_path=path)), SqliteSeen) and path.is_file()
    with pytest.raises(ValueError, match="seen_ttl_s"):
        EventsSettings(store="sqlite", seen_ttl_s=0)
    with pytest.raises(ValueError, match="unknown"):
        EventsSettings(store="sqlite", unknown=1)  # type: ignore[call-arg]


# Writes through Feast ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def live(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveStore]:
    redis_address = f"127.0.0.1:6379,db={REDIS_DB}"
    if request.param == "redis":
        if not _redis_available():
            if os.environ.get("CI"):
                pytest.fail("Redis is not running on 127.0.0.1:6379 in CI")
            pytest.skip("Redis is not running on 127.0.0.1:6379 (not CI)")
        import redis

        redis.Redis(db=REDIS_DB).flushdb()
    root = tmp_path_factory.mktemp(f"live-{request.param}")
    _project(root)
    cfg = StoreConfig(repo=root / "features" / "repo", online_store=request.param, redis=redis_address)
    apply(cfg)
    materialize(cfg, end=ts(4))
    yield LiveStore(cfg)
    if request.param == "redis":
        import redis

        redis.Redis(db=REDIS_DB).flushdb()


def test_follows_posts_and_engagements_are_in_the_next_read(live: LiveStore) -> None:
    reader = OnlineFeatures(online_backend(live.cfg))
    graph = reader.user(1).graph
    live.add_follows([Follow(1, 77, ts(4, 1)), Follow(1, 78, ts(4, 1)), Follow(1, 77, ts(4, 2))])
    after = reader.user(1).graph
    assert list(after["followee_ids"]) == [*graph["followee_ids"], 77, 78]  # once each, in order
    assert list(after["blocked_author_ids"]) == list(graph["blocked_author_ids"])  # the rest of the row is kept

    created = int(datetime(2026, 1, 4, 2, tzinfo=UTC).timestamp() * 1000)
    live.add_posts([NewPost(5000, 10, created, 3, "video"), NewPost(5001, 999, created, 1, "text")])
    rows = reader.candidates([5000, 5001])
    assert not rows.post_missing.any()
    assert rows.author_ids.tolist() == [10, 999]
    assert rows.post["post_created_at_ms"].tolist() == [created, created]
    assert rows.post["post_topic"].tolist() == [3, 1] and rows.post["post_media_type"].tolist() == ["video", "text"]
    assert rows.post["post_impressions"].tolist() == [0, 0]
    author = reader.candidates([5000]).author
    assert rows.post["post_click_rate"][0] == pytest.approx(author["author_click_rate"][0])  # the author's rate
    assert rows.post["post_click_rate"][1] == 0.0  # an author the store does not hold

    before = list(reader.user(2).history["hist_post_ids"])
    # An engagement older than the row the store holds still lands (Redis keeps only newer rows).
    live.push_engagements([Engagement(2, 5000, 10, 0b1, 0, ts(1))])
    assert list(reader.user(2).history["hist_post_ids"]) == [*before, 5000]
