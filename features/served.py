"""What the service has recently served each user, kept beside the online features.

The service adds every slate it serves and, before the next request of the same user, reads back what it served
within `ttl_s`; those posts join the client's `seen_ids`, so `PreviouslySeenFilter` drops them and a repeated request
gets new posts. Two stores, as for the online features:

- SQLite: table `ember_served(user_id, post_id, ts_ms)` in a file beside the online store's (data/feast/served.db:
  Feast's file stays Feast's), with its own connection; rows older than the TTL are pruned as new ones arrive.
- Redis: one sorted set per user, `ember:served:<user_id>`, member = post id, score = time served (ms); trimmed to the
  TTL on every write and expiring with it.

Both fail open: a store that cannot be reached serves the feed without the filter (logged), never an error.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Literal, Protocol

from pydantic import Field

from core.config import FilePath, StrictConfig
from core.online_store import REDIS_ADDRESS, redis_client

log = logging.getLogger(__name__)
REDIS_PREFIX = "ember:served:"


class FreshFeedSettings(StrictConfig):
    """`fresh_feed:` of the service config. store off = no served-set filtering."""

    store: Literal["off", "sqlite", "redis"] = "off"
    ttl_s: Annotated[float, Field(gt=0)] = 86_400.0  # a post served within this window is not served again
    sqlite_path: FilePath = Path("data/feast/served.db")
    redis: str = REDIS_ADDRESS


class ServedSet(Protocol):
    def recent(self, user_id: int, now_ms: int) -> frozenset[int]:
        """Post ids served to the user within the TTL before now_ms (empty when the store fails)."""
        ...

    def add(self, user_id: int, post_ids: Sequence[int], now_ms: int) -> None:
        """Records a served slate (dropped, with a log line, when the store fails)."""
        ...


class SqliteServed:
    def __init__(self, path: Path, ttl_s: float, prune_every: int = 1000) -> None:
        self.path, self.ttl_ms, self.prune_every = Path(path), int(ttl_s * 1000), prune_every
        self._lock = threading.Lock()
        self._adds = 0
        self.db = sqlite3.connect(self.path, check_same_thread=False, timeout=1.0)
        # WAL without a sync per commit: a served set is a cache, and the request path must not wait on the disk.
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        with self._lock, self.db:
            self.db.execute("CREATE TABLE IF NOT EXISTS ember_served (user_id INTEGER, post_id INTEGER, ts_ms INTEGER)")
            self.db.execute("CREATE INDEX IF NOT EXISTS ember_served_user ON ember_served (user_id, ts_ms)")

    def recent(self, user_id: int, now_ms: int) -> frozenset[int]:
        try:
            with self._lock:
                rows = self.db.execute(
                    "SELECT post_id FROM ember_served WHERE user_id = ? AND ts_ms > ?", (user_id, now_ms - self.ttl_ms)
                ).fetchall()
        except sqlite3.Error as err:
            log.warning("served set %s: read failed (%s); serving without it", self.path, err)
            return frozenset()
        return frozenset(int(r[0]) for r in rows)

    def add(self, user_id: int, post_ids: Sequence[int], now_ms: int) -> None:
        if not post_ids:
            return
        try:
            with self._lock, self.db:
                self.db.executemany(
                    "INSERT INTO ember_served VALUES (?, ?, ?)", [(user_id, int(p), now_ms) for p in post_ids]
                )
                self._adds += 1
                if self._adds % self.prune_every == 0:
                    self.db.execute("DELETE FROM ember_served WHERE ts_ms <= ?", (now_ms - self.ttl_ms,))
        except sqlite3.Error as err:
            log.warning("served set %s: write failed (%s); slate not recorded", self.path, err)


class RedisServed:
    def __init__(self, address: str, ttl_s: float, timeout_s: float = 0.5) -> None:
        self.address, self.ttl_ms = address, int(ttl_s * 1000)
        self.client = redis_client(address, timeout_s)

    def recent(self, user_id: int, now_ms: int) -> frozenset[int]:
        import redis

        try:
            members = self.client.zrangebyscore(f"{REDIS_PREFIX}{user_id}", f"({now_ms - self.ttl_ms}", "+inf")
        except redis.RedisError as err:
            log.warning("served set redis %s: read failed (%s); serving without it", self.address, err)
            return frozenset()
        return frozenset(int(m) for m in members)  # type: ignore[union-attr]

    def add(self, user_id: int, post_ids: Sequence[int], now_ms: int) -> None:
        import redis

        if not post_ids:
            return
        key = f"{REDIS_PREFIX}{user_id}"
        try:
            pipe = self.client.pipeline(transaction=False)
            pipe.zadd(key, {str(int(p)): now_ms for p in post_ids})
            pipe.zremrangebyscore(key, "-inf", now_ms - self.ttl_ms)
            pipe.pexpire(key, self.ttl_ms)
            pipe.execute()
        except redis.RedisError as err:
            log.warning("served set redis %s: write failed (%s); slate not recorded", self.address, err)


def open_served(settings: FreshFeedSettings) -> ServedSet | None:
    """The configured store, None when off. A relative SQLite path is taken from the working directory, as the
    exposure log's is (its folder is created)."""
    if settings.store == "off":
        return None
    if settings.store == "redis":
        return RedisServed(settings.redis, settings.ttl_s)
    settings.sqlite_path.parent.mkdir(parents=True, exist_ok=True)
    return SqliteServed(settings.sqlite_path, settings.ttl_s)
