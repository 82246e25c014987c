"""Post feature views: creation time (age is computed at read time), topic, media and engagement so far."""

from datetime import timedelta

from entities import fields, parquet_source, post
from feast import FeatureView

from features.catalog import POST_STATS

post_stats = FeatureView(
    name=POST_STATS.name,
    entities=[post],
    ttl=timedelta(days=7),  # posts older than the 48 h serving window rarely matter; a week leaves margin
    schema=fields(POST_STATS),
    source=parquet_source(POST_STATS.name),
)
