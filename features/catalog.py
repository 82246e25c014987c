"""The feature catalog: every feature view's entity, features and types, without importing Feast.

The Feast definitions (features/repo) and the serving-side reader (features/online.py) are both built from this
list, so the two can never disagree on a name or a type.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from core.actions import ACTION_NAMES

WINDOWS = (1, 7, 28)  # days of the user count/rate windows
PROJECT = "ember"


class Dtype(StrEnum):
    INT32 = "int32"
    INT64 = "int64"
    FLOAT32 = "float32"
    STRING = "string"
    INT64_LIST = "int64_list"


DEFAULTS = {Dtype.INT32: 0, Dtype.INT64: 0, Dtype.FLOAT32: 0.0, Dtype.STRING: "unknown", Dtype.INT64_LIST: ()}


@dataclass(frozen=True)
class View:
    """One feature view: its name, entity join key and (feature, dtype) pairs in order."""

    name: str
    join_key: str
    features: tuple[tuple[str, Dtype], ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f for f, _ in self.features)


USER_STATS = View(
    "user_stats",
    "user_id",
    (
        ("user_account_age_days", Dtype.FLOAT32),
        ("user_follower_count", Dtype.INT32),
        ("user_followee_count", Dtype.INT32),
        ("user_country", Dtype.STRING),
        ("user_language", Dtype.STRING),
        ("user_age_bucket", Dtype.STRING),
        ("user_activity", Dtype.STRING),
        *((f"user_impressions_{w}d", Dtype.INT32) for w in WINDOWS),
        *((f"user_{a}_{w}d", Dtype.INT32) for w in WINDOWS for a in ACTION_NAMES),
        *((f"user_{a}_rate_{w}d", Dtype.FLOAT32) for w in WINDOWS for a in ACTION_NAMES),
    ),
)
USER_HISTORY = View(
    "user_history",
    "user_id",
    (
        ("hist_post_ids", Dtype.INT64_LIST),
        ("hist_author_ids", Dtype.INT64_LIST),
        ("hist_actions", Dtype.INT64_LIST),  # bitmask over core.actions (bit i = ACTION_NAMES[i])
        ("hist_surfaces", Dtype.INT64_LIST),
        ("hist_timestamps", Dtype.INT64_LIST),  # epoch milliseconds, oldest first
        ("hist_length", Dtype.INT32),
    ),
)
USER_GRAPH = View(
    "user_graph",
    "user_id",
    (
        ("followee_ids", Dtype.INT64_LIST),
        ("blocked_author_ids", Dtype.INT64_LIST),
        ("muted_author_ids", Dtype.INT64_LIST),
    ),
)
AUTHOR_STATS = View(
    "author_stats",
    "author_id",
    (
        ("author_follower_count", Dtype.INT32),
        ("author_posts_per_day", Dtype.FLOAT32),
        ("author_impressions_28d", Dtype.INT32),
        ("author_negative_rate", Dtype.FLOAT32),
        *((f"author_{a}_rate", Dtype.FLOAT32) for a in ACTION_NAMES),
    ),
)
POST_STATS = View(
    "post_stats",
    "post_id",
    (
        ("post_created_at_ms", Dtype.INT64),
        ("post_author_id", Dtype.INT64),
        ("post_topic", Dtype.INT32),
        ("post_media_type", Dtype.STRING),
        ("post_impressions", Dtype.INT32),
        *((f"post_{a}_count", Dtype.INT32) for a in ACTION_NAMES),
        *((f"post_{a}_rate", Dtype.FLOAT32) for a in ACTION_NAMES),
    ),
)
VIEWS: dict[str, View] = {v.name: v for v in (USER_STATS, USER_HISTORY, USER_GRAPH, AUTHOR_STATS, POST_STATS)}
SERVICES = ("retrieval_v1", "ranker_v1", "serving_graph_v1")  # the FeatureServices of features/repo/services.py
