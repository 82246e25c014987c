"""Post feature views: creation time (age is computed at read time), topic, media and engagement so far."""

from datetime import timedelta

from entities import parquet_source, post
from feast import FeatureView, Field
from feast.types import Float32, Int32, Int64, String

from core.actions import ACTION_NAMES

post_stats_source = parquet_source("post_stats")
post_stats = FeatureView(
    name="post_stats",
    entities=[post],
    ttl=timedelta(days=7),  # posts older than the 48 h serving window rarely matter; a week leaves margin
    schema=[
        Field(name="post_created_at_ms", dtype=Int64),
        Field(name="post_author_id", dtype=Int64),
        Field(name="post_topic", dtype=Int32),
        Field(name="post_media_type", dtype=String),
        Field(name="post_impressions", dtype=Int32),
        *[Field(name=f"post_{a}_count", dtype=Int32) for a in ACTION_NAMES],
        *[Field(name=f"post_{a}_rate", dtype=Float32) for a in ACTION_NAMES],
    ],
    source=post_stats_source,
)
