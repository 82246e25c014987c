"""Feast wrappers: apply the repo, materialize incrementally, build point-in-time training sets.

`import feast` costs seconds (STACK.md), so it happens inside these functions only; serving reads the online store
through `features.online` instead.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from core.actions import ACTION_NAMES, DWELL_TIME, prob_column
from core.config import config_dataclass
from core.errors import UserError
from core.io import atomic_dir, atomic_write_text
from core.online_store import REDIS_ADDRESS, OnlineStoreConfig, check_store, parse_redis, sqlite_path
from core.schema import Manifest, file_sha256, read_table
from features.catalog import Dtype

if TYPE_CHECKING:
    import pandas as pd
    from feast import FeatureStore
    from feast.repo_config import RepoConfig

    from features.online import Backend

REPO = Path(__file__).resolve().parent / "repo"
FEATURE_SERVICES = {"retrieval": "retrieval_v1", "ranker": "ranker_v1"}
# Serving needs the freshest row of each entity; older rows only matter offline. Posts live ~48 h.
DEFAULT_WINDOW = timedelta(days=2)
# Where training sets and materialization run: DuckDB in this process (default), or Feast's Ray offline store and
# Ray compute engine, whose blocks come from feature_store.ray.yaml (RAY_ADDRESS: the cluster; else a local one).
ENGINES = ("duckdb", "ray")
RAY_YAML = "feature_store.ray.yaml"


def check_engine(engine: str, name: str = "--engine") -> str:
    """`engine` if it is one of ENGINES; else a UserError naming the parameter `name`."""
    if engine not in ENGINES:
        raise UserError(f"{name}: unknown engine {engine!r} (choose from {', '.join(ENGINES)})")
    return engine


@config_dataclass
class StoreConfig:
    """Where the Feast repo is, which online store it uses (params.yaml `feast`) and which engine computes training
    sets and materializations (`duckdb`, or `ray`: the offline store and batch engine of feature_store.ray.yaml)."""

    repo: Path = REPO
    online_store: str = "sqlite"
    redis: str = REDIS_ADDRESS
    engine: str = "duckdb"

    def __post_init__(self) -> None:
        check_store(self.online_store, "--online-store")
        check_engine(self.engine)

    @property
    def yaml(self) -> Path:
        name = "feature_store.yaml" if self.online_store == "sqlite" else f"feature_store.{self.online_store}.yaml"
        return self.repo / name

    @property
    def data_dir(self) -> Path:
        """The repo's relative paths point at <repo>/../../data."""
        return (self.repo / ".." / ".." / "data").resolve()

    @property
    def online(self) -> OnlineStoreConfig:
        """The online store this repo writes, as the direct reader opens it."""
        return OnlineStoreConfig(self.online_store, sqlite_path(self.data_dir), self.redis)

    def env(self) -> dict[str, str]:
        """The environment of a `feast` subprocess: feature_store.redis.yaml reads the address from EMBER_REDIS."""
        return {**os.environ, "EMBER_REDIS": parse_redis(self.redis).connection_string()}


def repo_config(cfg: StoreConfig) -> RepoConfig:
    """The repo's yaml as Feast's own loader reads it (`load_repo_config`: variables expanded, then validated), but
    with ${EMBER_REDIS} taken from `cfg.redis` rather than from this process's environment, which stays untouched:
    two stores in one process (tests, the bench) each keep their own address, and nothing leaks into subprocesses.
    """
    import yaml
    from feast.repo_config import FeastConfigError, RepoConfig
    from pydantic import ValidationError

    address = parse_redis(cfg.redis).connection_string()  # Feast's spelling of a redis:// or rediss:// URL too
    text = os.path.expandvars(cfg.yaml.read_text().replace("${EMBER_REDIS}", address))
    raw = yaml.safe_load(text)
    if cfg.engine == "ray":
        raw |= ray_blocks(cfg.repo)
        online = raw.get("online_store")
        if isinstance(online, dict) and online.get("type") == "sqlite" and online.get("path"):
            # Ray workers get the config without its repo_path: a relative SQLite path would resolve against each
            # worker's working directory, and Feast's Ray writer drops a batch it fails to write without an error.
            raw["online_store"] = {**online, "path": str((cfg.repo / str(online["path"])).resolve())}
    try:
        config = RepoConfig(**raw)
    except ValidationError as err:
        raise FeastConfigError(err, cfg.repo / RAY_YAML if cfg.engine == "ray" else cfg.yaml) from err
    config.repo_path = Path(cfg.repo)
    return config


def ray_blocks(repo: Path) -> dict[str, Any]:
    """The `offline_store` and `batch_engine` of the repo's feature_store.ray.yaml (`--engine ray`), which replace
    those of whichever online-store yaml is in use. A relative `storage_path` (where the Ray offline store stages
    results) is resolved against the repo, as Feast resolves the SQLite path. No `ray_address` in the file: Feast
    then connects to `RAY_ADDRESS` (a `ray start` head, a `ray://` client address, a KubeRay head service) and
    starts a local Ray in process when it is unset."""
    import yaml

    path = repo / RAY_YAML
    if not path.is_file():
        raise UserError(f"{path}: not found (--engine ray reads its offline_store and batch_engine)")
    raw = yaml.safe_load(os.path.expandvars(path.read_text())) or {}
    offline, engine = raw.get("offline_store"), raw.get("batch_engine")
    if not isinstance(offline, dict) or offline.get("type") != "ray":
        raise UserError(f"{path}: offline_store must be a mapping with type: ray")
    if not isinstance(engine, dict) or engine.get("type") != "ray.engine":
        raise UserError(f"{path}: batch_engine must be a mapping with type: ray.engine")
    if offline.get("storage_path"):
        offline = {**offline, "storage_path": str((repo / str(offline["storage_path"])).resolve())}
    return {"offline_store": offline, "batch_engine": engine}


def open_store(cfg: StoreConfig) -> FeatureStore:
    """A FeatureStore over the repo with the configured online store."""
    from feast import FeatureStore

    return FeatureStore(repo_path=str(cfg.repo), config=repo_config(cfg))


def apply(cfg: StoreConfig) -> str:
    """Runs `feast apply` on the repo (the real CLI: it imports every .py file of the repo directory).

    Also writes `data/feast/definitions.json`, the versioned description of what was applied (the catalog and a
    hash of each definition file): DVC tracks it, not the registry database, which Feast rewrites on every
    materialization.
    """
    (cfg.data_dir / "feast").mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "feast"), "-c", str(cfg.repo), "-f", str(cfg.yaml), "apply"],
        capture_output=True,
        text=True,
        env=cfg.env(),
    )
    if proc.returncode != 0:
        last = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-1:] or ["(no output)"]
        raise UserError(f"{cfg.repo}: feast apply failed: {last[0]}")
    atomic_write_text(cfg.data_dir / "feast" / "definitions.json", json.dumps(definitions(cfg), indent=2) + "\n")
    return proc.stdout


def definitions(cfg: StoreConfig) -> dict[str, Any]:
    """What the registry holds, deterministically: views and their typed features, and the definition files."""
    from features.catalog import PROJECT, SERVICES, VIEWS

    return {
        "project": PROJECT,
        "views": {
            v.name: {"join_key": v.join_key, "features": [[f, str(d)] for f, d in v.features]} for v in VIEWS.values()
        },
        "feature_services": list(SERVICES),
        "files": {p.name: file_sha256(p) for p in sorted(cfg.repo.glob("*.py")) + sorted(cfg.repo.glob("*.yaml"))},
    }


def offline_end(cfg: StoreConfig) -> datetime:
    """The simulated 'now': the newest snapshot time in the offline feature tables."""
    newest = None
    for path in sorted((cfg.data_dir / "features").glob("*.parquet")):
        col = pq.read_table(path, columns=["event_timestamp"]).column("event_timestamp")
        value = pc.max(col).as_py()
        if value is not None and (newest is None or value > newest):
            newest = value
    if newest is None:
        raise UserError(f"{cfg.data_dir / 'features'}: no offline features (run `ember features build` first)")
    return newest.astimezone(UTC)


def materialize(
    cfg: StoreConfig,
    end: datetime | None = None,
    window: timedelta = DEFAULT_WINDOW,
    views: list[str] | None = None,
) -> dict[str, Any]:
    """Loads the newest feature rows into the online store, incrementally.

    A view never materialized before gets [end - window, end]; afterwards only what is new since its last
    materialization end (`materialize_incremental`). `views` limits it to those feature views (default: all).

    Returns:
        {view: [start, end]} of what was loaded, and the wall time.
    """
    import time

    store = open_store(cfg)
    end = end or offline_end(cfg)
    loaded: dict[str, Any] = {}
    start_t = time.perf_counter()
    last_end = {fv.name: fv.most_recent_end_time for fv in store.list_feature_views()}
    unknown = sorted(set(views or []) - set(last_end))
    if unknown:
        raise UserError(f"--views: unknown feature view(s) {', '.join(unknown)} (choose from {', '.join(last_end)})")
    if views is not None:
        last_end = {name: t for name, t in last_end.items() if name in views}
    # A view never loaded, or loaded past `end`: the offline tables were rebuilt to an earlier end (regenerated data),
    # so the online rows are newer than the offline truth. The incremental path would skip them and serve stale,
    # future values; reload the window instead (the SQLite store overwrites each row). Feast keeps the later end in
    # its registry, so such a view is reloaded on every run until the offline data passes that end again.
    fresh = [name for name, t in last_end.items() if t is None or t > end]
    seen = {name: t for name, t in last_end.items() if t is not None and t < end}  # skip views already at `end`
    if cfg.online_store == "sqlite" and cfg.engine == "duckdb":
        windows = {name: (end - window, end) for name in fresh} | {name: (t, end) for name, t in seen.items()}
        write_sqlite(store, cfg.online.sqlite_path, windows)
    else:
        # Feast's own materialization, through its batch engine (Ray's under --engine ray). Redis keeps a row whose
        # stored event time is newer than the one written (a late push must not roll it back), so rows of a rebuild
        # to an earlier end would never land: drop those views' rows first.
        if cfg.online_store == "redis":
            _clear_redis_views(store, [name for name in fresh if last_end[name] is not None])
        if fresh:
            store.materialize(start_date=end - window, end_date=end, feature_views=fresh)
        if seen:
            store.materialize_incremental(end_date=end, feature_views=list(seen))
    loaded.update({name: [(end - window).isoformat(), end.isoformat()] for name in fresh})
    loaded.update({name: [t.isoformat(), end.isoformat()] for name, t in seen.items()})
    online_backend(cfg).mark_materialized(end.isoformat() + f"@{time.time():.3f}")  # readers drop their caches
    return {"views": loaded, "seconds": round(time.perf_counter() - start_t, 2)}


def _clear_redis_views(store: FeatureStore, names: list[str]) -> None:
    """Deletes every entity's rows of the named views from the Redis online store (Feast's own delete_table)."""
    if not names:
        return
    from feast.infra.online_stores.redis import RedisOnlineStore

    for name in names:
        RedisOnlineStore().delete_table(store.config, store.get_feature_view(name))


def write_sqlite(store: FeatureStore, path: Path, windows: dict[str, tuple[datetime, datetime]]) -> dict[str, int]:
    """Feast's materialization into its SQLite online store, in bulk: per view, the newest row of each entity with
    start <= event_timestamp <= end (Feast's `pull_latest_from_table_or_query`) is written as Feast writes it (one
    row per entity and feature: v3 entity key, `Value` protobuf, value_text, event_ts in epoch seconds), then the
    interval is recorded in the registry (`apply_materialization`), so the incremental path and `feast` see the same
    state. Feast converts and upserts value by value (one `execute` each: 97 s for the small world on 2 cores); this
    is one DuckDB query and one `executemany` per view. Returns the entities written per view.
    """
    import sqlite3

    import duckdb
    from feast import FileSource
    from feast.infra.online_stores.helpers import compute_table_id

    from features.catalog import VIEWS
    from features.online import entity_key

    written: dict[str, int] = {}
    con = duckdb.connect()
    db = sqlite3.connect(path)
    db.execute("PRAGMA cache_size = -262144")  # 256 MiB of pages for the two B-trees of each table
    try:
        for name, (start, end) in windows.items():
            fv, view = store.get_feature_view(name), VIEWS[name]
            if not isinstance(fv.batch_source, FileSource):
                raise UserError(f"feature view '{name}': its batch source is not a file; materialize it with Feast")
            source, ts = fv.batch_source.path, fv.batch_source.timestamp_field
            cols = ", ".join(f'"{c}"' for c in (view.join_key, *view.names, ts))
            rows = con.sql(
                f"""SELECT {cols} FROM (
                        SELECT *, row_number() OVER (PARTITION BY "{view.join_key}" ORDER BY "{ts}" DESC) AS rn
                        FROM read_parquet($source) WHERE "{ts}" >= $start AND "{ts}" <= $end)
                    WHERE rn = 1""",
                params={"source": str(source), "start": start.astimezone(UTC), "end": end.astimezone(UTC)},
            ).to_arrow_table()
            keys = [entity_key(view.join_key, k) for k in rows.column(view.join_key).to_pylist()]
            stamps = [_epoch_seconds(t) for t in rows.column(ts).to_pylist()]
            columns = sorted((f, _encoded(d, rows.column(f).to_pylist())) for f, d in view.features)
            order = sorted(range(len(keys)), key=keys.__getitem__)  # primary-key order: B-tree appends, not splits
            table = compute_table_id(store.project, fv, store.config.registry.enable_online_feature_view_versioning)
            with db:
                db.executemany(
                    f'INSERT INTO "{table}" (entity_key, feature_name, value, value_text, event_ts, created_ts) '
                    "VALUES (?, ?, ?, ?, ?, NULL) ON CONFLICT(entity_key, feature_name) DO UPDATE SET "
                    "value = excluded.value, value_text = excluded.value_text, event_ts = excluded.event_ts, "
                    "created_ts = excluded.created_ts",
                    (
                        (keys[i], feature, blobs[i], texts[i], stamps[i])
                        for i in order
                        for feature, (blobs, texts) in columns
                    ),
                )
            store.registry.apply_materialization(fv, store.project, start, end)
            written[name] = len(keys)
    finally:
        db.close()
        con.close()
    return written


def _epoch_seconds(t: datetime) -> int:
    """event_ts as Feast stores it: the naive UTC time through its SQLite adapter (`int(naive.timestamp())`)."""
    return int(t.astimezone(UTC).replace(tzinfo=None).timestamp())


def _encoded(dtype: Dtype, values: list[Any]) -> tuple[list[bytes], list[str | None]]:
    """One feature column as Feast serializes it: (Value protobufs, value_text); a null is an empty Value."""
    from features.online import Value

    blobs: list[bytes] = []
    texts: list[str | None] = []
    seen: dict[Any, tuple[bytes, str | None]] = {}
    for v in values:
        if v is None or (isinstance(v, float) and v != v):
            blobs.append(b"")
            texts.append(None)
            continue
        if dtype == Dtype.INT64_LIST:
            blobs.append(Value(int64_list_val={"val": v}).SerializeToString())
            texts.append(None)
            continue
        hit = seen.get(v)
        if hit is None:
            if dtype == Dtype.STRING:
                hit = (Value(string_val=v).SerializeToString(), v)
            elif dtype == Dtype.FLOAT32:
                msg = Value(float_val=v)
                hit = (msg.SerializeToString(), str(msg.float_val))
            else:
                field = "int32_val" if dtype == Dtype.INT32 else "int64_val"
                hit = (Value(**{field: int(v)}).SerializeToString(), str(int(v)))
            seen[v] = hit
        blobs.append(hit[0])
        texts.append(hit[1])
    return blobs, texts


def materialized_through(cfg: StoreConfig) -> bool:
    """Whether the online store already holds the newest offline snapshot, for the registry as it is now.

    Reads the marker `materialize` leaves in the online store (no Feast import): true when it covers the newest
    snapshot and was written after the registry's last change (a re-applied registry needs a new materialization).
    """
    from features.online import FeatureStoreUnavailable

    try:
        stamp = online_backend(cfg).materialized_at()
    except FeatureStoreUnavailable:
        return False
    file = registry_file(cfg)
    # The registry's last change: its file, or for a SQL registry the definitions `apply` writes beside each apply.
    changed = file if file is not None else cfg.data_dir / "feast" / "definitions.json"
    if not stamp or "@" not in stamp or not changed.is_file():
        return False
    end, written = stamp.split("@", 1)
    return datetime.fromisoformat(end) >= offline_end(cfg) and float(written) > changed.stat().st_mtime


def registry_file(cfg: StoreConfig) -> Path | None:
    """The file registry the repo's yaml names (a bare path, or a mapping of type file), None for a SQL registry
    (infra/config/feature_store.yaml: Postgres). Read without importing Feast."""
    import yaml

    registry = yaml.safe_load(cfg.yaml.read_text()).get("registry")
    if isinstance(registry, dict):
        if registry.get("registry_type", "file") != "file":
            return None
        registry = registry.get("path")
    return (cfg.repo / os.path.expandvars(str(registry))).resolve()


def online_backend(cfg: StoreConfig) -> Backend:
    """The direct reader's backend for the same store Feast writes (features.online)."""
    from features.online import open_backend

    return open_backend(cfg.online)


def training_set(
    cfg: StoreConfig,
    model: str,
    dataset: Path,
    start: datetime,
    end: datetime,
    out: Path,
    window: dict[str, Any] | None = None,
) -> dict[str, int]:
    """Point-in-time training set: each impression in [start, end) joined with the features as of its time.

    Ranker rows are all impressions (labels: every action, dwell_time, and the oracle probabilities when the data has
    them). Retrieval rows are the clicked impressions (the positives of the two-tower model).
    Every feature row was computed from events strictly before its event_timestamp (features.build), and Feast
    joins the newest row with event_timestamp <= the impression time, so no feature can see its own label.
    `window` (how [start, end) was chosen: features.windows.training_window) is recorded in meta.json.
    """
    if model not in FEATURE_SERVICES:
        raise UserError(f"--model: unknown model {model!r} (choose from {', '.join(FEATURE_SERVICES)})")
    if start >= end:
        raise UserError(f"--start/--end: empty window [{start.isoformat()}, {end.isoformat()})")
    manifest = Manifest.load(dataset)
    labels = [*ACTION_NAMES, DWELL_TIME]
    extras = [prob_column(a) for a in ACTION_NAMES] if manifest.dataset == "synthetic" else []
    keys = ["impression_id", "request_id", "user_id", "post_id", "author_id", "ts", "surface", "position", "in_network"]
    imp = read_table(dataset, "impressions", columns=keys + labels + extras).to_pandas()
    imp = imp[(imp.ts >= start) & (imp.ts < end)]
    if model == "retrieval":
        imp = imp[imp.click == 1]
    if imp.empty:
        raise UserError(f"--start/--end: no impressions of {dataset} in [{start.isoformat()}, {end.isoformat()})")
    entity_df = imp.rename(columns={"ts": "event_timestamp"}).reset_index(drop=True)
    file = registry_file(cfg)
    if file is not None and not file.exists():
        apply(cfg)  # a fresh clone has the versioned definitions (DVC) but not the registry database (state)
    store = open_store(cfg)
    service = _feature_service(cfg, store, FEATURE_SERVICES[model])
    # Arrow end to end (to_df is to_arrow().to_pandas(); written back it went through pandas twice, ~1/4 of this job)
    job = store.get_historical_features(entity_df=entity_df, features=service)
    table = _ray_result(job.to_df(), entity_df, service) if cfg.engine == "ray" else job.to_arrow()
    table = table.sort_by("impression_id")
    with atomic_dir(out) as tmp:
        pq.write_table(table, tmp / "training_set.parquet")
        meta: dict[str, Any] = {"dataset": manifest.dataset, "source": str(dataset), "model": model}
        meta["start"] = start.isoformat()
        meta |= {"end": end.isoformat(), "observed_actions": list(manifest.observed_actions)}
        if window is not None:
            meta["window"] = window
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return {"rows": table.num_rows, "columns": table.num_columns}


ARROW_TYPES = {
    Dtype.INT32: pa.int32(),
    Dtype.INT64: pa.int64(),
    Dtype.FLOAT32: pa.float32(),
    Dtype.STRING: pa.string(),
    Dtype.INT64_LIST: pa.list_(pa.field("element", pa.int64())),
}


def _ray_result(df: pd.DataFrame, entity_df: pd.DataFrame, service: Any) -> pa.Table:
    """Feast's Ray training set as the DuckDB path writes it: the entity columns as given, then each feature with the
    type the catalog declares (timestamps in microseconds, int32/float32, list<int64>), in the service's order.

    Feast 0.67's Ray store (its merge_asof input is sorted by key, not time, so it always falls back to a row-by-row
    join) hands back a one-element list feature as the bare element (923, not [923]), which also breaks its own
    `to_arrow`: such a cell is wrapped back here. A list feature of an entity without a row as of the impression comes
    back as [] where DuckDB gives null; that is kept (no list says whether it was [] or missing;
    models.retrieval.data reads both as an empty history), and tests/features/test_ray_engine.py shows it.
    """
    import numpy as np

    from features.catalog import VIEWS

    columns: dict[str, pa.Array] = {}
    for name in entity_df.columns:
        target = pa.Schema.from_pandas(entity_df[[name]], preserve_index=False).field(name).type
        if name == "event_timestamp":
            target = pa.timestamp("us", tz="UTC")  # what the DuckDB store returns (Ray: nanoseconds)
        columns[name] = pa.array(df[name]).cast(target)
    for projection in service.feature_view_projections:
        dtypes = dict(VIEWS[projection.name].features)
        for feature in projection.features:
            values = df[feature.name].tolist()
            if dtypes[feature.name] == Dtype.INT64_LIST:
                values = [_as_list(v) for v in values]
            else:
                values = [None if v is None or (isinstance(v, float) and np.isnan(v)) else v for v in values]
            columns[feature.name] = pa.array(values, type=ARROW_TYPES[dtypes[feature.name]])
    return pa.table(columns)


def _as_list(value: Any) -> list[int] | None:
    """One list-feature cell of Feast's Ray result: a list, None for a missing one, a bare element as [element]."""
    if value is None or (isinstance(value, float) and value != value):
        return None
    if hasattr(value, "__len__"):
        return [int(v) for v in value]
    return [int(value)]


def _feature_service(cfg: StoreConfig, store: FeatureStore, name: str) -> Any:
    """The feature service from the registry; a SQL registry not yet applied for this project is applied first."""
    from feast.errors import FeastObjectNotFoundException, ProjectNotFoundException

    try:
        return store.get_feature_service(name)
    except (FeastObjectNotFoundException, ProjectNotFoundException):  # not in the registry (or not the project)
        if registry_file(cfg) is not None:
            raise
    apply(cfg)
    return open_store(cfg).get_feature_service(name)


@dataclass(frozen=True)
class Engagement:
    """One new engagement to append to a user's real-time history."""

    user_id: int
    post_id: int
    author_id: int
    actions: int  # bitmask over core.actions
    surface: int
    ts: datetime


def push_history(
    cfg: StoreConfig,
    engagements: list[Engagement],
    history_length: int = 128,
    store: FeatureStore | None = None,
    not_before: datetime | None = None,
) -> int:
    """Appends engagements to their users' online histories through the Feast PushSource (PushMode.ONLINE).

    Each user's current history is read from the online store, extended oldest-first and cut to the last
    `history_length`; the pushed row's event_timestamp is the newest engagement time (Redis ignores a push that is not
    newer than what it holds, so engagements must arrive in time order per user). `not_before` raises the pushed
    row's time to at least that (the service passes the wall clock, so a late engagement still lands in Redis);
    `store` reuses an open FeatureStore.

    Returns:
        the number of users pushed.
    """
    import pandas as pd
    from feast.data_source import PushMode

    from features.online import OnlineFeatures

    reader = OnlineFeatures(online_backend(cfg))
    by_user: dict[int, list[Engagement]] = {}
    for e in sorted(engagements, key=lambda e: e.ts):
        by_user.setdefault(e.user_id, []).append(e)
    rows = []
    for user_id, new in by_user.items():
        h = reader.user(user_id).history
        cols = {
            "hist_post_ids": [*h["hist_post_ids"], *(e.post_id for e in new)],
            "hist_author_ids": [*h["hist_author_ids"], *(e.author_id for e in new)],
            "hist_actions": [*h["hist_actions"], *(e.actions for e in new)],
            "hist_surfaces": [*h["hist_surfaces"], *(e.surface for e in new)],
            "hist_timestamps": [*h["hist_timestamps"], *(int(e.ts.timestamp() * 1000) for e in new)],
        }
        row: dict[str, Any] = {k: [int(x) for x in v[-history_length:]] for k, v in cols.items()}
        stamp = new[-1].ts if not_before is None else max(new[-1].ts, not_before)
        row.update(user_id=user_id, hist_length=len(row["hist_post_ids"]), event_timestamp=stamp)
        rows.append(row)
    store = store or open_store(cfg)
    store.push("user_history_push", pd.DataFrame(rows), to=PushMode.ONLINE)
    return len(rows)
