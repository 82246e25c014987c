"""Per-user engagement sequences from a canonical dataset, the sequential-recommendation splits (leave-one-out and
temporal) and retrieval rows in the format models.retrieval.data reads, so the two-tower and the baselines see one
protocol.

An *events* frame has one row per positive impression: user_id, post_id, author_id, actions (int64 bitmask over
core.actions), surface, ts_ms (int64 epoch ms), impression_id; sorted by (user_id, ts_ms, impression_id).
Sequence order is (ts_ms, impression_id): events of the same millisecond keep their file order (importers number
impressions in (time, file) order), and "before an event" means before it in that order.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from core.actions import ACTIONS, BY_NAME
from core.errors import UserError
from core.schema import read_table

EVENT_COLUMNS = ("user_id", "post_id", "author_id", "actions", "surface", "ts_ms", "impression_id")
USER_ATTRIBUTES = ("country", "language", "age_bucket", "activity")
HISTORY_COLUMNS = ("hist_post_ids", "hist_author_ids", "hist_actions", "hist_surfaces", "hist_timestamps")
_HISTORY_SOURCES = ("post_id", "author_id", "actions", "surface", "ts_ms")  # events column of each HISTORY_COLUMNS
MIN_LOO_EVENTS = 3  # leave-one-out needs a train, a validation and a test event


def positive_events(dataset: Path, action: str = "click") -> pd.DataFrame:
    """The impressions of a canonical dataset where `action` happened, as an events frame (see the module doc).

    Raises:
        UserError: an unknown action, or no impression with it (naming the dataset).
    """
    if action not in BY_NAME:
        raise UserError(f"action: unknown action {action!r} (choose from {', '.join(BY_NAME)})")
    names = [a.name for a in ACTIONS]
    table = read_table(
        dataset, "impressions", columns=["impression_id", "user_id", "post_id", "author_id", "ts", "surface", *names]
    )
    table = table.set_column(table.schema.get_field_index("ts"), "ts", table.column("ts").cast(pa.int64()))
    df = table.to_pandas()
    df = df[df[action].to_numpy() == 1]
    if len(df) == 0:
        raise UserError(f"{dataset}: no impression with {action} = 1")
    mask = np.zeros(len(df), dtype=np.int64)
    for a in ACTIONS:  # ACTIONS order fixes the bits
        mask |= (df[a.name].to_numpy(dtype=np.int64) != 0).astype(np.int64) << a.bit
    events = pd.DataFrame(
        {
            "user_id": df["user_id"].to_numpy(dtype=np.int64),
            "post_id": df["post_id"].to_numpy(dtype=np.int64),
            "author_id": df["author_id"].to_numpy(dtype=np.int64),
            "actions": mask,
            "surface": df["surface"].to_numpy(dtype=np.int64),
            "ts_ms": df["ts"].to_numpy(dtype=np.int64),
            "impression_id": df["impression_id"].to_numpy(dtype=np.int64),
        }
    )
    return sort_events(events)


def sort_events(events: pd.DataFrame) -> pd.DataFrame:
    """Events sorted by (user_id, ts_ms, impression_id), with a fresh 0..n-1 index."""
    order = np.lexsort((events["impression_id"].to_numpy(), events["ts_ms"].to_numpy(), events["user_id"].to_numpy()))
    return events.iloc[order].reset_index(drop=True)


@dataclass(frozen=True)
class Split:
    """One evaluation protocol's events.

    Attributes:
        train: events to fit on (and the history of validation targets).
        valid: one validation target per user (events rows); may be empty.
        test: one test target per user (events rows).
        test_history: the events test targets may have as history (train + what happened before each test target).
    """

    train: pd.DataFrame
    valid: pd.DataFrame
    test: pd.DataFrame
    test_history: pd.DataFrame


def leave_one_out(events: pd.DataFrame) -> Split:
    """Per user with >= 3 events: the last is test, the second-last validation, the rest train (sequence order, ties
    by impression_id); users with fewer events stay wholly in train. Test history = train + validation events."""
    events = sort_events(events)
    size = events.groupby("user_id", sort=False)["user_id"].transform("size").to_numpy()
    from_end = size - 1 - events.groupby("user_id", sort=False).cumcount().to_numpy()  # 0 = the user's last event
    eligible = size >= MIN_LOO_EVENTS
    test = eligible & (from_end == 0)
    valid = eligible & (from_end == 1)
    return Split(
        train=events[~(test | valid)].reset_index(drop=True),
        valid=events[valid].reset_index(drop=True),
        test=events[test].reset_index(drop=True),
        test_history=events[~test].reset_index(drop=True),
    )


def _first_new_after(events: pd.DataFrame, start_ms: int, end_ms: int | None) -> pd.DataFrame:
    """Each user's first event in [start_ms, end_ms) whose post the user has no event with before start_ms."""
    before = events[events["ts_ms"] < start_ms]
    ts = events["ts_ms"].to_numpy()
    window = events[(ts >= start_ms) & (ts < (end_ms if end_ms is not None else np.iinfo(np.int64).max))]
    seen = pd.MultiIndex.from_frame(before[["user_id", "post_id"]])
    new = ~pd.MultiIndex.from_frame(window[["user_id", "post_id"]]).isin(seen)
    return window[new].drop_duplicates("user_id", keep="first").reset_index(drop=True)  # sorted: first = earliest


def temporal_targets(events: pd.DataFrame, cutoff_ms: int, valid_cutoff_ms: int | None = None) -> Split:
    """A global-time split: no event at or after a cutoff is ever trained on.

    Test targets are each user's FIRST event at/after `cutoff_ms` whose post the user had not engaged with before
    the cutoff (one per user, so heavy users do not dominate). With `valid_cutoff_ms` (< cutoff_ms) training stops
    there and validation targets are the same rule over [valid_cutoff_ms, cutoff_ms); without it validation is
    empty (pick the model some other way, e.g. a leave-one-out run). Test history = every event before cutoff_ms.
    """
    events = sort_events(events)
    if valid_cutoff_ms is not None and valid_cutoff_ms >= cutoff_ms:
        raise UserError(f"valid_cutoff_ms: {valid_cutoff_ms} is not before cutoff_ms {cutoff_ms}")
    train_end = cutoff_ms if valid_cutoff_ms is None else valid_cutoff_ms
    valid = _first_new_after(events, valid_cutoff_ms, cutoff_ms) if valid_cutoff_ms is not None else events.iloc[:0]
    return Split(
        train=events[events["ts_ms"] < train_end].reset_index(drop=True),
        valid=valid.reset_index(drop=True),
        test=_first_new_after(events, cutoff_ms, None),
        test_history=events[events["ts_ms"] < cutoff_ms].reset_index(drop=True),
    )


def _before(
    h_key: np.ndarray, h_ts: np.ndarray, h_imp: np.ndarray, t_key: np.ndarray, t_ts: np.ndarray, t_imp: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Which history events come before each target within the same key (user or post).

    Returns:
        order: (H,) positions of the history sorted by (key, ts, impression_id).
        start, end: (T,) each target's history is history[order[start:end]] (same key, strictly before it in
            sequence order; an event equal to the target, i.e. the target itself, is not before it).
    """
    H = len(h_key)
    order = np.lexsort((h_imp, h_ts, h_key))
    start = np.searchsorted(h_key[order], t_key, side="left")
    # Merge history (flag 1) and targets (flag 0): at equal (key, ts, impression_id) the target sorts first.
    flag = np.concatenate([np.ones(H, np.int8), np.zeros(len(t_key), np.int8)])
    merged = np.lexsort(
        (flag, np.concatenate([h_imp, t_imp]), np.concatenate([h_ts, t_ts]), np.concatenate([h_key, t_key]))
    )
    n_hist_before = np.cumsum(flag[merged]) - flag[merged]  # history events before each merged position
    end = np.empty(len(t_key), dtype=np.int64)
    is_target = merged >= H
    end[merged[is_target] - H] = n_hist_before[is_target]
    return order, start.astype(np.int64), end


def _columns(events: pd.DataFrame, names: tuple[str, ...]) -> list[np.ndarray]:
    return [events[c].to_numpy(dtype=np.int64) for c in names]


def user_histories(history_events: pd.DataFrame, targets: pd.DataFrame) -> list[np.ndarray]:
    """Each target's history post ids: its user's history_events before it, oldest first (views, not copies)."""
    hu, hts, himp, hpost = _columns(history_events, ("user_id", "ts_ms", "impression_id", "post_id"))
    tu, tts, timp = _columns(targets, ("user_id", "ts_ms", "impression_id"))
    order, start, end = _before(hu, hts, himp, tu, tts, timp)
    posts = hpost[order]
    return [posts[s:e] for s, e in zip(start.tolist(), end.tolist(), strict=True)]


def retrieval_rows(
    history_events: pd.DataFrame, targets: pd.DataFrame, dataset: Path, max_history: int | None = None
) -> pd.DataFrame:
    """One retrieval training-set row per target (the format of models.retrieval.data.user_features /
    candidate_features).

    Row = the target's user as of the target (request time = its ts) and its post as the positive candidate:
    user_id, post_id, author_id, event_timestamp (UTC), hist_* arrays (np int64, oldest first, ms timestamps; None
    when empty) of the user's history_events before the target, hist_length, user_<attribute> (users table),
    post_impressions / post_click_count / post_like_count (history_events of the post before the target: with
    positive events only, impressions = engagements seen) and post_created_at_ms (posts table; NaN when unknown).

    Args:
        max_history: keep only the newest events per row. None (default) keeps all: models.retrieval.data cuts the model
            input itself, and evaluation filters seen items using the whole hist_post_ids.
    """
    T = len(targets)
    tu, tts, timp, tpost = _columns(targets, ("user_id", "ts_ms", "impression_id", "post_id"))
    hu, hts, himp, hpost, hmask = _columns(history_events, ("user_id", "ts_ms", "impression_id", "post_id", "actions"))

    order, start, end = _before(hu, hts, himp, tu, tts, timp)
    if max_history is not None:
        start = np.maximum(start, end - max_history)
    sources = [history_events[c].to_numpy(dtype=np.int64)[order] for c in _HISTORY_SOURCES]
    hist: dict[str, list[np.ndarray | None]] = {c: [] for c in HISTORY_COLUMNS}
    for s, e in zip(start.tolist(), end.tolist(), strict=True):
        for name, values in zip(HISTORY_COLUMNS, sources, strict=True):
            hist[name].append(values[s:e] if e > s else None)

    # Post counts before each target: cumulative sums over the history sorted by (post, ts, impression_id).
    p_order, p_start, p_end = _before(hpost, hts, himp, tpost, tts, timp)
    counts = {}
    for name, bit in (("post_click_count", BY_NAME["click"].bit), ("post_like_count", BY_NAME["like"].bit)):
        cum = np.concatenate([[0], np.cumsum((hmask[p_order] >> bit) & 1)])
        counts[name] = cum[p_end] - cum[p_start]

    rows = pd.DataFrame(
        {
            "user_id": tu,
            "post_id": tpost,
            "author_id": targets["author_id"].to_numpy(dtype=np.int64),
            "event_timestamp": pd.to_datetime(tts, unit="ms", utc=True),
            **{c: pd.Series(v, dtype=object) for c, v in hist.items()},
            "hist_length": end - start,
            "post_impressions": p_end - p_start,
            **counts,
        }
    )
    users = read_table(dataset, "users", columns=["user_id", *USER_ATTRIBUTES]).to_pandas().set_index("user_id")
    for a in USER_ATTRIBUTES:
        rows[f"user_{a}"] = rows["user_id"].map(users[a]).astype(object)
    posts = read_table(dataset, "posts", columns=["post_id", "created_at"])
    posts = posts.set_column(1, "created_at", posts.column("created_at").cast(pa.int64())).to_pandas()
    created = posts.set_index("post_id")["created_at"].astype("float64")
    rows["post_created_at_ms"] = rows["post_id"].map(created).astype("float64")
    assert len(rows) == T
    return rows


def training_rows(train_events: pd.DataFrame, dataset: Path, max_history: int | None = None) -> pd.DataFrame:
    """One retrieval row per train event, its history the user's train events before it: the two-tower's training
    set under a leave-one-out or temporal split (the first event of a user has no history)."""
    return retrieval_rows(train_events, train_events, dataset, max_history)
