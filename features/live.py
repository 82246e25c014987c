"""Live writes into the online store: engagements, follows and new posts, through Feast, and the ids of the events
already applied.

- Engagements go through the `user_history_push` push source (`features.store.push_history`, PushMode.ONLINE): the
  user's history row is read, extended and written back, so the next read of the online store sees it.
- Follows rewrite the user's `user_graph` row (followee added) and new posts write a `post_stats` row (creation
  time, author, topic, media, zero counts), both with `FeatureStore.write_to_online_store`.
- Applied event ids are kept beside the online store, as the served sets are (features/served.py): a SQLite table
  `ember_events(event_id, ts_ms)` in its own file (data/feast/events.db), or Redis keys `ember:event:<id>` expiring
  after `seen_ttl_s`. A store that cannot be read or written fails open (the event is applied; a replay within that
  outage may be applied again), logged.

Feast is imported when the first write needs it (7-8 s); `LiveStore.open` does it ahead of time. Redis ignores a row
not newer than the one it holds, so each written row carries the newest time of its events (or the wall clock
when that is later): engagements replayed with old times still land.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal, Protocol

from pydantic import Field

from core.actions import ACTION_NAMES
from core.config import FilePath, StrictConfig
from core.online_store import REDIS_ADDRESS, redis_client
from features.catalog import AUTHOR_STATS, POST_STATS, USER_GRAPH, Dtype

if TYPE_CHECKING:
    from feast import FeatureStore

    from features.store import Engagement, StoreConfig

log = logging.getLogger(__name__)
REDIS_PREFIX = "ember:event:"


class EventsSettings(StrictConfig):
    """`events:` of the service config. store off = POST /events is refused (503)."""

    store: Literal["off", "sqlite", "redis"] = "off"  # the online store the Feast repo writes to
    feast_repo: FilePath = Path("features/repo")
    redis: str = REDIS_ADDRESS  # the Feast Redis store and the applied event ids (store: redis)
    seen_path: FilePath = Path("data/feast/events.db")  # applied event ids (store: sqlite)
    seen_ttl_s: Annotated[float, Field(gt=0)] = 7 * 86_400.0  # a replay later than this is applied again
    history_length: Annotated[int, Field(ge=1, le=1024)] = 128


@dataclass(frozen=True)
class Follow:
    user_id: int
    author_id: int
    ts: datetime


@dataclass(frozen=True)
class NewPost:
    post_id: int
    author_id: int
    created_at_ms: int
    topic: int
    media_type: str


class SeenEvents(Protocol):
    def unseen(self, event_ids: Sequence[str], now_ms: int) -> set[str]:
        """The ids not applied within the TTL (all of them when the store fails)."""
        ...

    def mark(self, event_ids: Sequence[str], now_ms: int) -> None:
        """Records applied ids (dropped, with a log line, when the store fails)."""
        ...


class SqliteSeen:
    def __init__(self, path: Path, ttl_s: float, prune_every: int = 1000) -> None:
        self.path, self.ttl_ms, self.prune_every = Path(path), int(ttl_s * 1000), prune_every
        self._lock = threading.Lock()
        self._marks = 0
        self.db = sqlite3.connect(self.path, check_same_thread=False, timeout=1.0)
        self.db.execute("PRAGMA journal_mode=WAL")
        with self._lock, self.db:
            self.db.execute("CREATE TABLE IF NOT EXISTS ember_events (event_id TEXT PRIMARY KEY, ts_ms INTEGER)")

    def unseen(self, event_ids: Sequence[str], now_ms: int) -> set[str]:
        ids = list(dict.fromkeys(event_ids))
        seen: set[str] = set()
        try:
            with self._lock:
                for lo in range(0, len(ids), 500):
                    chunk = ids[lo : lo + 500]
                    marks = ",".join("?" * len(chunk))
                    sql = f"SELECT event_id FROM ember_events WHERE ts_ms > ? AND event_id IN ({marks})"
                    seen |= {r[0] for r in self.db.execute(sql, (now_ms - self.ttl_ms, *chunk))}
        except sqlite3.Error as err:
            log.warning("event ids %s: read failed (%s); applying without the replay check", self.path, err)
            return set(ids)
        return set(ids) - seen

    def mark(self, event_ids: Sequence[str], now_ms: int) -> None:
        if not event_ids:
            return
        try:
            with self._lock, self.db:
                self.db.executemany(
                    "INSERT OR REPLACE INTO ember_events VALUES (?, ?)", [(e, now_ms) for e in event_ids]
                )
                self._marks += 1
                if self._marks % self.prune_every == 0:
                    self.db.execute("DELETE FROM ember_events WHERE ts_ms <= ?", (now_ms - self.ttl_ms,))
        except sqlite3.Error as err:
            log.warning("event ids %s: write failed (%s); a replay may be applied again", self.path, err)


class RedisSeen:
    def __init__(self, address: str, ttl_s: float, prefix: str = REDIS_PREFIX, timeout_s: float = 0.5) -> None:
        self.address, self.ttl_ms, self.prefix = address, int(ttl_s * 1000), prefix
        self.client = redis_client(address, timeout_s)

    def unseen(self, event_ids: Sequence[str], now_ms: int) -> set[str]:
        import redis

        ids = list(dict.fromkeys(event_ids))
        try:
            pipe = self.client.pipeline(transaction=False)
            for e in ids:
                pipe.exists(self.prefix + e)
            found = pipe.execute()
        except redis.RedisError as err:
            log.warning("event ids redis %s: read failed (%s); applying without the replay check", self.address, err)
            return set(ids)
        return {e for e, hit in zip(ids, found, strict=True) if not hit}

    def mark(self, event_ids: Sequence[str], now_ms: int) -> None:
        import redis

        if not event_ids:
            return
        try:
            pipe = self.client.pipeline(transaction=False)
            for e in event_ids:
                pipe.set(self.prefix + e, now_ms, px=self.ttl_ms)
            pipe.execute()
        except redis.RedisError as err:
            log.warning("event ids redis %s: write failed (%s); a replay may be applied again", self.address, err)


def open_seen(settings: EventsSettings) -> SeenEvents | None:
    """The applied-id store of the configured online store, None when events are off. A relative SQLite path is
    taken from the working directory (its folder is created)."""
    if settings.store == "off":
        return None
    if settings.store == "redis":
        return RedisSeen(settings.redis, settings.seen_ttl_s)
    settings.seen_path.parent.mkdir(parents=True, exist_ok=True)
    return SqliteSeen(settings.seen_path, settings.seen_ttl_s)


class LiveStore:
    """Writes engagements, follows and new posts into the online store through one Feast FeatureStore, opened once
    (the registry is cached by Feast). Writes are serialised: each is a read-modify-write of a user's row."""

    def __init__(self, cfg: StoreConfig, history_length: int = 128) -> None:
        self.cfg, self.history_length = cfg, history_length
        self._store: FeatureStore | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: EventsSettings) -> LiveStore:
        from features.store import StoreConfig

        assert settings.store != "off"
        cfg = StoreConfig(repo=settings.feast_repo.resolve(), online_store=settings.store, redis=settings.redis)
        return cls(cfg, settings.history_length)

    def open(self) -> FeatureStore:
        """The FeatureStore (imports feast and reads the registry on the first call)."""
        from features.store import open_store

        with self._lock:
            if self._store is None:
                self._store = open_store(self.cfg)
            return self._store

    def push_engagements(self, engagements: Sequence[Engagement]) -> int:
        """Appends engagements to their users' histories (the push source). Returns the users pushed."""
        from features.store import push_history

        if not engagements:
            return 0
        store = self.open()
        floor = datetime.now(UTC)
        with self._lock:
            return push_history(self.cfg, list(engagements), self.history_length, store=store, not_before=floor)

    def add_follows(self, follows: Sequence[Follow]) -> int:
        """Adds each followed author to the user's followees (user_graph). Returns the users written."""
        if not follows:
            return 0
        import pandas as pd

        from features.online import OnlineFeatures
        from features.store import online_backend

        store = self.open()
        by_user: dict[int, list[Follow]] = {}
        for f in follows:
            by_user.setdefault(f.user_id, []).append(f)
        with self._lock:
            reader = OnlineFeatures(online_backend(self.cfg))
            rows = []
            for user_id, new in by_user.items():
                graph = reader.user(user_id).graph
                followees = list(dict.fromkeys([*graph["followee_ids"], *(f.author_id for f in new)]))
                row: dict[str, object] = {name: [int(x) for x in graph[name]] for name in USER_GRAPH.names}
                row.update(followee_ids=[int(a) for a in followees], user_id=user_id)
                row["event_timestamp"] = max(max(f.ts for f in new), datetime.now(UTC))
                rows.append(row)
            store.write_to_online_store(USER_GRAPH.name, pd.DataFrame(rows))
        return len(rows)

    def add_posts(self, posts: Sequence[NewPost]) -> int:
        """Writes a post_stats row per new post: zero counts; each rate is the author's smoothed rate (what a post
        with no impressions is smoothed towards), 0 for an author the store does not hold."""
        if not posts:
            return 0
        import pandas as pd

        from features.online import OnlineFeatures
        from features.store import online_backend

        store = self.open()
        with self._lock:
            reader = OnlineFeatures(online_backend(self.cfg))
            authors = sorted({p.author_id for p in posts})
            author_rows = dict(zip(authors, reader.backend.read(AUTHOR_STATS, authors), strict=True))
            rows = []
            for p in posts:
                author = author_rows.get(p.author_id) or {}
                row: dict[str, object] = {
                    "post_id": p.post_id,
                    "post_created_at_ms": p.created_at_ms,
                    "post_author_id": p.author_id,
                    "post_topic": p.topic,
                    "post_media_type": p.media_type,
                    "post_impressions": 0,
                }
                for a in ACTION_NAMES:
                    row[f"post_{a}_count"] = 0
                    row[f"post_{a}_rate"] = float(author.get(f"author_{a}_rate") or 0.0)
                created = datetime.fromtimestamp(p.created_at_ms / 1000, UTC)
                row["event_timestamp"] = max(created, datetime.now(UTC))
                rows.append(row)
            frame = pd.DataFrame(rows)
            for name, dtype in POST_STATS.features:
                if dtype in (Dtype.INT32, Dtype.FLOAT32):
                    frame[name] = frame[name].astype(str(dtype))
            store.write_to_online_store(POST_STATS.name, frame)
        return len(rows)
