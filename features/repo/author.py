"""Author feature views: reach, posting rate and smoothed engagement / negative-feedback rates."""

from datetime import timedelta

from entities import author, parquet_source
from feast import FeatureView, Field
from feast.types import Float32, Int32

from core.actions import ACTION_NAMES

author_stats_source = parquet_source("author_stats")
author_stats = FeatureView(
    name="author_stats",
    entities=[author],
    ttl=timedelta(days=2),
    schema=[
        Field(name="author_follower_count", dtype=Int32),
        Field(name="author_posts_per_day", dtype=Float32),
        Field(name="author_impressions_28d", dtype=Int32),
        Field(name="author_negative_rate", dtype=Float32),
        *[Field(name=f"author_{a}_rate", dtype=Float32) for a in ACTION_NAMES],
    ],
    source=author_stats_source,
)
