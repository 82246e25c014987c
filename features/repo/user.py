"""User feature views: windowed action counts and rates, attributes, the engagement history and the social graph."""

from datetime import timedelta

from entities import fields, parquet_source, user
from feast import FeatureView, PushSource

from features.catalog import USER_GRAPH, USER_HISTORY, USER_STATS

user_stats = FeatureView(
    name=USER_STATS.name,
    entities=[user],
    ttl=timedelta(days=2),  # snapshots are daily: a row older than two days means the build is stale
    schema=fields(USER_STATS),
    source=parquet_source(USER_STATS.name),
)

# The streaming path: serving pushes each new engagement's updated history here (PushMode.ONLINE).
user_history_push = PushSource(name="user_history_push", batch_source=parquet_source(USER_HISTORY.name))
user_history = FeatureView(
    name=USER_HISTORY.name,
    entities=[user],
    ttl=timedelta(days=28),
    schema=fields(USER_HISTORY),
    source=user_history_push,
)

user_graph = FeatureView(
    name=USER_GRAPH.name,
    entities=[user],
    ttl=timedelta(days=28),
    schema=fields(USER_GRAPH),
    source=parquet_source(USER_GRAPH.name),
)
