"""Replayed traffic: requests drawn like the reference's, through a recommender, into exposure records."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from core.errors import UserError
from monitoring.exposure_frame import read_exposure
from monitoring.replay import replay, request_sample, write_records


@dataclass
class FakeItem:
    post_id: int
    score: float
    source: str = "TwoTowerSource"
    actions: dict[str, float] = field(default_factory=dict)


@dataclass
class FakeRecommendation:
    items: list[FakeItem]
    degraded: bool = False
    fallback: str = ""
    features: dict[str, Any] = field(default_factory=dict)


class FakeRecommender:
    version = "fake:1"

    def recommend(
        self, user_id: int, k: int, seen_ids: frozenset[int] = frozenset(), surface: int = 0
    ) -> FakeRecommendation:
        items = [FakeItem(100 * user_id + i, 1.0 - i / k, actions={"click": 0.5 / (i + 1), "dwell_time": 3.0})
                 for i in range(k + 2)]  # fmt: skip
        return FakeRecommendation(items, features={"user_click_rate_7d": np.float32(0.25), "missing_views": ["a"]})


def reference(n_requests: int = 400) -> pd.DataFrame:
    """User 1 asked 3 times as often as user 2; two impressions per request."""
    users = np.where(np.arange(n_requests) % 4 == 3, 2, 1)
    return pd.DataFrame(
        {
            "request_id": np.repeat(np.arange(n_requests), 2),
            "user_id": np.repeat(users, 2),
            "surface": np.repeat(users - 1, 2),
        }
    )


def test_users_come_back_in_proportion_to_their_requests_seeded() -> None:
    drawn = request_sample(reference(), 8000, seed=1)
    assert (drawn["user_id"] == 1).mean() == pytest.approx(0.75, abs=0.02)
    assert (drawn.loc[drawn["user_id"] == 2, "surface"] == 1).all()  # each request keeps its surface
    assert drawn.equals(request_sample(reference(), 8000, seed=1))
    assert not drawn.equals(request_sample(reference(), 8000, seed=2))


def test_a_reference_without_requests_is_a_user_error() -> None:
    with pytest.raises(UserError, match="request_id"):
        request_sample(pd.DataFrame({"user_id": [1]}), 5)


def test_replayed_records_read_back_as_served_items_with_predictions(tmp_path: Path) -> None:
    requests = request_sample(reference(), 3, seed=0)
    records = replay(FakeRecommender(), requests, k=4, variant="ranker", ts=100.0, request_prefix="r")
    assert [r["request_id"] for r in records] == ["r-0", "r-1", "r-2"] and records[2]["ts"] == 102.0
    assert all(len(r["items"]) == 4 and r["version"] == "fake:1" for r in records)  # cut to k, as the service does
    frame = read_exposure(write_records(records, tmp_path / "logs" / "exposure.jsonl")).frame
    assert len(frame) == 12 and frame["position"].tolist()[:4] == [0, 1, 2, 3]
    assert frame["pred_click"].tolist()[:2] == [0.5, 0.25] and (frame["pred_dwell_time"] == 3.0).all()
    assert frame["user_click_rate_7d"].iloc[0] == 0.25 and (frame["n_missing_views"] == 1).all()
