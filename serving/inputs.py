"""Model inputs from a hydrated query, built by the same code training uses (`models.data.user_features`), so a
user at serving is encoded exactly as a training row with the same feature values would be.

Online values stand in for the training set's point-in-time columns: a view the store has no row for reads as the
training join's nulls (numbers 0, attributes the padding id 0), not as the store's defaults.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from models.data import HISTORY
from serving.types import Query


def user_value(query: Query, name: str) -> Any:
    """A user_stats value as the training set would hold it: None when the store had no row for the user."""
    if query.user_stats is None or "user_stats" in query.missing_views:
        return None
    return query.user_stats.get(name)


def user_frame(query: Query, attributes: tuple[str, ...]) -> pd.DataFrame:
    """One training-set-shaped row for the user: user_id, event_timestamp (= query.now), the history arrays and
    the `user_<attribute>` columns the models embed."""
    history = query.history or {}
    row: dict[str, Any] = {"user_id": query.user_id, "event_timestamp": pd.Timestamp(query.now)}
    for name in HISTORY:
        values = history.get(name, ())
        row[name] = np.asarray(values, dtype=np.int64) if len(values) else None
    for a in attributes:
        row[f"user_{a}"] = user_value(query, f"user_{a}")
    frame = pd.DataFrame([row])
    frame["event_timestamp"] = pd.to_datetime(frame["event_timestamp"], utc=True)
    return frame
