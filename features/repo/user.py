"""User feature views: windowed action counts and rates, attributes, the engagement history and the social graph."""

from datetime import timedelta

from entities import parquet_source, user
from feast import FeatureView, Field, PushSource
from feast.types import Array, Float32, Int32, Int64, String

from core.actions import ACTION_NAMES
from features.build import WINDOWS

user_stats_source = parquet_source("user_stats")
user_stats = FeatureView(
    name="user_stats",
    entities=[user],
    ttl=timedelta(days=2),  # snapshots are daily: a row older than two days means the build is stale
    schema=[
        Field(name="user_account_age_days", dtype=Float32),
        Field(name="user_follower_count", dtype=Int32),
        Field(name="user_followee_count", dtype=Int32),
        Field(name="user_country", dtype=String),
        Field(name="user_language", dtype=String),
        Field(name="user_age_bucket", dtype=String),
        Field(name="user_activity", dtype=String),
        *[Field(name=f"user_impressions_{w}d", dtype=Int32) for w in WINDOWS],
        *[Field(name=f"user_{a}_{w}d", dtype=Int32) for w in WINDOWS for a in ACTION_NAMES],
        *[Field(name=f"user_{a}_rate_{w}d", dtype=Float32) for w in WINDOWS for a in ACTION_NAMES],
    ],
    source=user_stats_source,
)

user_history_batch = parquet_source("user_history")
# The streaming path: serving pushes each new engagement's updated history here (PushMode.ONLINE).
user_history_push = PushSource(name="user_history_push", batch_source=user_history_batch)
user_history = FeatureView(
    name="user_history",
    entities=[user],
    ttl=timedelta(days=28),
    schema=[
        Field(name="hist_post_ids", dtype=Array(Int64)),
        Field(name="hist_author_ids", dtype=Array(Int64)),
        Field(name="hist_actions", dtype=Array(Int64)),  # bitmask over core.actions (bit i = ACTION_NAMES[i])
        Field(name="hist_surfaces", dtype=Array(Int64)),
        Field(name="hist_timestamps", dtype=Array(Int64)),  # epoch milliseconds, oldest first
        Field(name="hist_length", dtype=Int32),
    ],
    source=user_history_push,
)

user_graph_source = parquet_source("user_graph")
user_graph = FeatureView(
    name="user_graph",
    entities=[user],
    ttl=timedelta(days=28),
    schema=[
        Field(name="followee_ids", dtype=Array(Int64)),
        Field(name="blocked_author_ids", dtype=Array(Int64)),
        Field(name="muted_author_ids", dtype=Array(Int64)),
    ],
    source=user_graph_source,
)
