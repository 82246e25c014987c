"""The serving hot path: one batched read of a user's features, history and graph, and of up to 1,000 candidates'
post and author features, straight from the online store Feast materializes into (SQLite or Redis).

Why not `FeatureStore.get_online_features`: `import feast` costs 7-8 s and ~370 MB, and its per-call overhead is
several times a direct read (bench/features.py measures both; tests prove they return the same values). This
module reads Feast's own storage layout (entity key serialization v3, `feast.types.Value` protobufs) with a
protobuf message class built here from the field numbers of Feast's Value.proto, so it needs only `protobuf`.

Post and author features are cached in process; the cache is dropped when a new materialization is recorded
(`mark_materialized`), so the next read fetches fresh rows. `warm(post_ids)` loads the rows of a known corpus (the
ANN index's posts) before the first request, and again in a background thread after each new materialization, so
the request path does not pay a cold read per candidate (bench/serving.py measures the hydrator with and without).
"""

from __future__ import annotations

import logging
import sqlite3
import struct
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from core.errors import UserError
from core.online_store import REDIS_ADDRESS, OnlineStoreConfig, check_store, parse_redis, redis_client
from core.online_store import sqlite_path as default_sqlite_path
from features.catalog import (
    AUTHOR_STATS,
    DEFAULTS,
    POST_STATS,
    PROJECT,
    USER_GRAPH,
    USER_HISTORY,
    USER_STATS,
    Dtype,
    View,
)

log = logging.getLogger(__name__)

META_KEY = b"ember:meta:materialized_at"  # Redis key / SQLite row recording the last materialization


class FeatureStoreUnavailable(Exception):
    """The online store cannot be reached: serving catches this and falls back (degraded response)."""


class FeatureSchemaError(UserError):
    """The online store does not hold what the feature catalog declares (apply/materialize are out of date)."""


# ---------------------------------------------------------------------------------------------------------------
# Wire format: Feast's entity keys and Value protobufs, without importing feast.
# ---------------------------------------------------------------------------------------------------------------


def _value_class() -> Any:
    """A message class wire-compatible with `feast.types.Value` for the types the catalog uses."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    fdp = descriptor_pb2.FileDescriptorProto(name="ember/feast_value.proto", package="ember.wire", syntax="proto3")
    f = descriptor_pb2.FieldDescriptorProto
    int64_list = fdp.message_type.add(name="Int64List")
    int64_list.field.add(name="val", number=1, type=f.TYPE_INT64, label=f.LABEL_REPEATED)
    value = fdp.message_type.add(name="Value")
    value.oneof_decl.add(name="val")
    # Field numbers of feast/types/Value.proto (Feast 0.67).
    scalars = [
        ("string_val", 2, f.TYPE_STRING),
        ("int32_val", 3, f.TYPE_INT32),
        ("int64_val", 4, f.TYPE_INT64),
        ("double_val", 5, f.TYPE_DOUBLE),
        ("float_val", 6, f.TYPE_FLOAT),
        ("bool_val", 7, f.TYPE_BOOL),
        ("null_val", 19, f.TYPE_INT32),  # an enum on Feast's side; same varint on the wire
    ]
    for name, number, kind in scalars:
        value.field.add(name=name, number=number, type=kind, label=f.LABEL_OPTIONAL, oneof_index=0)
    value.field.add(
        name="int64_list_val",
        number=14,
        type=f.TYPE_MESSAGE,
        type_name=".ember.wire.Int64List",
        label=f.LABEL_OPTIONAL,
        oneof_index=0,
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("ember.wire.Value"))


Value = _value_class()


def decode_value(raw: bytes | None) -> Any:
    """Decodes one stored Value (None when absent or null)."""
    if raw is None:
        return None
    v = Value.FromString(raw)
    which = v.WhichOneof("val")
    if which is None or which == "null_val":
        return None
    if which == "int64_list_val":
        return tuple(v.int64_list_val.val)
    return getattr(v, which)


def entity_key(join_key: str, value: int) -> bytes:
    """Feast's entity key serialization (version 3) for one int64 join key."""
    k = join_key.encode()
    return struct.pack("<III", 1, 2, len(k)) + k + struct.pack("<IIq", 4, 8, int(value))


def _mmh3_field(view: str, feature: str) -> bytes:
    import mmh3

    return struct.pack("<I", mmh3.hash(f"{view}:{feature}", signed=False))


# ---------------------------------------------------------------------------------------------------------------
# Backends: SQLite (development) and Redis (production), one batched read per view.
# ---------------------------------------------------------------------------------------------------------------


class Backend(Protocol):
    def read(self, view: View, ids: Sequence[int]) -> list[dict[str, Any] | None]:
        """One dict of raw feature values per id (None when the store has no row for it)."""
        ...

    def check(self, view: View) -> None:
        """Raises FeatureSchemaError when the store lacks a feature of `view`."""
        ...

    def materialized_at(self) -> str | None: ...

    def mark_materialized(self, stamp: str) -> None: ...


class SqliteBackend:
    """Feast's SQLite online store: table `<project>_<view>`, one row per (entity key, feature)."""

    def __init__(self, path: Path, project: str = PROJECT) -> None:
        if not Path(path).is_file():
            raise FeatureStoreUnavailable(f"{path}: no SQLite online store (run `ember features apply`)")
        self.path, self.project = Path(path), project
        # check_same_thread=False: the service reads from worker threads; reads only, guarded by SQLite itself.
        self.db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)

    def table(self, view: View) -> str:
        return f"{self.project}_{view.name}"

    def read(self, view: View, ids: Sequence[int]) -> list[dict[str, Any] | None]:
        keys = [entity_key(view.join_key, i) for i in ids]
        out: dict[bytes, dict[str, Any]] = {}
        try:
            for lo in range(0, len(keys), 500):  # SQLite's bound-parameter limit
                chunk = keys[lo : lo + 500]
                marks = ",".join("?" * len(chunk))
                sql = f'SELECT entity_key, feature_name, value FROM "{self.table(view)}" WHERE entity_key IN ({marks})'
                for key, name, raw in self.db.execute(sql, chunk):
                    out.setdefault(key, {})[name] = decode_value(raw)
        except sqlite3.OperationalError as err:
            if "no such table" in str(err):
                raise FeatureSchemaError(
                    f"feature view '{view.name}': no table {self.table(view)} in {self.path}"
                ) from err
            raise FeatureStoreUnavailable(f"{self.path}: {err}") from err
        return [out.get(k) for k in keys]

    def check(self, view: View) -> None:
        try:
            row = self.db.execute(f'SELECT entity_key FROM "{self.table(view)}" LIMIT 1').fetchone()
        except sqlite3.OperationalError as err:
            raise FeatureSchemaError(
                f"feature view '{view.name}': no table {self.table(view)} in {self.path} (run `ember features apply`)"
            ) from err
        if row is None:
            return  # applied but not materialized yet: every entity reads as missing
        names = {
            n for (n,) in self.db.execute(f'SELECT feature_name FROM "{self.table(view)}" WHERE entity_key = ?', row)
        }
        lacking = [f for f in view.names if f not in names]
        if lacking:
            raise FeatureSchemaError(
                f"feature view '{view.name}': the store lacks {lacking[0]!r}"
                + (f" and {len(lacking) - 1} more" if len(lacking) > 1 else "")
                + " (re-run `ember features apply` and `ember features materialize`)"
            )

    def materialized_at(self) -> str | None:
        try:
            row = self.db.execute("SELECT value FROM ember_meta WHERE key = 'materialized_at'").fetchone()
        except sqlite3.OperationalError:
            return None
        return row[0] if row else None

    def mark_materialized(self, stamp: str) -> None:
        with sqlite3.connect(self.path) as rw:
            rw.execute("CREATE TABLE IF NOT EXISTS ember_meta (key TEXT PRIMARY KEY, value TEXT)")
            rw.execute("INSERT OR REPLACE INTO ember_meta VALUES ('materialized_at', ?)", (stamp,))


class RedisBackend:
    """Feast's Redis online store: one hash per entity key (+ project), fields mmh3('<view>:<feature>')."""

    def __init__(self, address: str = REDIS_ADDRESS, project: str = PROJECT, timeout_s: float = 0.5) -> None:
        self.client = redis_client(address, timeout_s)  # fails fast, so the service can fall back
        self.project, self.address = project.encode(), address
        self._fields = {
            v.name: [_mmh3_field(v.name, f) for f in v.names]
            for v in (USER_STATS, USER_HISTORY, USER_GRAPH, AUTHOR_STATS, POST_STATS)
        }

    def _call(self, fn: Any) -> Any:
        import redis

        try:
            return fn()
        except redis.RedisError as err:  # refused, timed out, or not Redis at all (a proxy answering)
            raise FeatureStoreUnavailable(f"{parse_redis(self.address).display()}: {err}") from err

    def read(self, view: View, ids: Sequence[int]) -> list[dict[str, Any] | None]:
        fields = self._fields[view.name]

        def run() -> list[Any]:
            pipe = self.client.pipeline(transaction=False)
            for i in ids:
                pipe.hmget(entity_key(view.join_key, i) + self.project, fields)  # type: ignore[arg-type]
            return pipe.execute()

        rows: list[dict[str, Any] | None] = []
        for raw in self._call(run):
            if all(r is None for r in raw):
                rows.append(None)
            else:
                rows.append({name: decode_value(r) for name, r in zip(view.names, raw, strict=True)})
        return rows

    def check(self, view: View) -> None:
        ts_field = f"_ts:{view.name}".encode()
        cursor, seen = 0, 0
        while True:
            cursor, keys = self._call(lambda c=cursor: self.client.scan(c, match=b"*" + self.project, count=200))
            for key in keys:
                got = self._call(lambda k=key: self.client.hkeys(k))
                if ts_field in got:
                    lacking = [f for f, h in zip(view.names, self._fields[view.name], strict=True) if h not in got]
                    if lacking:
                        raise FeatureSchemaError(
                            f"feature view '{view.name}': the store lacks {lacking[0]!r} (re-run `ember features "
                            "apply` and `ember features materialize`)"
                        )
                    return
                seen += 1
            if cursor == 0 or seen > 2000:
                return

    def materialized_at(self) -> str | None:
        raw = self._call(lambda: self.client.get(META_KEY))
        return raw.decode() if raw else None

    def mark_materialized(self, stamp: str) -> None:
        self._call(lambda: self.client.set(META_KEY, stamp))


class MemoryBackend:
    """An online store held in the process, {view name: {entity id: row}}, rows as the stores decode them (Python
    scalars, tuples for lists). The fake pipeline's store (serving/fake.py) for wiring tests; no deployment's."""

    def __init__(self, rows: dict[str, dict[int, dict[str, Any]]], stamp: str | None = None) -> None:
        self.rows, self.stamp = rows, stamp

    def read(self, view: View, ids: Sequence[int]) -> list[dict[str, Any] | None]:
        table = self.rows.get(view.name, {})
        return [dict(table[int(i)]) if int(i) in table else None for i in ids]

    def check(self, view: View) -> None:
        if view.name not in self.rows:
            raise FeatureSchemaError(f"feature view '{view.name}': not in the in-memory store")
        for key, row in self.rows[view.name].items():
            if lacking := [n for n in view.names if n not in row]:
                raise FeatureSchemaError(f"feature view '{view.name}': row {key} lacks {lacking[0]!r}")

    def materialized_at(self) -> str | None:
        return self.stamp

    def mark_materialized(self, stamp: str) -> None:
        self.stamp = stamp


# ---------------------------------------------------------------------------------------------------------------
# The reader the service uses.
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class UserFeatures:
    """One user's features. `missing` lists the views the store had no row for (defaults were used)."""

    user_id: int
    stats: dict[str, Any]
    history: dict[str, Any]
    graph: dict[str, Any]
    missing: tuple[str, ...] = ()


@dataclass
class CandidateFeatures:
    """Post and author features of a candidate list, aligned with the post ids asked for.

    `post` and `author` map feature name -> array (C,); `post_missing` / `author_missing` are (C,) bool masks.
    """

    post_ids: np.ndarray
    author_ids: np.ndarray
    post: dict[str, np.ndarray]
    author: dict[str, np.ndarray]
    post_missing: np.ndarray
    author_missing: np.ndarray


def with_defaults(view: View, row: dict[str, Any] | None) -> dict[str, Any]:
    """A view's values from a store row, the catalog default (`DEFAULTS`) for each feature the row lacks."""
    row = row or {}
    return {name: (DEFAULTS[dtype] if row.get(name) is None else row[name]) for name, dtype in view.features}


@dataclass
class OnlineFeatures:
    """Batched, cached reads of the online store for one service process."""

    backend: Backend
    refresh_every_s: float = 5.0  # how often the request path checks for a new materialization
    _cache: dict[str, dict[int, _Row | None]] = field(default_factory=lambda: {"post": {}, "author": {}})
    _stamp: str | None = None
    _checked_at: float = 0.0
    _warm_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def check_schema(self) -> None:
        """Fails fast, naming the view, when the store does not match the catalog."""
        for view in (USER_STATS, USER_HISTORY, USER_GRAPH, AUTHOR_STATS, POST_STATS):
            self.backend.check(view)

    def _maybe_refresh(self) -> None:
        now = time.monotonic()
        if now - self._checked_at < self.refresh_every_s:
            return
        self._checked_at = now
        stamp = self.backend.materialized_at()
        if stamp != self._stamp:
            self._stamp = stamp
            self._cache = {"post": {}, "author": {}}  # requests read through until the re-warm has filled it
            if len(self._warm_ids):
                threading.Thread(target=self._rewarm, args=(self._cache,), daemon=True, name="ember-warm").start()

    def warm(self, post_ids: Sequence[int] | np.ndarray, batch: int = 5000) -> int:
        """Reads the post and author rows of `post_ids` into the cache now (at load: before the first request) and
        remembers them for the re-warm after each new materialization. Returns the posts the store held.

        Raises:
            FeatureStoreUnavailable: the store cannot be read (the caller serves cold, reading per request).
        """
        self._warm_ids = np.unique(np.asarray(post_ids, dtype=np.int64))
        self._stamp = self.backend.materialized_at()
        self._checked_at = time.monotonic()
        return self._fill(self._cache, batch)

    def _fill(self, cache: dict[str, dict[int, _Row | None]], batch: int) -> int:
        held = 0
        author_col = POST_STATS.names.index("post_author_id")
        for lo in range(0, len(self._warm_ids), batch):
            if cache is not self._cache:
                return held  # a newer materialization replaced this cache: its own re-warm takes over
            ids = [int(i) for i in self._warm_ids[lo : lo + batch]]
            posts = [_encode(POST_STATS, r) for r in self.backend.read(POST_STATS, ids)]
            authors = sorted({int(p.numeric[author_col]) for p in posts if p is not None})
            rows = [_encode(AUTHOR_STATS, r) for r in self.backend.read(AUTHOR_STATS, authors)]
            for kind, keys, values in (("post", ids, posts), ("author", authors, rows)):
                for key, value in zip(keys, values, strict=True):
                    cache[kind].setdefault(key, value)  # a request's read of the same snapshot may have come first
            held += sum(p is not None for p in posts)
        return held

    def _rewarm(self, cache: dict[str, dict[int, _Row | None]]) -> None:
        try:
            self._fill(cache, 5000)
        except FeatureStoreUnavailable as err:  # requests keep reading through; the next materialization retries
            log.warning("online store re-warm stopped: %s", err)

    def forget_posts(self, post_ids: Sequence[int]) -> None:
        """Drops cached rows of these posts (a post written after a request cached it as missing)."""
        cache = self._cache["post"]
        for p in post_ids:
            cache.pop(int(p), None)

    def user(self, user_id: int) -> UserFeatures:
        """A user's stats, history and graph in one round of reads; unknown users get defaults + `missing`."""
        views = {v.name: self.user_view(v, user_id) for v in (USER_STATS, USER_HISTORY, USER_GRAPH)}
        return UserFeatures(
            user_id=user_id,
            stats=views[USER_STATS.name][0],
            history=views[USER_HISTORY.name][0],
            graph=views[USER_GRAPH.name][0],
            missing=tuple(name for name, (_, found) in views.items() if not found),
        )

    def user_view(self, view: View, user_id: int) -> tuple[dict[str, Any], bool]:
        """One user view's values (defaults where the store has none) and whether the store had a row.

        Raises:
            FeatureStoreUnavailable: the store cannot be reached.
        """
        row = self.backend.read(view, [user_id])[0]
        return with_defaults(view, row), row is not None

    def _cached(self, kind: str, view: View, ids: list[int]) -> list[_Row | None]:
        cache = self._cache[kind]
        todo = list(dict.fromkeys(i for i in ids if i not in cache))
        if todo:
            cache.update(zip(todo, (_encode(view, r) for r in self.backend.read(view, todo)), strict=True))
        return [cache[i] for i in ids]

    def candidates(
        self, post_ids: Sequence[int] | np.ndarray, author_ids: Sequence[int] | np.ndarray | None = None
    ) -> CandidateFeatures:
        """Post and author features of up to 1,000 candidates (authors default to the post's own author)."""
        self._maybe_refresh()
        pids = [int(i) for i in post_ids]
        posts = self._cached("post", POST_STATS, pids)
        if author_ids is None:
            j = POST_STATS.names.index("post_author_id")
            aids = [int(p.numeric[j]) if p is not None else 0 for p in posts]
        else:
            aids = [int(i) for i in author_ids]
        authors = self._cached("author", AUTHOR_STATS, aids)
        return CandidateFeatures(
            post_ids=np.asarray(pids, dtype=np.int64),
            author_ids=np.asarray(aids, dtype=np.int64),
            post=_columns(POST_STATS, posts),
            author=_columns(AUTHOR_STATS, authors),
            post_missing=np.fromiter((p is None for p in posts), dtype=bool, count=len(posts)),
            author_missing=np.fromiter((a is None for a in authors), dtype=bool, count=len(authors)),
        )


@dataclass(frozen=True)
class _Row:
    """A cached entity: its numeric features as one float64 vector (catalog order) and its string features."""

    numeric: np.ndarray
    strings: tuple[str, ...]


def _split(view: View) -> tuple[list[tuple[str, Dtype]], list[str]]:
    numeric: list[tuple[str, Dtype]] = [(n, d) for n, d in view.features if d in NUMPY]
    strings = [n for n, d in view.features if d == Dtype.STRING]
    return numeric, strings


def _encode(view: View, row: dict[str, Any] | None) -> _Row | None:
    if row is None:
        return None
    full = with_defaults(view, row)
    numeric, strings = _split(view)
    return _Row(np.array([full[n] for n, _ in numeric], dtype=np.float64), tuple(full[n] for n in strings))


def _columns(view: View, rows: list[_Row | None]) -> dict[str, np.ndarray]:
    """Feature name -> (C,) column; numeric columns are views into one stacked (C, F) matrix."""
    numeric, strings = _split(view)
    default = _encode(view, {})
    assert default is not None
    matrix = np.stack([(r or default).numeric for r in rows]) if rows else np.zeros((0, len(numeric)))
    out: dict[str, np.ndarray] = {}
    for j, (name, dtype) in enumerate(numeric):
        out[name] = matrix[:, j].astype(NUMPY[dtype], copy=False)
    for j, name in enumerate(strings):
        out[name] = np.array([(r or default).strings[j] for r in rows], dtype=object)
    return out


NUMPY = {Dtype.INT32: np.int32, Dtype.INT64: np.int64, Dtype.FLOAT32: np.float32}


def open_backend(cfg: OnlineStoreConfig) -> Backend:
    """The backend of the configured store: the one switch of the materializer, the reader and the service."""
    if cfg.store == "redis":
        return RedisBackend(cfg.redis)
    return SqliteBackend(cfg.sqlite_path)


def open_online(
    online_store: str = "sqlite", sqlite_path: Path | None = None, redis: str = REDIS_ADDRESS
) -> OnlineFeatures:
    """The reader for the configured store (the same switch as features.store.StoreConfig)."""
    check_store(online_store, "--online-store")
    path = sqlite_path or default_sqlite_path()
    return OnlineFeatures(open_backend(OnlineStoreConfig(online_store, path, redis)))
