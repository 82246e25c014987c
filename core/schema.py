"""The canonical, versioned schema of an Ember dataset (synthetic or imported) and its validation.

A dataset is a directory:

    users.parquet  follows.parquet  posts.parquet  impressions/part-*.parquet  manifest.json

Ids are positive int64: 0 is reserved for padding in the hashed embeddings, so importers shift 0-based ids by +1.
Columns named `x_*` are dataset-specific extras kept from the source (e.g. KuaiRand's `x_long_view`); every other
column is listed here. Timestamps are UTC, millisecond precision.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from core.actions import ACTION_NAMES, DWELL_TIME, prob_column
from core.errors import SchemaError

SCHEMA_VERSION = "1.0"
EXTRA_PREFIX = "x_"
TS = pa.timestamp("ms", tz="UTC")
N_SURFACES = 16  # product-surface vocabulary size (Phoenix uses 16)
SURFACES: tuple[str, ...] = ("for_you", "following", "explore", "notifications")  # synthetic surface codes 0..3
MEDIA_TYPES: tuple[str, ...] = ("text", "image", "video")


@dataclass(frozen=True)
class TableSchema:
    """Required and optional columns of one canonical table."""

    name: str
    required: pa.Schema
    optional: pa.Schema

    def field(self, column: str) -> pa.Field | None:
        for schema in (self.required, self.optional):
            if column in schema.names:
                return schema.field(column)
        return None


USERS = TableSchema(
    "users",
    pa.schema(
        [
            ("user_id", pa.int64()),
            ("created_at", TS),
            ("country", pa.string()),
            ("language", pa.string()),
            ("age_bucket", pa.string()),
            ("activity", pa.string()),
            ("is_author", pa.bool_()),
        ]
    ),
    pa.schema([]),
)

FOLLOWS = TableSchema(
    "follows",
    pa.schema([("follower_id", pa.int64()), ("followee_id", pa.int64()), ("created_at", TS)]),
    pa.schema([]),
)

POSTS = TableSchema(
    "posts",
    pa.schema(
        [
            ("post_id", pa.int64()),
            ("author_id", pa.int64()),
            ("created_at", TS),
            ("topic", pa.int32()),  # primary topic
            ("topic_secondary", pa.int32()),  # -1 when the post has a single topic
            ("topic_weight", pa.float32()),  # weight of the primary topic in the mixture, in (0, 1]
            ("media_type", pa.string()),
        ]
    ),
    pa.schema([("duration_ms", pa.int64())]),
)

IMPRESSIONS = TableSchema(
    "impressions",
    pa.schema(
        [
            ("impression_id", pa.int64()),
            ("request_id", pa.int64()),
            ("user_id", pa.int64()),
            ("post_id", pa.int64()),
            ("author_id", pa.int64()),
            ("ts", TS),
            ("surface", pa.int8()),  # code in [0, N_SURFACES)
            ("position", pa.int32()),  # 0-based slot in the served slate; -1 when the source does not say
            ("in_network", pa.bool_()),  # the viewer follows the author (False when unknown)
            *[(a, pa.int8()) for a in ACTION_NAMES],
            (DWELL_TIME, pa.float32()),  # seconds
        ]
    ),
    # Ground-truth probabilities: only the synthetic generator knows them.
    pa.schema([(prob_column(a), pa.float32()) for a in ACTION_NAMES]),
)

TABLES: dict[str, TableSchema] = {t.name: t for t in (USERS, FOLLOWS, POSTS, IMPRESSIONS)}


def validate(table: pa.Table, schema: TableSchema, source: str) -> None:
    """Checks a table against the canonical schema.

    Args:
        table: the table to check.
        schema: which canonical table it claims to be.
        source: the file name used in error messages.

    Raises:
        SchemaError: one line naming `source` and the column at fault.
    """
    for f in schema.required:
        if f.name not in table.column_names:
            raise SchemaError(f"{source}: missing column '{f.name}'")
    for name in table.column_names:
        expected = schema.field(name)
        if expected is None:
            if not name.startswith(EXTRA_PREFIX):
                raise SchemaError(f"{source}: unexpected column '{name}'")
            continue
        actual = table.schema.field(name).type
        if actual != expected.type:
            raise SchemaError(f"{source}: column '{name}' has type {actual}, expected {expected.type}")


def conform(table: pa.Table, schema: TableSchema) -> pa.Table:
    """Orders columns canonically (required, then optional, then extras) so files are byte-stable."""
    order = [n for n in schema.required.names + schema.optional.names if n in table.column_names]
    extras = sorted(n for n in table.column_names if n.startswith(EXTRA_PREFIX))
    return table.select(order + extras)


def write_table(table: pa.Table, path: Path) -> str:
    """Writes a parquet file deterministically and returns its sha256."""
    pq.write_table(table, path, compression="zstd", row_group_size=1 << 20, write_statistics=True)
    return file_sha256(path)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class Manifest:
    """What a dataset directory holds: schema version, provenance, row counts and content hashes."""

    dataset: str
    schema_version: str
    rows: dict[str, int]
    files: dict[str, str]  # relative path -> sha256
    observed_actions: tuple[str, ...]  # actions the source really records; others are all-zero columns
    params: dict[str, Any]

    def to_json(self) -> str:
        body = {
            "dataset": self.dataset,
            "schema_version": self.schema_version,
            "rows": self.rows,
            "files": self.files,
            "observed_actions": list(self.observed_actions),
            "params": self.params,
        }
        return json.dumps(body, indent=2, sort_keys=True) + "\n"

    @classmethod
    def load(cls, directory: Path) -> Manifest:
        path = directory / "manifest.json"
        if not path.is_file():
            raise SchemaError(f"{path}: missing manifest (not an Ember dataset directory)")
        body = json.loads(path.read_text())
        if body.get("schema_version") != SCHEMA_VERSION:
            raise SchemaError(
                f"{path}: schema_version {body.get('schema_version')!r}, this Ember reads {SCHEMA_VERSION!r}"
            )
        return cls(
            dataset=body["dataset"],
            schema_version=body["schema_version"],
            rows=body["rows"],
            files=body["files"],
            observed_actions=tuple(body["observed_actions"]),
            params=body["params"],
        )


def impression_files(directory: Path) -> list[Path]:
    """The impression parts of a dataset, in order."""
    return sorted((directory / "impressions").glob("part-*.parquet"))


def read_table(directory: Path, name: str, columns: list[str] | None = None) -> pa.Table:
    """Reads one canonical table of a dataset directory (impressions: all parts concatenated)."""
    if name == "impressions":
        parts = impression_files(directory)
        if not parts:
            raise SchemaError(f"{directory / 'impressions'}: no impression parts")
        return pa.concat_tables(pq.read_table(p, columns=columns) for p in parts)
    return pq.read_table(directory / f"{name}.parquet", columns=columns)


def write_dataset(
    directory: Path,
    tables: dict[str, pa.Table],
    dataset: str,
    observed_actions: tuple[str, ...],
    params: dict[str, Any] | None = None,
) -> Manifest:
    """Validates and writes whole in-memory tables as a dataset directory (impressions as one part).

    Missing int8 columns (actions, surface) and `dwell_time` of `impressions` are added as zeros, so small
    hand-written tables stay short.
    The caller provides atomicity (write into `core.io.atomic_dir`).
    """
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "impressions").mkdir(exist_ok=True)
    files, rows = {}, {}
    for name, schema in TABLES.items():
        table = tables.get(name, schema.required.empty_table())
        if name == "impressions":
            for f in schema.required:
                if f.name not in table.column_names and (f.type == pa.int8() or f.name == DWELL_TIME):
                    table = table.append_column(f, pa.array([0] * table.num_rows, type=f.type))
        table = conform(table, schema)
        validate(table, schema, f"{name}.parquet")
        rel = "impressions/part-00000.parquet" if name == "impressions" else f"{name}.parquet"
        files[rel] = write_table(table, directory / rel)
        rows[name] = table.num_rows
    manifest = Manifest(dataset, SCHEMA_VERSION, rows, files, tuple(observed_actions), params or {})
    (directory / "manifest.json").write_text(manifest.to_json())
    return manifest
