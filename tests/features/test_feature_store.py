"""The Feast feature store for real: apply, materialize (SQLite and Redis), point-in-time training sets, the push
path, and the direct reader the service uses (same values as Feast, typed errors, cache refresh)."""

from __future__ import annotations

import math
import os
import shutil
import sqlite3
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from features.build import build_features
from features.catalog import AUTHOR_STATS, POST_STATS, USER_GRAPH, USER_HISTORY, USER_STATS
from features.online import (
    FeatureSchemaError,
    FeatureStoreUnavailable,
    OnlineFeatures,
    RedisBackend,
    SqliteBackend,
)
from features.store import (
    DEFAULT_WINDOW,
    Engagement,
    StoreConfig,
    apply,
    materialize,
    online_backend,
    push_history,
    repo_config,
    training_set,
)
from features.synth import SynthConfig, generate
from tests.features.tiny import ts, write_tiny

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
REDIS = "127.0.0.1:6379,db=11"  # a database of its own, flushed by the tests
REDIS_REBUILD = "127.0.0.1:6379,db=12"


def _project(root: Path, dataset: str = "tiny") -> Path:
    """A copy of the Feast repo laid out like the project: <root>/features/repo and <root>/data/features."""
    shutil.copytree(
        REPO / "features" / "repo", root / "features" / "repo", ignore=shutil.ignore_patterns("__pycache__")
    )
    data = root / "data" / dataset
    if dataset == "tiny":
        write_tiny(data)
    else:
        generate(SynthConfig.for_scale("nano", seed=11), data)
    build_features(data, root / "data" / "features")
    return data


MATERIALIZED: dict[str, dict] = {}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[StoreConfig, Path]:
    root = tmp_path_factory.mktemp("fs-sqlite")
    data = _project(root)
    cfg = StoreConfig(repo=root / "features" / "repo")
    apply(cfg)
    MATERIALIZED["first"] = materialize(cfg, end=ts(3))
    MATERIALIZED["second"] = materialize(cfg, end=ts(4))  # incremental: only (ts(3), ts(4)]
    return cfg, data


def test_the_registry_file_is_read_from_the_repo_config() -> None:
    from features.store import registry_file

    assert registry_file(StoreConfig()) == REPO / "data" / "feast" / "registry.db"
    assert registry_file(StoreConfig(online_store="redis")) == REPO / "data" / "feast" / "registry.db"


def test_materialize_is_incremental(tiny: tuple[StoreConfig, Path]) -> None:
    first, second = MATERIALIZED["first"]["views"], MATERIALIZED["second"]["views"]
    assert set(first) == set(second) == {"user_stats", "user_history", "user_graph", "author_stats", "post_stats"}
    assert all(window == [ts(1).isoformat(), ts(3).isoformat()] for window in first.values())
    assert all(window == [ts(3).isoformat(), ts(4).isoformat()] for window in second.values())


def _redis_available() -> bool:
    import redis

    try:
        return bool(redis.Redis(socket_connect_timeout=0.5).ping())
    except redis.ConnectionError:
        return False


@pytest.fixture(scope="module")
def tiny_redis(tmp_path_factory: pytest.TempPathFactory) -> tuple[StoreConfig, Path]:
    if not _redis_available():
        if os.environ.get("CI"):
            pytest.fail("Redis is not running on 127.0.0.1:6379 in CI")
        pytest.skip("Redis is not running on 127.0.0.1:6379 (not CI)")
    import redis

    redis.Redis(db=11).flushdb()
    root = tmp_path_factory.mktemp("fs-redis")
    data = _project(root)
    cfg = StoreConfig(repo=root / "features" / "repo", online_store="redis", redis=REDIS)
    apply(cfg)
    materialize(cfg, end=ts(4))
    yield cfg, data
    redis.Redis(db=11).flushdb()


TLS_PASSWORD = "s3cret"


def _tls_files(root: Path) -> Path:
    """A throwaway CA and a server certificate for 127.0.0.1 signed by it (openssl); returns the directory."""
    import subprocess

    root.mkdir(parents=True, exist_ok=True)
    (root / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    steps = [
        ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "1",
         "-subj", "/CN=ember-test-ca"],
        ["req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
         "-subj", "/CN=127.0.0.1"],
        ["x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out",
         "server.pem", "-days", "1", "-extfile", "ext.cnf"],
    ]  # fmt: skip
    for step in steps:
        subprocess.run(["openssl", *step], cwd=root, check=True, capture_output=True)
    return root


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A redis-server of our own that speaks only TLS and wants a password, and the tiny project materialized into
    it through Feast with the rediss:// URL: (config, the URL without the password)."""
    import subprocess

    from serving.smoke import free_port, stop_group

    binary, openssl = shutil.which("redis-server"), shutil.which("openssl")
    if binary is None or openssl is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server and openssl are needed for the TLS store test")
        pytest.skip("redis-server or openssl is not installed")
    root = tmp_path_factory.mktemp("fs-redis-tls")
    certs = _tls_files(root / "tls")
    port = free_port()
    args = ["--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1", "--tls-auth-clients", "no",
            "--tls-cert-file", str(certs / "server.pem"), "--tls-key-file", str(certs / "server.key"),
            "--tls-ca-cert-file", str(certs / "ca.pem"), "--requirepass", TLS_PASSWORD, "--save", "",
            "--appendonly", "no", "--dir", str(root)]  # fmt: skip
    proc = subprocess.Popen(
        [binary, *args], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True
    )
    url = f"rediss://:{TLS_PASSWORD}@127.0.0.1:{port}/0?ssl_ca_certs={certs / 'ca.pem'}"
    try:
        from core.online_store import redis_client

        deadline = time.monotonic() + 20
        while True:
            try:
                if redis_client(url, timeout_s=1.0).ping():
                    break
            except Exception:
                assert time.monotonic() < deadline and proc.poll() is None, "the TLS redis-server did not start"
                time.sleep(0.1)
        _project(root)
        cfg = StoreConfig(repo=root / "features" / "repo", online_store="redis", redis=url)
        apply(cfg)
        materialize(cfg, end=ts(4))
        yield cfg, url.replace(f":{TLS_PASSWORD}@", ":wrong@")
    finally:
        stop_group(proc)


# --------------------------------------------------------------------------------------------------------------
# Point-in-time correctness
# --------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ranker_rows(tiny: tuple[StoreConfig, Path], tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    cfg, data = tiny
    out = tmp_path_factory.mktemp("ts") / "ranker"
    training_set(cfg, "ranker", data, ts(1), ts(5), out)
    return pd.read_parquet(out / "training_set.parquet").set_index("impression_id")


def test_point_in_time_training_set_never_sees_the_impressions_own_outcome(ranker_rows: pd.DataFrame) -> None:
    rows = ranker_rows
    assert list(rows.index) == [1, 2, 3, 4, 5], "every impression keeps exactly one row"
    # Impression 2 is a click by user 1 at exactly 2026-01-02 00:00. A join that let events at the impression time
    # through would count it: user_click_1d 2 and post 101's click count 1.
    assert rows.loc[2, "user_impressions_1d"] == 1 and rows.loc[2, "user_click_1d"] == 1
    assert rows.loc[2, "post_click_count"] == 0
    # Impression 3 (user 1, 09:00 the same day): impression 2 is on the same day, so not yet in the daily snapshot.
    assert rows.loc[3, "user_click_1d"] == 1
    assert list(rows.loc[3, "hist_post_ids"]) == [100]
    assert rows.loc[3, "post_impressions"] == 1  # post 100 as of 01-01 11:00; its own 09:00 showing comes later
    # Impression 4 (user 2, 12:00) sees post 100's 10:00 row, which includes impression 3's block.
    assert rows.loc[4, "post_impressions"] == 2 and rows.loc[4, "post_block_author_count"] == 1
    # Impression 5 (08:30 on 01-03) must not see its own click and reply, which land in the 09:00 row.
    assert rows.loc[5, "post_click_count"] == 1 and rows.loc[5, "post_reply_count"] == 0
    assert rows.loc[5, "user_impressions_1d"] == 1 and rows.loc[5, "user_click_1d"] == 0
    # Labels are the impression's own outcomes.
    assert rows.loc[5, "click"] == 1 and rows.loc[5, "reply"] == 1


def test_point_in_time_counts_equal_a_recount_of_strictly_earlier_events(tmp_path: Path) -> None:
    data = _project(tmp_path, dataset="nano")
    cfg = StoreConfig(repo=tmp_path / "features" / "repo")
    apply(cfg)
    start = pd.Timestamp("2026-01-02", tz="UTC")
    training_set(
        cfg, "ranker", data, start.to_pydatetime(), (start + pd.Timedelta(days=1)).to_pydatetime(), tmp_path / "ts"
    )
    rows = pd.read_parquet(tmp_path / "ts" / "training_set.parquet")
    imp = pd.read_parquet(data / "impressions")
    # Recount each row's user clicks in the 7 days before the start of its day, straight from the raw impressions.
    day_start = rows.event_timestamp.dt.floor("D")
    merged = (
        rows[["impression_id", "user_id"]]
        .assign(day_start=day_start)
        .merge(imp[["user_id", "ts", "click"]], on="user_id", how="left")
    )
    window = (merged.ts < merged.day_start) & (merged.ts >= merged.day_start - pd.Timedelta(days=7))
    recount = merged[window].groupby("impression_id").click.sum()
    expected = rows.impression_id.map(recount).fillna(0).astype(int)
    assert (rows.user_click_7d.fillna(0).astype(int).to_numpy() == expected.to_numpy()).all()
    assert len(rows) == ((imp.ts >= start) & (imp.ts < start + pd.Timedelta(days=1))).sum()


def test_retrieval_training_set_holds_the_clicked_impressions(tiny: tuple[StoreConfig, Path], tmp_path: Path) -> None:
    cfg, data = tiny
    training_set(cfg, "retrieval", data, ts(1), ts(5), tmp_path / "retrieval")
    rows = pd.read_parquet(tmp_path / "retrieval" / "training_set.parquet")
    assert sorted(rows.impression_id) == [1, 2, 5]
    assert "hist_post_ids" in rows and "post_click_rate" in rows and "author_click_rate" not in rows


def test_training_set_bad_window_is_a_user_error(tiny: tuple[StoreConfig, Path], tmp_path: Path) -> None:
    from core.errors import UserError

    cfg, data = tiny
    with pytest.raises(UserError, match="--start/--end"):
        training_set(cfg, "ranker", data, ts(3), ts(2), tmp_path / "x")
    with pytest.raises(UserError, match="--model"):
        training_set(cfg, "ranking", data, ts(1), ts(2), tmp_path / "x")
    assert not (tmp_path / "x").exists()


# --------------------------------------------------------------------------------------------------------------
# Online reads: the direct reader returns what Feast returns
# --------------------------------------------------------------------------------------------------------------


def _same(a: object, b: object) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return math.isclose(float(a), float(b), rel_tol=1e-6, abs_tol=1e-9)  # type: ignore[arg-type]
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        return list(a) == list(b)  # type: ignore[call-overload]
    return a == b


def _assert_reader_matches_feast(cfg: StoreConfig) -> None:
    from features.store import open_store

    store = open_store(cfg)
    reader = OnlineFeatures(online_backend(cfg))
    users = [1, 2, 424242]
    for view in (USER_STATS, USER_HISTORY, USER_GRAPH):
        feast_rows = store.get_online_features(
            features=[f"{view.name}:{f}" for f in view.names], entity_rows=[{"user_id": u} for u in users]
        ).to_dict()
        for k, u in enumerate(users):
            got = reader.user(u)
            values = {USER_STATS.name: got.stats, USER_HISTORY.name: got.history, USER_GRAPH.name: got.graph}[view.name]
            if all(feast_rows[f][k] is None for f in view.names):
                assert view.name in got.missing
                continue
            for f in view.names:
                assert _same(feast_rows[f][k], values[f]), (view.name, u, f, feast_rows[f][k], values[f])
    cands = reader.candidates([100, 101, 999])
    for view, cols, key, ids in (
        (POST_STATS, cands.post, "post_id", [100, 101, 999]),
        (AUTHOR_STATS, cands.author, "author_id", list(cands.author_ids)),
    ):
        feast_rows = store.get_online_features(
            features=[f"{view.name}:{f}" for f in view.names], entity_rows=[{key: int(i)} for i in ids]
        ).to_dict()
        for k in range(len(ids)):
            if feast_rows[view.names[0]][k] is None:
                continue
            for f in view.names:
                assert _same(feast_rows[f][k], cols[f][k].item() if hasattr(cols[f][k], "item") else cols[f][k])
    assert list(cands.post_missing) == [False, False, True]
    assert list(cands.author_ids[:2]) == [10, 10]


def test_direct_reader_matches_feast_get_online_features_sqlite(tiny: tuple[StoreConfig, Path]) -> None:
    _assert_reader_matches_feast(tiny[0])


def test_direct_reader_matches_feast_get_online_features_redis(tiny_redis: tuple[StoreConfig, Path]) -> None:
    _assert_reader_matches_feast(tiny_redis[0])


def test_a_tls_store_with_a_password_is_written_by_feast_and_read_directly(tls_redis: Any) -> None:
    cfg, wrong = tls_redis
    _assert_reader_matches_feast(cfg)  # Feast materialized through the rediss:// URL; the direct reader reads it
    assert list(OnlineFeatures(online_backend(cfg)).user(1).history["hist_post_ids"]) == [100, 101, 100]
    _push_and_read(cfg)
    bad = StoreConfig(repo=cfg.repo, online_store="redis", redis=wrong)
    with pytest.raises(FeatureStoreUnavailable) as err:
        OnlineFeatures(online_backend(bad)).user(1)
    assert "wrong" not in str(err.value) and "rediss://:***@127.0.0.1" in str(err.value)  # the password never shown


def test_online_values_are_the_newest_snapshot(tiny: tuple[StoreConfig, Path]) -> None:
    reader = OnlineFeatures(online_backend(tiny[0]))
    user = reader.user(1)
    assert user.missing == ()
    assert list(user.history["hist_post_ids"]) == [100, 101, 100]  # as of 2026-01-04 00:00
    assert list(user.graph["blocked_author_ids"]) == [10] and list(user.graph["followee_ids"]) == [10]
    assert user.stats["user_click_7d"] == 2


def test_unknown_user_gets_defaults_and_a_missing_flag(tiny: tuple[StoreConfig, Path]) -> None:
    user = OnlineFeatures(online_backend(tiny[0])).user(987654)
    assert set(user.missing) == {"user_stats", "user_history", "user_graph"}
    assert user.stats["user_click_7d"] == 0 and user.stats["user_country"] == "unknown"
    assert list(user.history["hist_post_ids"]) == []


# --------------------------------------------------------------------------------------------------------------
# Streaming: pushed engagements are in the next online read
# --------------------------------------------------------------------------------------------------------------


def _push_and_read(cfg: StoreConfig) -> None:
    reader = OnlineFeatures(online_backend(cfg))
    before = list(reader.user(2).history["hist_post_ids"])
    push_history(cfg, [Engagement(user_id=2, post_id=555, author_id=77, actions=0b11, surface=1, ts=ts(4, 0, 5))])
    after = reader.user(2).history
    assert list(after["hist_post_ids"]) == [*before, 555]
    assert list(after["hist_actions"])[-1] == 0b11 and after["hist_length"] == len(before) + 1
    push_history(cfg, [Engagement(user_id=2, post_id=556, author_id=77, actions=1, surface=0, ts=ts(4, 0, 6))])
    assert list(reader.user(2).history["hist_post_ids"])[-2:] == [555, 556]


def test_push_source_updates_history_for_the_next_read_sqlite(tiny: tuple[StoreConfig, Path]) -> None:
    _push_and_read(tiny[0])


def test_push_source_updates_history_for_the_next_read_redis(tiny_redis: tuple[StoreConfig, Path]) -> None:
    _push_and_read(tiny_redis[0])


# --------------------------------------------------------------------------------------------------------------
# Faults: unreachable store, schema mismatch, cache refresh on materialization
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("online_store", ["sqlite", "redis"])
def test_repo_config_is_feasts_own_reading_with_the_configured_address(
    online_store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store Feast opens is what its own loader reads with EMBER_REDIS set to the configured address, and this
    process's environment is left as it was (an address set elsewhere neither wins nor is overwritten)."""
    from feast.repo_config import load_repo_config

    cfg = StoreConfig(online_store=online_store, redis="redis.example:6390,db=4")
    monkeypatch.setenv("EMBER_REDIS", "elsewhere:1")
    ours = repo_config(cfg)
    assert os.environ["EMBER_REDIS"] == "elsewhere:1"
    monkeypatch.setenv("EMBER_REDIS", cfg.redis)
    assert ours.model_dump() == load_repo_config(cfg.repo, cfg.yaml).model_dump()
    assert ours.repo_path == cfg.repo
    if online_store == "redis":
        assert ours.online_store.connection_string == "redis.example:6390,db=4"
    else:
        assert (cfg.repo / ours.online_store.path).resolve() == cfg.online.sqlite_path


def test_unreachable_redis_raises_a_typed_error_fast() -> None:
    import time

    backend = RedisBackend("127.0.0.1:6390")  # nothing listens there
    start = time.perf_counter()
    with pytest.raises(FeatureStoreUnavailable, match="6390"):
        OnlineFeatures(backend).user(1)
    assert time.perf_counter() - start < 2.0


def test_missing_sqlite_store_raises_a_typed_error(tmp_path: Path) -> None:
    with pytest.raises(FeatureStoreUnavailable, match="online.db"):
        SqliteBackend(tmp_path / "online.db")


def test_schema_mismatch_names_the_feature_view(tiny: tuple[StoreConfig, Path], tmp_path: Path) -> None:
    src = tiny[0].data_dir / "feast" / "online.db"
    OnlineFeatures(SqliteBackend(src)).check_schema()  # the real store is consistent
    broken = tmp_path / "online.db"
    shutil.copy(src, broken)
    with sqlite3.connect(broken) as db:
        db.execute("DELETE FROM ember_post_stats WHERE feature_name = 'post_click_rate'")
    with pytest.raises(FeatureSchemaError, match="'post_stats'.*post_click_rate"):
        OnlineFeatures(SqliteBackend(broken)).check_schema()
    with sqlite3.connect(broken) as db:
        db.execute("DROP TABLE ember_author_stats")
    with pytest.raises(FeatureSchemaError, match="'author_stats'"):
        OnlineFeatures(SqliteBackend(broken)).candidates([100])


def test_candidate_cache_is_refreshed_when_a_materialization_is_recorded(
    tiny: tuple[StoreConfig, Path], tmp_path: Path
) -> None:
    path = tmp_path / "online.db"
    shutil.copy(tiny[0].data_dir / "feast" / "online.db", path)
    reader = OnlineFeatures(SqliteBackend(path), refresh_every_s=0.0)
    before = reader.candidates([100]).post["post_impressions"][0]
    with sqlite3.connect(path) as db:  # a new materialization rewrites the row...
        key, raw = db.execute(
            "SELECT entity_key, value FROM ember_post_stats WHERE feature_name = 'post_impressions' "
            "AND entity_key IN (SELECT entity_key FROM ember_post_stats WHERE feature_name='post_click_count' "
            "LIMIT 1 OFFSET 0)"
        ).fetchone()
    from features.online import Value, entity_key

    with sqlite3.connect(path) as db:
        db.execute(
            "UPDATE ember_post_stats SET value = ? WHERE feature_name = 'post_impressions' AND entity_key = ?",
            (Value(int32_val=before + 40).SerializeToString(), entity_key("post_id", 100)),
        )
    assert reader.candidates([100]).post["post_impressions"][0] == before  # ...the cache still serves the old one
    SqliteBackend(path).mark_materialized("2026-01-05T00:00:00+00:00")
    assert reader.candidates([100]).post["post_impressions"][0] == before + 40
    assert np.isfinite(reader.candidates([100, 101]).post["post_click_rate"]).all()
    del key, raw


class CountingBackend:
    """A backend that counts the ids each view read was asked for."""

    def __init__(self, inner: SqliteBackend) -> None:
        self.inner, self.reads = inner, {"post_stats": 0, "author_stats": 0}

    def read(self, view: Any, ids: Any) -> Any:
        self.reads[view.name] = self.reads.get(view.name, 0) + len(ids)
        return self.inner.read(view, ids)

    def check(self, view: Any) -> None:
        self.inner.check(view)

    def materialized_at(self) -> str | None:
        return self.inner.materialized_at()

    def mark_materialized(self, stamp: str) -> None:
        self.inner.mark_materialized(stamp)


def test_warm_cache_serves_candidates_without_store_reads_and_rewarms_after_materialization(
    tiny: tuple[StoreConfig, Path], tmp_path: Path
) -> None:
    path = tmp_path / "online.db"
    shutil.copy(tiny[0].data_dir / "feast" / "online.db", path)
    ids = pd.read_parquet(tiny[0].data_dir / "features" / "post_stats.parquet")["post_id"].unique()[:50].tolist()
    counting = CountingBackend(SqliteBackend(path))
    cold = OnlineFeatures(SqliteBackend(path)).candidates(ids)
    reader = OnlineFeatures(counting, refresh_every_s=0.0)
    assert reader.warm(ids) == len(ids)
    after_warm = dict(counting.reads)
    warm = reader.candidates(ids)
    assert counting.reads == after_warm  # every post and author came from the cache
    for name, column in cold.post.items():
        assert [_same(a, b) for a, b in zip(column, warm.post[name], strict=True)] == [True] * len(ids), name
    assert (warm.author_ids == cold.author_ids).all()
    SqliteBackend(path).mark_materialized("2026-01-06T00:00:00+00:00")
    reader.candidates(ids[:1])  # sees the new stamp: drops the cache, starts the background re-warm
    deadline = time.monotonic() + 10
    while len(reader._cache["post"]) < len(ids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert set(ids) <= set(reader._cache["post"])  # the re-warm refilled the whole warm set


def test_a_store_loaded_past_the_rebuilt_offline_end_is_reloaded_not_skipped(tmp_path: Path) -> None:
    """Data regenerated with an earlier end: the online store must follow it back, not keep the newer rows."""
    _project(tmp_path)
    cfg = StoreConfig(repo=tmp_path / "features" / "repo")
    apply(cfg)
    materialize(cfg, end=ts(6))  # as if the previous data had run two days longer
    again = materialize(cfg, end=ts(4))
    assert set(again["views"]) == {"user_stats", "user_history", "user_graph", "author_stats", "post_stats"}
    assert all(
        window == [(ts(4) - DEFAULT_WINDOW).isoformat(), ts(4).isoformat()] for window in again["views"].values()
    )


def test_a_redis_store_follows_a_rebuild_to_an_earlier_end(tmp_path: Path) -> None:
    """Redis keeps a row whose stored time is newer than the one written: after data rebuilt to an earlier end, the
    views are cleared and reloaded, so the store reads what a store loaded only to that end reads."""
    if not _redis_available():
        if os.environ.get("CI"):
            pytest.fail("Redis is not running on 127.0.0.1:6379 in CI")
        pytest.skip("Redis is not running on 127.0.0.1:6379 (not CI)")
    import redis

    redis.Redis(db=12).flushdb()
    try:
        _project(tmp_path / "redis")
        cfg = StoreConfig(repo=tmp_path / "redis" / "features" / "repo", online_store="redis", redis=REDIS_REBUILD)
        apply(cfg)
        materialize(cfg, end=ts(4))
        reader = OnlineFeatures(online_backend(cfg))
        newer = list(reader.user(2).history["hist_post_ids"])  # (101,) at ts(4), empty at ts(3)
        materialize(cfg, end=ts(3))  # the data rebuilt to end a day earlier
        _project(tmp_path / "sqlite")
        only = StoreConfig(repo=tmp_path / "sqlite" / "features" / "repo")
        apply(only)
        materialize(only, end=ts(3))
        expected = OnlineFeatures(online_backend(only))
        for user in (1, 2):
            got, want = OnlineFeatures(online_backend(cfg)).user(user), expected.user(user)
            assert list(got.history["hist_post_ids"]) == list(want.history["hist_post_ids"]), user
            assert got.stats == want.stats, user
        assert list(expected.user(2).history["hist_post_ids"]) != newer, "the tiny world must differ between ends"
    finally:
        redis.Redis(db=12).flushdb()
