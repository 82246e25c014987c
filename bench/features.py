"""Feature-store benchmarks on the `small` synthetic data: online reads (direct reader vs Feast, SQLite and Redis),
materialization throughput and point-in-time training-set build time.

Needs the outputs of `make run` (data/features, the registry and the SQLite online store). Redis is measured on a
separate copy of the repo (its own registry, Redis database 13) so the two stores do not share materialization state.
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.harness import Row, save
from core.online_store import REDIS_ADDRESS
from features.catalog import AUTHOR_STATS, POST_STATS, USER_GRAPH, USER_HISTORY, USER_STATS
from features.online import OnlineFeatures, open_backend
from features.store import StoreConfig, apply, materialize, offline_end, open_store

REPO = Path(__file__).resolve().parents[1]
REDIS = f"{REDIS_ADDRESS},db=13"
# Where the cited Feast figures come from (not measured here; the side-by-side Feast rows are):
FEAST_BLOG = (
    "feast.dev blog 'Tuning the Feast Feature Server for Sub-2ms Online Serving', 2026-06-02, p99 of 200 iterations "
    "after 30-50 warm-up, Redis 7.0.12 in a Kubernetes cluster, 4-core pods, CPU model not stated"
)
USER_FEATURES = [f"{v.name}:{f}" for v in (USER_STATS, USER_HISTORY, USER_GRAPH) for f in v.names]
CANDIDATE_FEATURES = [f"{v.name}:{f}" for v in (POST_STATS, AUTHOR_STATS) for f in v.names]


def timed(fn: Callable[[int], object], reps: int) -> list[float]:
    out = []
    for i in range(reps):
        start = time.perf_counter()
        fn(i)
        out.append((time.perf_counter() - start) * 1000.0)
    return out


def row(name: str, settings: str, command: str, ms: list[float], target: float | None = None, anchor: str = "") -> Row:
    p50, p99 = float(np.percentile(ms, 50)), float(np.percentile(ms, 99))
    r = Row(
        group="features",
        name=name,
        command=command,
        settings=settings,
        repeats=len(ms),
        wall_s_median=round(p50 / 1000, 6),
        wall_s_p99=round(p99 / 1000, 6),
        peak_rss_mb_max=0.0,
        throughput=f"p50 {p50:.2f} ms, p99 {p99:.2f} ms",
    )
    if target is not None:
        r.target = f"p99 <= {target:g} ms" + (f" ({anchor})" if anchor else "")
        r.verdict = f"{'met' if p99 <= target else 'missed'}: {p99 / target:.2f}x of target"
    elif anchor:
        r.target = anchor
    return r


CMD = "make bench  (python -m bench.features)"


def online_rows(
    cfg: StoreConfig, label: str, users: np.ndarray, posts: np.ndarray, author_of: dict[int, int], reps: int
) -> list[Row]:
    """Reads of one store: a user's features and 500 candidates' features, direct and through Feast, side by side."""
    backend = open_backend(cfg.online)
    store = open_store(cfg)
    return _user_rows(backend, store, label, users, reps) + _candidate_rows(
        backend, store, label, posts, author_of, reps
    )


def _user_rows(backend: Any, store: Any, label: str, users: np.ndarray, reps: int) -> list[Row]:
    """One user's features, history and graph: the direct reader against Feast's get_online_features."""
    reader = OnlineFeatures(backend)
    direct_user = timed(lambda i: reader.user(int(users[i % len(users)])), reps)
    direct = row(f"user features + history + graph, direct ({label})", "1 user, 94 features", CMD, direct_user, 2.0,
                 f"cited, another machine: {FEAST_BLOG}; tuned REST API, 1 row: p99 4.61 ms")  # fmt: skip
    feast_user = timed(
        lambda i: store.get_online_features(USER_FEATURES, [{"user_id": int(users[i % len(users)])}]).to_dict(), reps
    )
    feast = row(
        f"user features + history + graph, Feast get_online_features ({label})",
        "1 user, 94 features",
        CMD,
        feast_user,
        anchor="side-by-side anchor",
    )
    direct.verdict += f"; {np.percentile(feast_user, 50) / np.percentile(direct_user, 50):.1f}x faster than Feast (p50)"
    return [direct, feast]


def _candidate_rows(
    backend: Any, store: Any, label: str, posts: np.ndarray, author_of: dict[int, int], reps: int
) -> list[Row]:
    """500 candidates' post and author features: direct with a cold and a warm cache, and through Feast."""
    reader = OnlineFeatures(backend)
    batches = [posts[(i * 500) % len(posts) : (i * 500) % len(posts) + 500] for i in range(max(1, len(posts) // 500))]

    def cold(i: int) -> None:
        OnlineFeatures(backend).candidates(batches[i % len(batches)])

    cold_ms = timed(cold, max(20, reps // 10))
    cold_row = row(
        f"500 candidates, direct, cold cache ({label})",
        "500 posts + authors, 54 features; a new reader per call, batches cycled: every row read from the store",
        CMD,
        cold_ms,
    )
    reader.candidates(batches[0])
    warm = timed(lambda i: reader.candidates(batches[0]), reps)
    warm_row = row(
        f"500 candidates, direct, warm cache ({label})",
        "500 posts + authors, 54 features; the same 500 again: an in-process cache hit, no store read (what a repeat "
        "of a request's candidates costs; not comparable with a store read)",
        CMD,
        warm,
        5.0,
        f"cited, another machine: {FEAST_BLOG}; regular read path, 500 rows: p99 424.91 ms",
    )

    def feast_cands(i: int) -> None:
        b = batches[i % len(batches)]
        store.get_online_features(CANDIDATE_FEATURES, [{"post_id": int(p), "author_id": author_of[int(p)]} for p in b])

    feast_ms = timed(feast_cands, max(20, reps // 10))
    feast_row = row(
        f"500 candidates, Feast get_online_features ({label})",
        "500 posts + authors, 54 features",
        CMD,
        feast_ms,
        anchor="side-by-side anchor",
    )
    # Like for like: both read every row from the store (the warm row reads none, so no ratio is drawn from it).
    cold_row.verdict = f"{np.percentile(feast_ms, 50) / np.percentile(cold_ms, 50):.1f}x faster than Feast (p50)"
    return [cold_row, warm_row, feast_row]


def materialize_row(cfg: StoreConfig, label: str) -> Row:
    start = time.perf_counter()
    materialize(cfg)
    seconds = time.perf_counter() - start
    if cfg.online_store == "sqlite":
        db = sqlite3.connect(cfg.online.sqlite_path)
        n = sum(
            db.execute(f"SELECT count(*) FROM ember_{v}").fetchone()[0]
            for v in ("user_stats", "user_history", "user_graph", "author_stats", "post_stats")
        )
    else:
        import redis

        r = redis.Redis(db=13)
        n = sum(int(r.hlen(k)) for k in r.scan_iter(match=b"*ember", count=1000))  # type: ignore[arg-type, misc]
    return Row(
        group="features",
        name=f"materialize, 2-day window ({label})",
        command="ember features materialize" + (" --online-store redis" if label == "redis" else ""),
        settings="small: 5 views, newest rows of [end-2d, end]",
        repeats=1,
        wall_s_median=round(seconds, 2),
        wall_s_p99=round(seconds, 2),
        peak_rss_mb_max=0.0,
        throughput=f"{n / seconds:,.0f} feature values/s ({n:,} values)",
    )


def training_set_row(repeats: int) -> Row:
    walls = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            argv = [sys.executable, "-m", "cli.main", "features", "training-set", "--model", "ranker",
                    "--start", "2026-01-08", "--end", "2026-01-09", "--out", f"{tmp}/ts"]  # fmt: skip
            start = time.perf_counter()
            subprocess.run(argv, cwd=REPO, check=True, capture_output=True)
            walls.append(time.perf_counter() - start)
            n = len(pd.read_parquet(f"{tmp}/ts/training_set.parquet", columns=["impression_id"]))
    med = float(np.median(walls))
    return Row(
        group="features",
        name="ranker training set, 1 day (Feast DuckDB offline store)",
        command="ember features training-set --model ranker --start 2026-01-08 --end 2026-01-09 --out OUT",
        settings=f"small, {n:,} impressions x 178 columns",
        repeats=repeats,
        wall_s_median=round(med, 2),
        wall_s_p99=round(float(np.percentile(walls, 99)), 2),
        peak_rss_mb_max=0.0,
        throughput=f"{n / med:,.0f} rows/s",
        target="anchor: Feast file offline store, same query, 344 s in 1 run during development on a 2-core project "
        "machine (CPU model not recorded; it also drops rows, see README)",
    )


def repo_over(root: Path, source: StoreConfig) -> Path:
    """A copy of the Feast repo under `root` reading `source`'s offline features: its own registry and online
    store, so a fresh materialization can be timed without touching the project's."""
    shutil.copytree(
        REPO / "features" / "repo", root / "features" / "repo", ignore=shutil.ignore_patterns("__pycache__")
    )
    (root / "data").mkdir()
    (root / "data" / "features").symlink_to(source.data_dir / "features")
    return root / "features" / "repo"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reps", type=int, default=1000)
    parser.add_argument("--training-set-repeats", type=int, default=2)
    args = parser.parse_args()
    sqlite_cfg = StoreConfig()
    end = offline_end(sqlite_cfg)
    users = np.random.default_rng(0).integers(1, 10_001, size=args.reps)
    posts_df = pd.read_parquet(
        sqlite_cfg.data_dir / "features" / "post_stats.parquet",
        columns=["post_id", "post_author_id", "event_timestamp"],
    )
    posts = posts_df[posts_df.event_timestamp >= end - pd.Timedelta(days=1)].post_id.unique()
    author_of = dict(zip(posts_df.post_id.tolist(), posts_df.post_author_id.tolist(), strict=True))
    rows = online_rows(sqlite_cfg, "sqlite", users, posts, author_of, args.reps)

    import redis

    redis.Redis(db=13).flushdb()
    with tempfile.TemporaryDirectory(prefix="ember-bench-redis-") as tmp:
        redis_cfg = StoreConfig(repo=repo_over(Path(tmp), sqlite_cfg), online_store="redis", redis=REDIS)
        apply(redis_cfg)
        rows.append(materialize_row(redis_cfg, "redis"))
        rows += online_rows(redis_cfg, "redis", users, posts, author_of, args.reps)
    redis.Redis(db=13).flushdb()
    with tempfile.TemporaryDirectory(prefix="ember-bench-sqlite-") as tmp:
        fresh = StoreConfig(repo=repo_over(Path(tmp), sqlite_cfg))
        apply(fresh)
        rows.append(materialize_row(fresh, "sqlite"))
    rows.append(training_set_row(args.training_set_repeats))
    print(save("features", rows))


if __name__ == "__main__":
    main()
