"""Author feature views: reach, posting rate and smoothed engagement / negative-feedback rates."""

from datetime import timedelta

from entities import author, fields, parquet_source
from feast import FeatureView

from features.catalog import AUTHOR_STATS

author_stats = FeatureView(
    name=AUTHOR_STATS.name,
    entities=[author],
    ttl=timedelta(days=2),
    schema=fields(AUTHOR_STATS),
    source=parquet_source(AUTHOR_STATS.name),
)
