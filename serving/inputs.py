"""Model inputs from a hydrated query, built by the rule training uses (`models.retrieval.data.user_tensors`), so a
user at serving is encoded exactly as a training row with the same feature values would be.

Online values stand in for the training set's point-in-time columns: a view the store has no row for reads as the
training join's nulls (numbers 0, attributes the padding id 0), not as the store's defaults.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd

from models.layers import string_id
from models.retrieval.data import HISTORY, UserInputs, history_rule, user_tensors
from models.retrieval.model import UserFeatures
from serving.types import Query


def user_value(query: Query, name: str) -> Any:
    """A user_stats value as the training set would hold it: None when the store had no row for the user."""
    if query.user_stats is None or "user_stats" in query.missing_views:
        return None
    return query.user_stats.get(name)


def user_inputs(query: Query, cfg: UserInputs) -> UserFeatures:
    """The user-tower inputs of one query, built straight from its hydrated values by the rule training uses
    (`models.retrieval.data.user_tensors`): equal to `models.retrieval.data.user_features` of the one training-set row
    with the same values (tests/serving/test_inputs.py), without the one-row DataFrame that cost ~1 ms per model per
    request.

    A two-tower trained on event sequences (history_gaps "predecessor", history_action, history_attributes) gets
    the same history its training built: only events with the action, gaps between consecutive events, and each
    history post's attributes from the hydrated `hist_<attribute>` tuples (tests/models/test_retrieval_job.py)."""
    history = query.history or {}
    row = tuple(np.asarray(history[name], dtype=np.int64) if len(history.get(name, ())) else None for name in HISTORY)
    request_ms = np.array([epoch_ms(query.now)], dtype=np.int64)
    attribute_ids = np.array([[string_id(user_value(query, f"user_{a}")) for a in cfg.user_attributes]], np.int64)
    gaps, action_bit = history_rule(cfg)
    post_attributes: tuple[str, ...] = getattr(cfg, "post_attributes", ())
    extra = None
    if getattr(cfg, "history_attributes", False) and post_attributes and row[0] is not None:
        n = len(row[0])
        columns = [history.get(f"hist_{a}") or (None,) * n for a in post_attributes]
        extra = [np.stack([string_ids_of(c) for c in columns], 1).reshape(n, -1)]
    return user_tensors(
        np.array([query.user_id], np.int64),
        request_ms,
        [row],
        attribute_ids,
        cfg.max_history,
        gaps=gaps,
        action_bit=action_bit,
        history_attributes=extra,
    )


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MILLISECOND = timedelta(milliseconds=1)


def epoch_ms(now: datetime) -> int:
    """Epoch milliseconds of a request time (naive = UTC), floored, as pandas computes them for a training row's
    event_timestamp (`models.retrieval.data.epoch_ms`); with datetime arithmetic, not a Timestamp per request."""
    if isinstance(now, pd.Timestamp):  # may carry nanoseconds
        now = now.tz_localize("UTC") if now.tzinfo is None else now.tz_convert("UTC")
        return int((now - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(milliseconds=1))
    aware = now.replace(tzinfo=UTC) if now.tzinfo is None else now
    return (aware - EPOCH) // MILLISECOND


def string_ids_of(values: Sequence[Any]) -> np.ndarray:
    """(n,) `string_id` of each value, each distinct value hashed once (a history's few topics and media types)."""
    known = dict.fromkeys(values, 0)
    for v in known:
        known[v] = string_id(v)
    return np.fromiter(map(known.__getitem__, values), np.int64, len(values))
