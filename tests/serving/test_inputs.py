"""serving.inputs.user_inputs builds, from one hydrated query, exactly what training builds from the training-set
row with the same values (models.retrieval.data.user_features over a DataFrame)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
import torch

from models.ranker.model import RankerConfig
from models.retrieval.data import HISTORY, user_features
from models.retrieval.model import TwoTowerConfig
from serving.inputs import user_inputs, user_value
from serving.types import Query

NOW = datetime(2026, 1, 9, 12, 0, tzinfo=UTC)


def training_row(query: Query, attributes: tuple[str, ...]) -> pd.DataFrame:
    """The one training-set row a query stands for: what the point-in-time join writes."""
    history = query.history or {}
    row: dict[str, object] = {"user_id": query.user_id, "event_timestamp": pd.Timestamp(query.now)}
    for name in HISTORY:
        values = history.get(name, ())
        row[name] = np.asarray(values, dtype=np.int64) if len(values) else None
    for a in attributes:
        row[f"user_{a}"] = user_value(query, f"user_{a}")
    frame = pd.DataFrame([row])
    frame["event_timestamp"] = pd.to_datetime(frame["event_timestamp"], utc=True)
    return frame


def history(n: int, start_ms: int) -> dict[str, tuple[int, ...]]:
    rng = np.random.default_rng(n)
    ts = np.sort(rng.integers(start_ms - 5 * 86_400_000, start_ms, n))
    ts[-1] = start_ms + 60_000  # the newest event is logged after the request time: gap 0, never negative
    return {
        "hist_post_ids": tuple(int(x) for x in rng.integers(1, 10**6, n)),
        "hist_author_ids": tuple(int(x) for x in rng.integers(1, 10**4, n)),
        "hist_actions": tuple(int(x) for x in rng.integers(0, 1 << 13, n)),
        "hist_surfaces": tuple(int(x) for x in rng.integers(0, 3, n)),
        "hist_timestamps": tuple(int(x) for x in ts),
    }


NOW_MS = int(NOW.timestamp() * 1000)
CASES = {
    "long history": Query(
        3,
        NOW,
        user_stats={"user_country": "de", "user_language": "de", "user_age_bucket": 2, "user_activity": "high"},
        history=history(200, NOW_MS),
    ),  # fmt: skip
    "short history, odd attributes": Query(
        4,
        NOW,
        user_stats={"user_country": None, "user_language": float("nan"), "user_age_bucket": 3.0, "user_activity": ""},
        history=history(3, NOW_MS),
    ),  # fmt: skip
    "no history row": Query(
        5, NOW, user_stats={"user_country": "fr"}, history={}, missing_views=frozenset({"user_history"})
    ),  # fmt: skip
    "no stats row": Query(
        6, NOW, user_stats={"user_country": "us"}, history=history(5, NOW_MS), missing_views=frozenset({"user_stats"})
    ),  # fmt: skip
    "naive request time": Query(
        7, NOW.replace(tzinfo=None) - timedelta(hours=3), user_stats={}, history=history(20, NOW_MS)
    ),  # fmt: skip
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("cfg", [TwoTowerConfig.preset("nano"), RankerConfig.preset("nano")], ids=["tt", "ranker"])
def test_user_inputs_equal_the_training_rows_features(case: str, cfg: TwoTowerConfig | RankerConfig) -> None:
    query = CASES[case]
    served = user_inputs(query, cfg)
    trained = user_features(training_row(query, cfg.user_attributes), cfg)
    for name in ("user_ids", "attribute_ids", "hist_post_ids", "hist_author_ids", "hist_actions", "hist_surfaces",
                 "hist_gap_ms"):  # fmt: skip
        assert torch.equal(getattr(served, name), getattr(trained, name)), name
    if case == "long history":
        assert int((served.hist_post_ids > 0).sum()) == cfg.max_history  # the newest S kept
        assert int(served.hist_gap_ms[0, -1]) == 0  # the event after the request time: gap 0, never negative
