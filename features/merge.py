"""`ember data merge`: a base dataset plus the impressions of others (what was served: monitoring/served_impressions.py)
as one canonical dataset, which the training-set builder reads like any other.

The merged dataset is the base's users, follows and posts with every base impression part as it is, then one part
per extra dataset, cast to the base's impression columns: a column the extra lacks (an `x_*` extra, p_<action> of
outcomes from a file) is null there, and an extra's own `x_*` columns are left out (the extra dataset keeps them).
Its manifest keeps the base's name and params (the synthetic oracle still rebuilds the world from them) and adds
`merged` (the datasets and their row counts); the observed actions are those every part observes.

Refused (one line, nothing written): an extra whose posts or users are not the base's, or whose impression ids
collide with the base's.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from core.errors import UserError


def merge_datasets(base: Path, extras: list[Path], out: Path) -> dict[str, Any]:
    """Writes `base` plus the impressions of `extras` to `out` (atomically). Returns rows per table and per part."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from core.io import atomic_dir
    from core.schema import IMPRESSIONS, Manifest, file_sha256, impression_files, read_table, write_table

    base = Path(base)
    if not extras:
        raise UserError("ember data merge: give at least one dataset to merge into the base")
    manifest = Manifest.load(base)
    parts = impression_files(base)
    schema = pq.read_schema(parts[0]) if parts else IMPRESSIONS.required
    base_ids = read_table(base, "impressions", columns=["impression_id"]).column("impression_id").to_numpy()
    posts = read_table(base, "posts", columns=["post_id"]).column("post_id").to_numpy()
    users = read_table(base, "users", columns=["user_id"]).column("user_id").to_numpy()
    observed = list(manifest.observed_actions)
    added: list[tuple[Path, pa.Table]] = []
    for extra in map(Path, extras):
        other = Manifest.load(extra)
        table = read_table(extra, "impressions")
        _check_extra(extra, base, table, {"posts": posts, "users": users}, base_ids)
        base_ids = np.concatenate([base_ids, table.column("impression_id").to_numpy()])
        added.append((extra, _conformed(table, schema)))
        if table.num_rows:  # an empty extra observes nothing, and restricts nothing
            observed = [a for a in observed if a in other.observed_actions]

    with atomic_dir(Path(out)) as tmp:
        (tmp / "impressions").mkdir()
        files: dict[str, str] = {}
        rows = dict(manifest.rows)
        for name in ("users", "follows", "posts"):
            shutil.copyfile(base / f"{name}.parquet", tmp / f"{name}.parquet")
            files[f"{name}.parquet"] = file_sha256(tmp / f"{name}.parquet")
        merged: list[dict[str, Any]] = [{"dataset": str(base), "impressions": manifest.rows["impressions"]}]
        for k, part in enumerate(parts):
            rel = f"impressions/part-{k:05d}.parquet"
            shutil.copyfile(part, tmp / rel)
            files[rel] = manifest.files.get(f"impressions/{part.name}") or file_sha256(tmp / rel)
        for k, (extra, table) in enumerate(added, len(parts)):
            rel = f"impressions/part-{k:05d}.parquet"
            files[rel] = write_table(table, tmp / rel)
            rows["impressions"] += table.num_rows
            merged.append({"dataset": str(extra), "impressions": table.num_rows})
        params = {**manifest.params, "merged": merged}
        out_manifest = Manifest(manifest.dataset, manifest.schema_version, rows, files, tuple(observed), params)
        (tmp / "manifest.json").write_text(out_manifest.to_json())
    return {"rows": rows, "parts": merged}


def _check_extra(extra: Path, base: Path, table: Any, known: dict[str, Any], base_ids: Any) -> None:
    """An extra's impressions may name only the base's posts and users, and no impression id twice (with the base's
    or its own). UserError naming the first offender."""
    import numpy as np

    for column, what in (("post_id", "posts"), ("user_id", "users")):
        values = table.column(column).to_numpy()
        unknown = values[~np.isin(values, known[what])]
        if len(unknown):
            raise UserError(f"{extra}: {column} {int(unknown[0])} is not one of the {what} of {base}")
    ids = table.column("impression_id").to_numpy()
    clash = ids[np.isin(ids, base_ids)]
    if len(clash) or len(np.unique(ids)) != len(ids):
        raise UserError(f"{extra}: impression_id {int(clash[0]) if len(clash) else 'duplicated'} is also in {base}")


def _conformed(table: Any, schema: Any) -> Any:
    """`table` with the base's impression schema: its columns cast to the base's types, missing ones null."""
    import pyarrow as pa

    columns = [
        table.column(f.name).cast(f.type) if f.name in table.column_names else pa.nulls(table.num_rows, f.type)
        for f in schema
    ]
    return pa.Table.from_arrays(columns, schema=schema)
