"""Batch features: event-time windowed snapshots of users, authors, posts, histories and graphs (DuckDB -> parquet).

Every feature row carries an `event_timestamp` T and is computed only from events strictly before T, so a
point-in-time join (latest row with T <= impression time) can never see the impression's own outcome or anything
after it. Users, authors, histories and graphs are snapshotted at every day boundary (the history is therefore
"frozen at the start of the day" offline; serving updates it in real time through the push source); posts, whose
life is short, at every hour boundary in which they were shown, plus a zero row at creation.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from core.actions import ACTION_NAMES, NEGATIVE_ACTIONS, POSITIVE_ACTIONS
from core.errors import UserError
from core.io import atomic_dir
from core.schema import Manifest, impression_files
from features.catalog import WINDOWS

DAY_MS = 86_400_000
HOUR_MS = 3_600_000
FEATURE_TABLES = ("user_stats", "author_stats", "post_stats", "user_history", "user_graph")


@dataclass(frozen=True)
class BuildConfig:
    """Knobs of the batch feature build (params.yaml `features`)."""

    history_length: int = 128  # last N engagements kept per user (Phoenix R1 default history S = 128)
    smoothing: float = 20.0  # pseudo-impressions of the global rate added to author/post rates
    memory_limit: str = "2GB"  # DuckDB spills to disk beyond this: bounded memory at medium scale
    threads: int = 2
    rows_per_chunk: int = 2_000_000  # impressions per user bucket in the history/graph joins


def _sql_str_list(paths: list[str]) -> str:
    """A DuckDB list literal of quoted strings (paths cannot be bound as parameters in a view definition)."""
    return "[" + ", ".join("'" + p.replace("'", "''") + "'" for p in paths) + "]"


def _sql_list(names: tuple[str, ...] | list[str], fmt: str, sep: str = ",\n    ") -> str:
    return sep.join(fmt.format(a=a) for a in names)


def build_features(dataset: Path, out: Path, cfg: BuildConfig | None = None) -> dict[str, int]:
    """Builds the offline feature tables of `dataset` into `out` (atomically).

    Returns:
        row counts per feature table.
    """
    import duckdb

    cfg = cfg or BuildConfig()
    manifest = Manifest.load(dataset)
    parts = [str(p) for p in impression_files(dataset)]
    with atomic_dir(out) as tmp:
        con = duckdb.connect()
        con.execute(
            f"SET memory_limit='{cfg.memory_limit}'; SET threads={cfg.threads}; SET preserve_insertion_order=false"
        )
        con.execute(f"SET temp_directory='{tmp / '.duckdb_tmp'}'")
        con.execute(f"CREATE VIEW imp AS SELECT * FROM read_parquet({_sql_str_list(parts)})")
        for name in ("users", "posts", "follows"):
            table_sql = _sql_str_list([str(dataset / f"{name}.parquet")])
            con.execute(f"CREATE VIEW {name} AS SELECT * FROM read_parquet({table_sql})")
        span = con.execute(
            f"SELECT floor(min(epoch_ms(ts)) / {DAY_MS})::BIGINT * {DAY_MS}, max(epoch_ms(ts)) FROM imp"
        ).fetchone()
        if span is None or span[0] is None:
            raise UserError(f"{dataset / 'impressions'}: no impressions to build features from")
        t0, t_end = span
        n_snap = int((t_end - t0) // DAY_MS) + 2  # day boundaries from the first day's start past the last event
        con.execute(f"CREATE TABLE snaps AS SELECT k, {t0} + k * {DAY_MS} AS t_ms FROM range({n_snap}) r(k)")
        con.execute(
            f"""CREATE TABLE daily AS SELECT user_id, ((epoch_ms(ts) - {t0}) // {DAY_MS})::INT AS d, count(*) AS n,
            {_sql_list(ACTION_NAMES, 'sum("{a}")::INT AS "{a}"')},
            sum(CASE WHEN {" + ".join(f'"{x}"' for x in NEGATIVE_ACTIONS)} > 0 THEN 1 ELSE 0 END)::INT AS neg
            FROM imp GROUP BY ALL"""
        )
        # The smoothing prior at snapshot k is the global rate over events before it (a full-data mean would leak
        # the future into every rate).
        con.execute(
            f"""CREATE TABLE prior AS SELECT s.k,
            {_sql_list(ACTION_NAMES, 'coalesce(sum(dl."{a}") / nullif(sum(dl.n), 0), 0) AS "{a}"')},
            coalesce(sum(dl.neg) / nullif(sum(dl.n), 0), 0) AS neg
            FROM snaps s LEFT JOIN daily dl ON dl.d < s.k GROUP BY s.k"""
        )
        rows = {}
        rows["user_stats"] = _user_stats(con, tmp)
        rows["author_stats"] = _author_stats(con, tmp, cfg)
        rows["post_stats"] = _post_stats(con, tmp, cfg, t0, n_snap)
        n_chunks = max(1, _count(con, "SELECT count(*) FROM imp") // cfg.rows_per_chunk)
        rows["user_history"] = _user_history(con, tmp, cfg, n_chunks)
        rows["user_graph"] = _user_graph(con, tmp, n_chunks)
        con.close()
        shutil.rmtree(tmp / ".duckdb_tmp", ignore_errors=True)
        source = {"dataset": manifest.dataset, "observed_actions": list(manifest.observed_actions), "rows": rows}
        (tmp / "source.json").write_text(json.dumps(source, indent=2, sort_keys=True) + "\n")
    return rows


def _copy(con, query: str, path: Path) -> int:
    con.execute(f"COPY ({query}) TO '{path}' (FORMAT parquet, COMPRESSION zstd)")
    return _count(con, f"SELECT count(*) FROM read_parquet('{path}')")


def _count(con, query: str) -> int:
    row = con.execute(query).fetchone()
    return int(row[0]) if row else 0


def _copy_by_user(con, query: str, path: Path, n_chunks: int) -> int:
    """Runs `query` once per user bucket and concatenates the parts (`<user column> {bucket}` selects a bucket).

    The per-user windows of the history and graph joins grow with users x snapshots; a bucket at a time keeps
    DuckDB within its memory limit at medium scale and beyond.
    """
    if n_chunks <= 1:
        return _copy(con, query.format(bucket="% 1 = 0"), path)
    parts = [path.with_name(f".{path.stem}.part{b:03d}.parquet") for b in range(n_chunks)]
    for b, part in enumerate(parts):
        _copy(con, query.format(bucket=f"% {n_chunks} = {b}"), part)
    total = _copy(con, f"SELECT * FROM read_parquet({_sql_str_list([str(p) for p in parts])})", path)
    for part in parts:
        part.unlink()
    return total


def _user_stats(con, tmp: Path) -> int:
    """Per user and day boundary: counts and rates of each action over 1/7/28 days, account age, graph sizes."""
    counts = []
    for w in WINDOWS:
        counts.append(f"coalesce(sum(dl.n) FILTER (WHERE dl.d >= s.k - {w}), 0)::INT AS user_impressions_{w}d")
        counts += [
            f'coalesce(sum(dl."{a}") FILTER (WHERE dl.d >= s.k - {w}), 0)::INT AS user_{a}_{w}d' for a in ACTION_NAMES
        ]
    rates = [
        f"CASE WHEN user_impressions_{w}d > 0 THEN user_{a}_{w}d / user_impressions_{w}d ELSE 0 END::FLOAT "
        f"AS user_{a}_rate_{w}d"
        for w in WINDOWS
        for a in ACTION_NAMES
    ]
    query = f"""
    WITH grid AS (SELECT u.user_id, s.k, s.t_ms, epoch_ms(u.created_at) AS created_ms, u.country, u.language,
                         u.age_bucket, u.activity FROM users u CROSS JOIN snaps s),
    agg AS (SELECT s.user_id, s.k, s.t_ms, any_value(s.created_ms) AS created_ms, any_value(s.country) AS country,
                   any_value(s.language) AS language, any_value(s.age_bucket) AS age_bucket,
                   any_value(s.activity) AS activity,
                   {", ".join(counts)}
            FROM grid s LEFT JOIN daily dl ON dl.user_id = s.user_id AND dl.d < s.k AND dl.d >= s.k - 28
            GROUP BY s.user_id, s.k, s.t_ms),
    fol AS (SELECT s.k, f.followee_id AS user_id, count(*)::INT AS c FROM follows f JOIN snaps s
            ON epoch_ms(f.created_at) < s.t_ms GROUP BY ALL),
    fee AS (SELECT s.k, f.follower_id AS user_id, count(*)::INT AS c FROM follows f JOIN snaps s
            ON epoch_ms(f.created_at) < s.t_ms GROUP BY ALL)
    SELECT agg.user_id, make_timestamptz(agg.t_ms * 1000) AS event_timestamp,
           ((agg.t_ms - agg.created_ms) / {DAY_MS})::FLOAT AS user_account_age_days,
           coalesce(fol.c, 0) AS user_follower_count, coalesce(fee.c, 0) AS user_followee_count,
           agg.country AS user_country, agg.language AS user_language, agg.age_bucket AS user_age_bucket,
           agg.activity AS user_activity,
           {", ".join(c.rsplit(" AS ", 1)[1] for c in counts)},
           {", ".join(rates)}
    FROM agg LEFT JOIN fol ON fol.user_id = agg.user_id AND fol.k = agg.k
             LEFT JOIN fee ON fee.user_id = agg.user_id AND fee.k = agg.k
    WHERE agg.created_ms < agg.t_ms
    ORDER BY agg.user_id, event_timestamp"""
    return _copy(con, query, tmp / "user_stats.parquet")


def _author_stats(con, tmp: Path, cfg: BuildConfig) -> int:
    """Per author and day boundary: followers, posting rate, smoothed 28-day engagement and negative rates."""
    a = cfg.smoothing
    pos_rates = [
        f'((coalesce(sum(e."{x}"), 0) + {a} * any_value(g."{x}")) / (coalesce(sum(e.n), 0) + {a}))::FLOAT '
        f"AS author_{x}_rate"
        for x in ACTION_NAMES
    ]
    query = f"""
    WITH per_author_day AS (
        SELECT author_id, ((epoch_ms(ts) - (SELECT min(t_ms) FROM snaps)) // {DAY_MS})::INT AS d, count(*) AS n,
               {_sql_list(ACTION_NAMES, 'sum("{a}") AS "{a}"')},
               sum(CASE WHEN {" + ".join(f'"{x}"' for x in NEGATIVE_ACTIONS)} > 0 THEN 1 ELSE 0 END) AS neg
        FROM imp GROUP BY ALL),
    authors AS (SELECT DISTINCT author_id FROM posts),
    grid AS (SELECT a.author_id, s.k, s.t_ms FROM authors a CROSS JOIN snaps s),
    eng AS (SELECT grid.author_id, grid.k, grid.t_ms,
                   {", ".join(pos_rates)},
                   ((coalesce(sum(e.neg), 0) + {a} * any_value(g.neg)) / (coalesce(sum(e.n), 0) + {a}))::FLOAT
                       AS author_negative_rate,
                   coalesce(sum(e.n), 0)::INT AS author_impressions_28d
            FROM grid JOIN prior g ON g.k = grid.k
            LEFT JOIN per_author_day e ON e.author_id = grid.author_id AND e.d < grid.k AND e.d >= grid.k - 28
            GROUP BY grid.author_id, grid.k, grid.t_ms),
    posting AS (SELECT s.k, p.author_id, count(*)::INT AS c FROM posts p JOIN snaps s
                ON epoch_ms(p.created_at) < s.t_ms AND epoch_ms(p.created_at) >= s.t_ms - 7 * {DAY_MS} GROUP BY ALL),
    fol AS (SELECT s.k, f.followee_id AS author_id, count(*)::INT AS c FROM follows f JOIN snaps s
            ON epoch_ms(f.created_at) < s.t_ms GROUP BY ALL)
    SELECT eng.author_id, make_timestamptz(eng.t_ms * 1000) AS event_timestamp,
           coalesce(fol.c, 0) AS author_follower_count,
           (coalesce(posting.c, 0) / 7.0)::FLOAT AS author_posts_per_day,
           eng.author_impressions_28d, eng.author_negative_rate,
           {", ".join(f"eng.author_{x}_rate" for x in ACTION_NAMES)}
    FROM eng LEFT JOIN posting ON posting.author_id = eng.author_id AND posting.k = eng.k
             LEFT JOIN fol ON fol.author_id = eng.author_id AND fol.k = eng.k
    ORDER BY eng.author_id, event_timestamp"""
    return _copy(con, query, tmp / "author_stats.parquet")


def _post_stats(con, tmp: Path, cfg: BuildConfig, t0: int, n_snap: int) -> int:
    """Per post: a zero row at creation, then cumulative counts and smoothed rates at each hour boundary after a
    shown hour."""
    a = cfg.smoothing
    query = f"""
    WITH hourly AS (
        SELECT post_id, (epoch_ms(ts) // {HOUR_MS} + 1) * {HOUR_MS} AS t_ms, count(*) AS n,
               {_sql_list(ACTION_NAMES, 'sum("{a}") AS "{a}"')}
        FROM imp GROUP BY ALL),
    cum AS (
        SELECT post_id, t_ms, sum(n) OVER w AS n,
               {_sql_list(ACTION_NAMES, 'sum("{a}") OVER w AS "{a}"')}
        FROM hourly WINDOW w AS (PARTITION BY post_id ORDER BY t_ms ROWS UNBOUNDED PRECEDING)),
    rows AS (
        SELECT p.post_id, epoch_ms(p.created_at) AS t_ms, 0 AS n,
               {_sql_list(ACTION_NAMES, '0 AS "{a}"')}
        FROM posts p
        UNION ALL SELECT * FROM cum)
    SELECT r.post_id, make_timestamptz(r.t_ms * 1000) AS event_timestamp,
           epoch_ms(p.created_at) AS post_created_at_ms, p.author_id AS post_author_id, p.topic AS post_topic,
           p.media_type AS post_media_type, r.n::INT AS post_impressions,
           {_sql_list(ACTION_NAMES, 'r."{a}"::INT AS post_{a}_count')},
           {_sql_list(ACTION_NAMES, f'((r."{{a}}" + {a} * g."{{a}}") / (r.n + {a}))::FLOAT AS post_{{a}}_rate')}
    FROM rows r JOIN posts p USING (post_id)
    JOIN prior g ON g.k = greatest(0, least((r.t_ms - {t0}) // {DAY_MS}, {n_snap - 1}))
    """  # no ORDER BY: sorting 10M+ wide rows is what exhausts the memory limit at medium scale
    return _copy(con, query, tmp / "post_stats.parquet")


def _user_history(con, tmp: Path, cfg: BuildConfig, n_chunks: int) -> int:
    """Per user and day boundary: the last N engagements before it, oldest first, as parallel arrays."""
    bits = " | ".join(f'("{a}"::BIGINT << {i})' for i, a in enumerate(ACTION_NAMES))
    any_action = " OR ".join(f'"{a}" = 1' for a in ACTION_NAMES)
    n = cfg.history_length
    query = f"""
    WITH eng AS (SELECT user_id, post_id, author_id, surface, epoch_ms(ts) AS ts_ms, ({bits}) AS mask
                 FROM imp WHERE ({any_action}) AND user_id {{bucket}}),
    ranked AS (SELECT s.k, s.t_ms, e.*,
                      row_number() OVER (PARTITION BY e.user_id, s.k ORDER BY e.ts_ms DESC, e.post_id DESC) AS rn
               FROM eng e JOIN snaps s ON e.ts_ms < s.t_ms),
    kept AS (SELECT * FROM ranked WHERE rn <= {n})
    SELECT user_id, make_timestamptz(any_value(t_ms) * 1000) AS event_timestamp,
           list(post_id ORDER BY rn DESC) AS hist_post_ids,
           list(author_id ORDER BY rn DESC) AS hist_author_ids,
           list(mask ORDER BY rn DESC) AS hist_actions,
           list(surface::BIGINT ORDER BY rn DESC) AS hist_surfaces,
           list(ts_ms ORDER BY rn DESC) AS hist_timestamps,
           count(*)::INT AS hist_length
    FROM kept GROUP BY user_id, k ORDER BY user_id, event_timestamp"""
    # POSITIVE_ACTIONS order equals the bit order of core.actions: bit i is ACTION_NAMES[i].
    assert ACTION_NAMES[: len(POSITIVE_ACTIONS)] == POSITIVE_ACTIONS
    return _copy_by_user(con, query, tmp / "user_history.parquet", n_chunks)


def _user_graph(con, tmp: Path, n_chunks: int) -> int:
    """Per user and day boundary: followees, and authors the user blocked or muted before it."""
    query = """
    WITH fee AS (SELECT s.k, f.follower_id AS user_id, list(f.followee_id ORDER BY f.followee_id) AS ids
                 FROM follows f JOIN snaps s ON epoch_ms(f.created_at) < s.t_ms
                 WHERE f.follower_id {bucket} GROUP BY ALL),
    blk AS (SELECT s.k, i.user_id, list(DISTINCT i.author_id ORDER BY i.author_id) AS ids FROM imp i JOIN snaps s
            ON epoch_ms(i.ts) < s.t_ms WHERE i.block_author = 1 AND i.user_id {bucket} GROUP BY ALL),
    mut AS (SELECT s.k, i.user_id, list(DISTINCT i.author_id ORDER BY i.author_id) AS ids FROM imp i JOIN snaps s
            ON epoch_ms(i.ts) < s.t_ms WHERE i.mute_author = 1 AND i.user_id {bucket} GROUP BY ALL),
    keys AS (SELECT k, user_id FROM fee UNION SELECT k, user_id FROM blk UNION SELECT k, user_id FROM mut)
    SELECT keys.user_id, make_timestamptz(s.t_ms * 1000) AS event_timestamp,
           coalesce(fee.ids, []::BIGINT[]) AS followee_ids,
           coalesce(blk.ids, []::BIGINT[]) AS blocked_author_ids,
           coalesce(mut.ids, []::BIGINT[]) AS muted_author_ids
    FROM keys JOIN snaps s USING (k)
    LEFT JOIN fee USING (k, user_id) LEFT JOIN blk USING (k, user_id) LEFT JOIN mut USING (k, user_id)
    ORDER BY keys.user_id, event_timestamp"""
    return _copy_by_user(con, query, tmp / "user_graph.parquet", n_chunks)
