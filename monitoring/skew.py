"""Train/serve skew: the user feature values the service logged with each request (the exposure log's `features`)
against the offline recompute at the same time, a point-in-time lookup of the same user's rows in the offline
feature tables (data/features: user_stats, user_history -> hist_length, user_graph -> n_followees), each keyed by
(user_id, event_timestamp) and valid from its event_timestamp on. The history is the one feature serving updates in
real time by design (engagements through the push source): its served length is compared with the offline length
plus the events the request logged as pushed since the day began (`hist_live`), capped at the history length.

Reported as a mismatch rate: over all compared (request, feature) values and per feature. Numbers match within
atol + rtol * |offline|; text must be equal; a value missing on exactly one side is a mismatch. Requests served
without features (a fallback: nothing to compare) and requests whose user has no offline row yet are counted, not
compared.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from monitoring.config import SkewConfig
from monitoring.drift import Status

TIME = "_lookup_ms"
# Logged with the user features: history events from the request's own day, which the offline snapshot (at the
# day's start) cannot hold and the push source added online (serving/recommender_pipeline.py).
LIVE = "hist_live"
CANDIDATE_PREFIX = "cand_"  # monitoring.exposure_frame: a served item's logged candidate input
AUTHOR_COLUMN = CANDIDATE_PREFIX + "post_author_id"
# Logged with the request but not a feature value of an offline table.
NOT_FEATURES = frozenset(
    {"request_id", "ts", "user_id", "surface", "variant", "version", "endpoint", "degraded", "fallback", "post_id",
     "position", "score", "source", "kind", "n_missing_views", "event_timestamp"}
)  # fmt: skip


@dataclass
class SkewResult:
    """rate: mismatched / compared values; per_feature: {feature: {rate, mismatched, compared}}."""

    status: Status
    rate: float | None
    per_feature: dict[str, dict[str, Any]] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)
    n_requests: int = 0
    n_compared: int = 0  # requests with features and an offline row
    n_without_features: int = 0
    n_without_offline_row: int = 0
    n_items_compared: int = 0  # served items with logged candidate inputs and an offline post row
    n_items_without_offline_row: int = 0
    examples: list[dict[str, Any]] = field(default_factory=list)  # a few mismatches, for the report
    kind: str = "skew"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _epoch_ms(values: pd.Series) -> np.ndarray:
    ts = pd.to_datetime(values, utc=True)
    return np.asarray((ts - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(milliseconds=1), dtype=np.int64)


def point_in_time(left: pd.DataFrame, right: pd.DataFrame, time_ms: str = TIME, key: str = "user_id") -> pd.DataFrame:
    """Each left row (`key`, `time_ms`) joined with the newest right row of the same `key` whose
    event_timestamp <= that time (NaN columns when there is none); left's row order is kept."""
    r = right.copy()
    r[TIME + "_r"] = _epoch_ms(r["event_timestamp"])
    r = r.drop(columns="event_timestamp").sort_values(TIME + "_r", kind="stable")
    left_sorted = left.assign(_row=np.arange(len(left))).sort_values(time_ms, kind="stable")
    joined = pd.merge_asof(
        left_sorted, r, left_on=time_ms, right_on=TIME + "_r", by=key, direction="backward",
        suffixes=("", "_offline"),
    )  # fmt: skip
    return joined.sort_values("_row").drop(columns=["_row"]).reset_index(drop=True)


def _read_rows(path: Path, key: str, wanted: list[int]) -> pd.DataFrame:
    """The rows of an offline table whose `key` is in `wanted`; an unreadable file is a UserError naming it."""
    import pyarrow.parquet as pq

    from core.errors import UserError

    try:
        return pq.read_table(path, filters=[(key, "in", wanted)]).to_pandas()
    except Exception as err:  # pyarrow raises several types for a bad file
        raise UserError(f"{path}: not a readable parquet file: {str(err).splitlines()[0]}") from None


def read_user_tables(features: Path, users: np.ndarray) -> dict[str, pd.DataFrame]:
    """The offline user tables of `features` (a data/features directory), only the rows of `users`."""
    from core.errors import UserError

    out: dict[str, pd.DataFrame] = {}
    wanted = [int(u) for u in np.unique(users)]
    for name in ("user_stats", "user_history", "user_graph"):
        path = Path(features) / f"{name}.parquet"
        if not path.exists():
            continue
        out[name] = _read_rows(path, "user_id", wanted)
    if "user_stats" not in out:
        raise UserError(f"{features}: no user_stats.parquet (run `ember features build`)")
    return out


def read_candidate_tables(features: Path, served: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The offline post_stats rows of the served items that logged their candidate inputs (`cand_*` columns) and
    the author_stats rows of their authors; {} when no item logged them."""

    columns = [c for c in served.columns if c.startswith(CANDIDATE_PREFIX)]
    if not columns or "post_id" not in served.columns:
        return {}
    logged = served[served[columns].notna().any(axis=1)]
    out: dict[str, pd.DataFrame] = {}
    for name, key, column in (("post_stats", "post_id", "post_id"), ("author_stats", "author_id", AUTHOR_COLUMN)):
        path = Path(features) / f"{name}.parquet"
        if column not in logged.columns or not path.exists():
            continue
        wanted = [int(v) for v in pd.to_numeric(logged[column], errors="coerce").dropna().unique()]
        if not wanted:
            continue
        out[name] = _read_rows(path, key, wanted)
    return out


def candidate_recompute(items: pd.DataFrame, tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """The offline post_stats and author_stats values of each served item at its lookup time, one row per item, in
    order; `_has_post_row` says whether the post had an offline row then."""
    base = pd.DataFrame({"post_id": pd.to_numeric(items["post_id"], errors="coerce").fillna(-1).astype("int64")})
    base[TIME] = items[TIME].to_numpy()
    out = pd.DataFrame(index=base.index)
    posts = tables.get("post_stats")
    if posts is not None:
        joined = point_in_time(base, posts, key="post_id")
        out = joined.drop(columns=["post_id", TIME])
        out["_has_post_row"] = joined[TIME + "_r"].notna().to_numpy()
    else:
        out["_has_post_row"] = False
    authors = tables.get("author_stats")
    if authors is not None and AUTHOR_COLUMN in items.columns:
        left = pd.DataFrame({"author_id": pd.to_numeric(items[AUTHOR_COLUMN], errors="coerce").fillna(-1)})
        left["author_id"] = left["author_id"].astype("int64")
        left[TIME] = base[TIME].to_numpy()
        joined = point_in_time(left, authors, key="author_id")
        for column in joined.columns:
            if column.startswith("author_") and column != "author_id":
                out[column] = joined[column].to_numpy()
    return out.drop(columns=[c for c in out.columns if c.startswith(TIME)])


def offline_recompute(requests: pd.DataFrame, tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """The offline values of each request's user at its lookup time: user_stats columns, hist_length and n_followees
    (what serving/recommender_pipeline.py logs), one row per request, in order."""
    base = requests[["user_id", TIME]].copy()
    base["user_id"] = base["user_id"].astype("int64")
    stats = point_in_time(base, tables["user_stats"])
    stats["_has_row"] = stats[TIME + "_r"].notna()
    out = stats.drop(columns=[TIME + "_r"])
    history = tables.get("user_history")
    if history is not None:
        joined = point_in_time(base, history[["user_id", "event_timestamp", "hist_post_ids"]])
        # A user with no history row has an empty history online too (the store's default).
        out["hist_length"] = joined["hist_post_ids"].map(lambda v: len(v) if isinstance(v, list | np.ndarray) else 0)
    graph = tables.get("user_graph")
    if graph is not None:
        joined = point_in_time(base, graph[["user_id", "event_timestamp", "followee_ids"]])
        out["n_followees"] = joined["followee_ids"].map(lambda v: len(v) if isinstance(v, list | np.ndarray) else 0)
    return out


def _mismatch(served: pd.Series, offline: pd.Series, cfg: SkewConfig) -> np.ndarray:
    s_num = pd.to_numeric(served, errors="coerce")
    o_num = pd.to_numeric(offline, errors="coerce")
    numeric = (s_num.notna() | served.isna()) & (o_num.notna() | offline.isna())
    if bool(numeric.all()):
        a, b = s_num.to_numpy(np.float64), o_num.to_numpy(np.float64)
        both_nan = np.isnan(a) & np.isnan(b)
        close = np.abs(a - b) <= cfg.atol + cfg.rtol * np.abs(b)
        return ~(both_nan | close)
    a_txt, b_txt = served.astype("string"), offline.astype("string")
    both_na = (a_txt.isna() & b_txt.isna()).to_numpy()
    equal = (a_txt == b_txt).fillna(False).to_numpy(bool)
    return ~(both_na | equal)


_Comparison = tuple[str, pd.DataFrame, pd.DataFrame]  # (feature, served rows, offline rows, aligned by position)


def _lookup_ms(frame: pd.DataFrame, as_of: datetime | None) -> np.int64 | pd.Series:
    """The feature time (epoch ms) of each row: the service's fixed `as_of`, else the row's ts."""
    if as_of is not None:
        return np.int64(as_of.timestamp() * 1000)
    return (pd.to_numeric(frame["ts"], errors="coerce").fillna(0) * 1000).astype("int64")


def _unusable(served: pd.DataFrame | None, tables: dict[str, pd.DataFrame], as_of: datetime | None) -> list[str]:
    """Why nothing can be compared (an empty window, a missing column, no user_stats table); [] when it can."""
    if served is None or len(served) == 0:
        return ["current window is empty"]
    missing = [c for c in ("request_id", "user_id") if c not in served.columns]
    if as_of is None and "ts" not in served.columns:
        missing.append("ts")
    if missing:
        return [f"column {c!r} is missing from the current window" for c in missing]
    if "user_stats" not in tables:
        return ["no offline user_stats table to recompute the features from"]
    return []


def _user_comparisons(
    served: pd.DataFrame, tables: dict[str, pd.DataFrame], cfg: SkewConfig, as_of: datetime | None, result: SkewResult
) -> list[_Comparison]:
    """The logged user features of each request (served with features, its user with an offline row) against the
    offline recompute; counts the requests in `result`."""
    requests = served.drop_duplicates("request_id").reset_index(drop=True)
    requests = requests[pd.to_numeric(requests["user_id"], errors="coerce").notna()].reset_index(drop=True)
    result.n_requests = len(requests)
    requests[TIME] = _lookup_ms(requests, as_of)
    offline = offline_recompute(requests, tables)
    features = [
        c
        for c in requests.columns
        if c not in NOT_FEATURES and c != TIME and c in offline.columns and c not in cfg.ignore
    ]
    if not features:
        return []
    hydrated = requests[features].notna().any(axis=1).to_numpy()
    has_row = offline["_has_row"].to_numpy(bool)
    result.n_without_features = int((~hydrated).sum())
    result.n_without_offline_row = int((hydrated & ~has_row).sum())
    keep = hydrated & has_row
    result.n_compared = int(keep.sum())
    cur, off = requests.loc[keep].reset_index(drop=True), offline.loc[keep].reset_index(drop=True)
    if "hist_length" in features and LIVE in cur.columns:
        off["hist_length"] = _with_live_events(off["hist_length"], cur[LIVE], cfg.history_length)
    return [(f, cur, off) for f in features]


def _with_live_events(offline: pd.Series, live: pd.Series, cap: int) -> pd.Series:
    """The history length a consistent service serves: the offline length (frozen at the day's start) plus the
    events pushed since (a request logged without the count: none), at most `cap`."""
    pushed = pd.to_numeric(live, errors="coerce").fillna(0).to_numpy(np.float64)
    length = pd.to_numeric(offline, errors="coerce").to_numpy(np.float64)
    return pd.Series(np.minimum(length + pushed, cap), index=offline.index)


def _candidate_comparisons(
    served: pd.DataFrame, tables: dict[str, pd.DataFrame], cfg: SkewConfig, as_of: datetime | None, result: SkewResult
) -> list[_Comparison]:
    """The candidate inputs of the served items of sampled requests (log_candidate_features) against post_stats and
    author_stats at the same time; counts the items in `result`."""
    inputs = [
        c for c in served.columns if c.startswith(CANDIDATE_PREFIX) and c[len(CANDIDATE_PREFIX) :] not in cfg.ignore
    ]
    if not inputs or "post_stats" not in tables:
        return []
    items = served[served[inputs].notna().any(axis=1)].reset_index(drop=True)
    items[TIME] = _lookup_ms(items, as_of)
    offline_items = candidate_recompute(items, tables)
    has_post = offline_items["_has_post_row"].to_numpy(bool)
    result.n_items_without_offline_row = int((~has_post).sum())
    result.n_items_compared = int(has_post.sum())
    cur_items = items.loc[has_post].reset_index(drop=True)
    off_items = offline_items.loc[has_post].reset_index(drop=True)
    # The offline value under the served column's name (cand_<feature>).
    off_items = off_items.rename(columns={c: CANDIDATE_PREFIX + c for c in off_items.columns})
    return [(c, cur_items, off_items) for c in inputs if c in off_items.columns and result.n_items_compared]


def _count_mismatches(comparisons: list[_Comparison], cfg: SkewConfig, result: SkewResult) -> None:
    """The mismatch rate per feature and overall, and the first three mismatches as examples, into `result`."""
    total_bad = total = 0
    for f, cur, off in comparisons:
        if len(cur) == 0:
            continue
        bad = _mismatch(cur[f], off[f], cfg)
        n_bad = int(bad.sum())
        result.per_feature[f] = {"rate": n_bad / len(bad), "mismatched": n_bad, "compared": len(bad)}
        total_bad += n_bad
        total += len(bad)
        for i in np.flatnonzero(bad)[: max(0, 3 - len(result.examples))]:
            example = {"request_id": str(cur.at[i, "request_id"]), "user_id": int(cur.at[i, "user_id"]), "feature": f,
                       "served": _plain(cur.at[i, f]), "offline": _plain(off.at[i, f])}  # fmt: skip
            if f.startswith(CANDIDATE_PREFIX):
                example["post_id"] = int(cur.at[i, "post_id"])
            result.examples.append(example)
    result.rate = total_bad / total if total else None


def train_serve_skew(
    served: pd.DataFrame | None, tables: dict[str, pd.DataFrame], cfg: SkewConfig, as_of: datetime | None = None
) -> SkewResult:
    """The skew verdict of served requests against the offline tables (`read_user_tables`).

    Args:
        served: exposure rows (one per served item; deduplicated to one per request_id) with user_id, ts (epoch
            seconds) and the logged feature columns.
        as_of: the feature time the service ran at (a fixed `as_of` of a replayed world); None = each request's ts.

    Never raises on bad input: an empty window, no feature column or too few comparable requests is
    "insufficient_data".
    """
    result = SkewResult(status="insufficient_data", rate=None)
    result.reasons += _unusable(served, tables, as_of)
    if result.reasons:
        return result
    assert served is not None
    comparisons = _user_comparisons(served, tables, cfg, as_of, result)
    comparisons += _candidate_comparisons(served, tables, cfg, as_of, result)
    if not comparisons:
        result.reasons.append("no logged feature column matches an offline feature")
        return result
    if result.n_compared < cfg.min_rows and result.n_items_compared < cfg.min_rows:
        result.reasons.append(
            f"{result.n_compared} requests with logged features and an offline row (and {result.n_items_compared} "
            f"served items with logged candidate inputs), fewer than skew.min_rows={cfg.min_rows}"
        )
        if result.n_compared == 0 and result.n_items_compared == 0:
            return result
    _count_mismatches(comparisons, cfg, result)
    if result.reasons or result.rate is None:
        return result
    worst = sorted(result.per_feature, key=lambda f: result.per_feature[f]["rate"], reverse=True)
    over = [f for f in worst if result.per_feature[f]["rate"] > cfg.max_feature_rate]
    failed = result.rate > cfg.max_rate or bool(over)
    result.status = "fail" if failed else "pass"
    if failed:
        top = ", ".join(f"{f} {result.per_feature[f]['rate']:.1%}" for f in (over or worst)[:10])
        result.reasons.append(
            f"{result.rate:.2%} of served feature values differ from the offline recompute (fails above "
            f"{cfg.max_rate:.2%} overall or {cfg.max_feature_rate:.2%} per feature): {top}"
        )
    return result


def _plain(value: Any) -> Any:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    return value.item() if hasattr(value, "item") else value
