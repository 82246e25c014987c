"""The deployments' Postgres pieces, for real against the local Postgres (127.0.0.1:5432, trust auth): the Feast SQL
registry of infra/config/feature_store.yaml, and a Prefect server on Postgres that runs a flow and accepts the
Kubernetes work pool and deployments of infra/. Each test gets its own database, dropped afterwards.

Without Postgres these tests skip, except in CI (CI=true), where Postgres runs and its absence is a failure."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from flows.api import local_server, server_env

if TYPE_CHECKING:
    import psycopg

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
PG_HOST, PG_PORT, PG_USER = "127.0.0.1", 5432, "postgres"
AUTH_STRING = f"ember:{uuid.uuid4().hex}"  # the API's basic auth, as compose and the manifests set it
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.slow


def _connect(dbname: str) -> psycopg.Connection[tuple[Any, ...]]:
    import psycopg

    return psycopg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname=dbname, autocommit=True, connect_timeout=5)


@pytest.fixture
def database() -> Iterator[str]:
    """A fresh database `ember_test_<random>` on the local Postgres, dropped (even if still in use) afterwards."""
    import psycopg

    try:
        admin = _connect("postgres")
    except psycopg.OperationalError as err:
        reason = f"Postgres at {PG_HOST}:{PG_PORT} (user {PG_USER}) is unreachable: {err}".strip()
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason} (CI runs Postgres: its absence is a failure, not a skip)")
        pytest.skip(reason)
    name = f"ember_test_{uuid.uuid4().hex[:12]}"
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield name
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _query(dbname: str, sql: str) -> list[tuple[object, ...]]:
    with _connect(dbname) as conn:
        return conn.execute(sql).fetchall()


# Feast: the SQL registry ------------------------------------------------------------------------------------------


def test_feast_sql_registry_on_postgres(tmp_path: Path, database: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """`ember features apply --online-store redis` with infra/config/feature_store.yaml mounted over the repo's Redis
    config, as the flow-run Jobs do; then a fresh FeatureStore reads every view and service back from Postgres."""
    from features.catalog import PROJECT, SERVICES, VIEWS
    from features.store import StoreConfig, apply, open_store

    # A copy of the Feast repo, laid out as in the flows image: <root>/features/repo, deployment config mounted.
    repo = tmp_path / "features" / "repo"
    shutil.copytree(ROOT / "features" / "repo", repo, ignore=shutil.ignore_patterns("__pycache__", "*.yaml"))
    shutil.copy(INFRA / "config" / "feature_store.yaml", repo / "feature_store.redis.yaml")
    for name, value in {
        "EMBER_PG_USER": PG_USER,
        "EMBER_PG_PASSWORD": "",  # trust auth here; a Secret in the cluster
        "EMBER_PG_HOST": f"{PG_HOST}:{PG_PORT}",
        "EMBER_FEAST_DB": database,
    }.items():
        monkeypatch.setenv(name, value)
    cfg = StoreConfig(repo=repo, online_store="redis", redis="127.0.0.1:6379")

    apply(cfg)
    views_sql = "SELECT feature_view_name, project_id FROM feature_views ORDER BY 1"
    stored = _query(database, views_sql)
    assert stored == sorted((name, PROJECT) for name in VIEWS)
    assert not (tmp_path / "data" / "feast" / "registry.db").exists(), "the file registry must not be used"

    apply(cfg)  # every flow run applies first (infra/prefect-k8s.yaml): the same registry again, nothing doubled
    assert _query(database, views_sql) == stored
    services_sql = "SELECT feature_service_name FROM feature_services ORDER BY 1"
    assert [r[0] for r in _query(database, services_sql)] == sorted(SERVICES)

    store = open_store(cfg)
    assert store.config.registry.registry_type == "sql"
    assert store.project == PROJECT
    views = {v.name: v for v in store.list_feature_views()}
    assert views.keys() == VIEWS.keys()
    for name, view in VIEWS.items():
        assert [f.name for f in views[name].features] == [f for f, _ in view.features], name
    services = {s.name: s for s in store.list_feature_services()}
    assert services.keys() == set(SERVICES)
    for name, service in services.items():
        assert {p.name for p in service.feature_view_projections}, name


def test_the_store_recognises_a_sql_registry(tmp_path: Path, database: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the deployment's SQL registry (no registry file): a training set on a registry never applied applies it
    first, the materialization marker is judged against the last apply (definitions.json), and a re-apply asks for a
    new materialization."""
    import time

    import redis

    from features.build import build_features
    from features.store import StoreConfig, apply, materialize, materialized_through, registry_file, training_set
    from tests.features.tiny import ts, write_tiny

    repo = tmp_path / "features" / "repo"
    shutil.copytree(ROOT / "features" / "repo", repo, ignore=shutil.ignore_patterns("__pycache__", "*.yaml"))
    shutil.copy(INFRA / "config" / "feature_store.yaml", repo / "feature_store.redis.yaml")
    for name, value in {"EMBER_PG_USER": PG_USER, "EMBER_PG_PASSWORD": "", "EMBER_PG_HOST": f"{PG_HOST}:{PG_PORT}",
                        "EMBER_FEAST_DB": database}.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    data = write_tiny(tmp_path / "data" / "tiny")
    build_features(data, tmp_path / "data" / "features")
    cfg = StoreConfig(repo=repo, online_store="redis", redis="127.0.0.1:6379,db=13")
    assert registry_file(cfg) is None
    redis.Redis(db=13).flushdb()
    try:
        out = tmp_path / "training" / "ranker"
        assert training_set(cfg, "ranker", data, ts(2), ts(4), out)["rows"] > 0  # applied on the way
        assert _query(database, "SELECT count(*) FROM feature_services")[0][0] > 0
        assert not (tmp_path / "data" / "feast" / "registry.db").exists()
        assert not materialized_through(cfg)
        materialize(cfg)
        assert materialized_through(cfg)
        time.sleep(0.01)
        apply(cfg)  # a new apply: the online store must be loaded again
        assert not materialized_through(cfg)
    finally:
        redis.Redis(db=13).flushdb()


# Prefect: a server on Postgres ------------------------------------------------------------------------------------


@pytest.fixture
def prefect_server(tmp_path: Path, database: str) -> Iterator[str]:
    """`prefect server start` on a free loopback port with its database in Postgres (flows.api.local_server); yields
    the API URL."""
    extra = {
        "PREFECT_API_DATABASE_CONNECTION_URL": f"postgresql+asyncpg://{PG_USER}@{PG_HOST}:{PG_PORT}/{database}",
        "PREFECT_SERVER_API_AUTH_STRING": AUTH_STRING,
    }
    with local_server(tmp_path / "prefect-server", extra_env=extra, timeout_s=120) as url:
        yield url


PROBE_FLOW = """
from prefect import flow, task

@task
def add(a: int, b: int) -> int:
    return a + b

@flow(name="ember-infra-probe")
def probe(x: int) -> int:
    return add(x, 1)

print(probe(41))
"""


def _run(argv: list[str], env: dict[str, str], timeout: float = 180) -> str:
    proc = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(argv)}:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    return proc.stdout


def test_prefect_server_on_postgres_stores_flow_runs_and_k8s_deployments(
    tmp_path: Path, database: str, prefect_server: str
) -> None:
    client = tmp_path / "prefect-client"
    client.mkdir()
    env = server_env(client, {"PREFECT_API_URL": prefect_server, "PREFECT_API_AUTH_STRING": AUTH_STRING})
    request = urllib.request.Request(f"{prefect_server}/flows/filter", data=b"{}", method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:  # no credentials: refused (the probes' /health is open)
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 401

    script = tmp_path / "probe.py"
    script.write_text(PROBE_FLOW)
    assert _run([sys.executable, str(script)], env).strip().splitlines()[-1] == "42"
    runs = _query(
        database,
        "SELECT f.name, r.state_type, r.parameters FROM flow_run r JOIN flow f ON f.id = r.flow_id",
    )
    assert [(name, str(state), params) for name, state, params in runs] == [
        ("ember-infra-probe", "COMPLETED", {"x": 41})
    ]
    tasks = _query(database, "SELECT state_type FROM task_run")
    assert [str(t[0]) for t in tasks] == ["COMPLETED"]

    # The Kubernetes work pool with our base job template, and the deployments of infra/prefect-k8s.yaml on it.
    prefect = str(BIN / "prefect")
    pool = INFRA / "prefect-k8s-pool.json"
    _run([prefect, "work-pool", "create", "ember-k8s", "--type", "kubernetes", "--base-job-template", str(pool)], env)
    _run([prefect, "--no-prompt", "deploy", "--all", "--prefect-file", str(INFRA / "prefect-k8s.yaml")], env)
    pools = _query(database, "SELECT name, type, base_job_template FROM work_pool WHERE name = 'ember-k8s'")
    assert [(n, t) for n, t, _ in pools] == [("ember-k8s", "kubernetes")]
    assert pools[0][2] == json.loads(pool.read_text())
    deployments = _query(
        database,
        "SELECT d.name, d.parameters, p.name FROM deployment d "
        "JOIN work_queue q ON q.id = d.work_queue_id JOIN work_pool p ON p.id = q.work_pool_id",
    )
    by_name = {str(name): (params, pool_name) for name, params, pool_name in deployments}
    assert by_name.keys() == {"ember-pipeline-k8s", "materialize-k8s"}
    for params, pool_name in by_name.values():
        assert pool_name == "ember-k8s"
        assert isinstance(params, dict) and params["online_store"] == "redis"
