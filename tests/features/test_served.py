"""The served sets behind a fresh feed (features/served.py), on a real SQLite file and a real Redis."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from features.served import REDIS_PREFIX, FreshFeedSettings, RedisServed, SqliteServed, open_served

HOUR_MS = 3_600_000


def _redis_available() -> bool:
    import redis

    try:
        return bool(redis.Redis(socket_connect_timeout=0.5).ping())
    except redis.ConnectionError:
        return False


def check_window(store: SqliteServed | RedisServed) -> None:
    t0 = 1_767_000_000_000
    store.add(1, [10, 11], t0)
    store.add(1, [12], t0 + HOUR_MS)
    store.add(2, [99], t0)
    store.add(1, [], t0)  # an empty slate records nothing
    assert store.recent(1, t0 + HOUR_MS) == {10, 11, 12}
    assert store.recent(2, t0 + HOUR_MS) == {99}  # per user
    assert store.recent(3, t0) == frozenset()
    assert store.recent(1, t0 + 2 * HOUR_MS) == {12}  # the TTL (2 h) has passed for 10 and 11
    assert store.recent(1, t0 + 4 * HOUR_MS) == frozenset()


def test_sqlite_served_keeps_each_users_posts_for_the_ttl(tmp_path: Path) -> None:
    check_window(SqliteServed(tmp_path / "served.db", ttl_s=2 * 3600))


def test_sqlite_prunes_expired_rows(tmp_path: Path) -> None:
    store = SqliteServed(tmp_path / "served.db", ttl_s=3600, prune_every=2)
    store.add(1, [1, 2, 3], 0)
    store.add(1, [4], 10 * HOUR_MS)  # the second add prunes what expired before it
    assert store.db.execute("SELECT post_id FROM ember_served").fetchall() == [(4,)]


def test_redis_served_keeps_each_users_posts_for_the_ttl() -> None:
    if not _redis_available():
        if os.environ.get("CI") == "true":
            pytest.fail("no Redis on 127.0.0.1:6379 (CI runs Redis: its absence is a failure, not a skip)")
        pytest.skip("no Redis on 127.0.0.1:6379")
    import redis

    client = redis.Redis(db=12)
    client.flushdb()
    store = RedisServed("127.0.0.1:6379,db=12", ttl_s=2 * 3600)
    check_window(store)
    assert 0 < client.pttl(f"{REDIS_PREFIX}1") <= 2 * HOUR_MS  # the key expires with its TTL
    client.flushdb()


def test_an_unreachable_store_fails_open(tmp_path: Path) -> None:
    store = RedisServed("127.0.0.1:1", ttl_s=60, timeout_s=0.2)  # nothing listens on port 1
    store.add(1, [5], 0)  # logged, not raised
    assert store.recent(1, 0) == frozenset()


def test_open_served_follows_the_settings(tmp_path: Path) -> None:
    assert open_served(FreshFeedSettings()) is None  # off by default
    path = tmp_path / "new" / "served.db"
    store = open_served(FreshFeedSettings(store="sqlite", sqlite_path=path))
    assert isinstance(store, SqliteServed) and path.is_file()
    with pytest.raises(ValueError, match="ttl_s"):
        FreshFeedSettings(store="sqlite", ttl_s=0)
