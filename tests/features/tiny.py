"""A hand-written dataset small enough to know every feature value by heart (shared by feature-store tests)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa

from core.actions import ACTION_NAMES
from core.schema import TS, write_dataset


def ts(day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    return datetime(2026, 1, day, hour, minute, second, tzinfo=UTC)


# One tuple per impression: id, user, post, author, time and the set of actions taken.
IMPRESSIONS = [
    (1, 1, 100, 10, ts(1, 10), {"click", "like"}),
    # Exactly on the 2026-01-02 boundary: must not be in the snapshot taken at that instant.
    (2, 1, 101, 10, ts(2, 0), {"click"}),
    (3, 1, 100, 10, ts(2, 9), {"block_author"}),
    (4, 2, 100, 10, ts(2, 12), set()),
    (5, 2, 101, 10, ts(3, 8, 30), {"click", "reply"}),
]


def write_tiny(directory: Path) -> Path:
    users = pa.table(
        {
            "user_id": pa.array([1, 2, 10], pa.int64()),
            "created_at": pa.array([ts(1).replace(month=1, day=1, year=2025)] * 3, TS),
            "country": ["US", "BR", "US"],
            "language": ["en", "pt", "en"],
            "age_bucket": ["25-34", "18-24", "35-44"],
            "activity": ["high", "low", "medium"],
            "is_author": [False, False, True],
        }
    )
    follows = pa.table(
        {
            "follower_id": pa.array([1], pa.int64()),
            "followee_id": pa.array([10], pa.int64()),
            "created_at": pa.array([datetime(2025, 12, 15, tzinfo=UTC)], TS),
        }
    )
    posts = pa.table(
        {
            "post_id": pa.array([100, 101], pa.int64()),
            "author_id": pa.array([10, 10], pa.int64()),
            "created_at": pa.array([ts(1), ts(1, 20)], TS),
            "topic": pa.array([1, 2], pa.int32()),
            "topic_secondary": pa.array([-1, -1], pa.int32()),
            "topic_weight": pa.array([1.0, 1.0], pa.float32()),
            "media_type": ["text", "video"],
        }
    )
    cols: dict[str, pa.Array] = {
        "impression_id": pa.array([r[0] for r in IMPRESSIONS], pa.int64()),
        "request_id": pa.array([r[0] for r in IMPRESSIONS], pa.int64()),
        "user_id": pa.array([r[1] for r in IMPRESSIONS], pa.int64()),
        "post_id": pa.array([r[2] for r in IMPRESSIONS], pa.int64()),
        "author_id": pa.array([r[3] for r in IMPRESSIONS], pa.int64()),
        "ts": pa.array([r[4] for r in IMPRESSIONS], TS),
        "position": pa.array([0] * len(IMPRESSIONS), pa.int32()),
        "in_network": pa.array([True, True, True, False, False]),
    }
    for action in ACTION_NAMES:
        cols[action] = pa.array([int(action in r[5]) for r in IMPRESSIONS], pa.int8())
    write_dataset(
        directory,
        {"users": users, "follows": follows, "posts": posts, "impressions": pa.table(cols)},
        "tiny",
        ACTION_NAMES,
    )
    return directory
