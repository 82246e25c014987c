"""Feast entities (the three join keys of Ember's features) and where the offline feature tables live."""

from pathlib import Path
from typing import Any

from feast import Entity, Field, FileSource, ValueType
from feast.types import Array, Float32, Int32, Int64, String

from features.catalog import Dtype, View

# Absolute, because Feast's DuckDB offline store resolves relative paths against the working directory while the
# file store resolves them against the repo: `ember features apply` re-registers them for each checkout.
FEATURES_DIR = Path(__file__).resolve().parents[2] / "data" / "features"


def parquet_source(table: str) -> FileSource:
    """The offline source of one table written by `ember features build`."""
    return FileSource(
        name=f"{table}_source", path=str(FEATURES_DIR / f"{table}.parquet"), timestamp_field="event_timestamp"
    )


user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.INT64, description="A viewer (also authors).")
post = Entity(name="post", join_keys=["post_id"], value_type=ValueType.INT64, description="A post (the item).")
author = Entity(name="author", join_keys=["author_id"], value_type=ValueType.INT64, description="A post's author.")


FEAST_TYPES: dict[Dtype, Any] = {
    Dtype.INT32: Int32,
    Dtype.INT64: Int64,
    Dtype.FLOAT32: Float32,
    Dtype.STRING: String,
    Dtype.INT64_LIST: Array(Int64),
}


def fields(view: View) -> list[Field]:
    """The Feast schema of a catalog view."""
    return [Field(name=name, dtype=FEAST_TYPES[dtype]) for name, dtype in view.features]
