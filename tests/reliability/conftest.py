"""What the reliability tests share: one nano world (a copy of the project with trained models, an index and a
materialized SQLite online store) and `ember serve` over it in a real process."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
import yaml

from serving.smoke import free_port, stop_group
from tests.project import nano_project

TOKEN = "reliability-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def run(args: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 900) -> str:
    proc = subprocess.run(args, cwd=cwd, env=env or tool_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    return proc.stdout


def tool_env(**extra: str) -> dict[str, str]:
    """The environment of a child `ember`/`dvc`: this venv first on PATH, no telemetry."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    return {**os.environ, "PATH": path, "DO_NOT_TRACK": "1", "BENTOML_DO_NOT_TRACK": "true", **extra}


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A nano copy of the project: `dvc repro` up to the index and the ranker, then the SQLite online store."""
    root = nano_project(tmp_path_factory.mktemp("reliability") / "project")
    run(["dvc", "repro", "build_index", "train_ranker"], root)
    run(["ember", "features", "materialize"], root)
    return root


def as_of(world: Path) -> str:
    """The simulated now: the newest post snapshot of the offline store (what was materialized)."""
    ts = pd.read_parquet(world / "data" / "features" / "post_stats.parquet", columns=["event_timestamp"])
    return str(ts["event_timestamp"].max().isoformat())


def pipeline_variants(world: Path, exposure: Path, models: Path | None = None, **store: Any) -> dict[str, Any]:
    """A variants config: the full pipeline over `world` (models from `models`, default world/artifacts) as the
    champion, the popular baseline as the fallback, no shadow; `store` overrides the online-store keys."""
    models = models or world / "artifacts"
    params = {
        "retrieval_model": str(models / "retrieval" / "best"),
        "index": str(models / "index"),
        "ranker": str(models / "ranker" / "best"),
        "features": str(world / "data" / "features"),
        "sqlite_path": str(world / "data" / "feast" / "online.db"),
        "as_of": as_of(world),
    } | store
    return {
        "salt": "reliability",
        "variants": [
            {"name": "ranker", "share": 1.0, "recommender": {"kind": "pipeline", "params": params}},
            {
                "name": "popular",
                "share": 0.0,
                "recommender": {"kind": "popular", "stats": str(world / "data" / "features" / "post_stats.parquet")},
            },
        ],
        "exposure": {"path": str(exposure)},
    }


@dataclass(frozen=True)
class Server:
    url: str
    pid: int
    log: Path
    http: httpx.Client  # keep-alive


@contextmanager
def serving(world: Path, root: Path, config: dict[str, Any], name: str = "serve") -> Iterator[Server]:
    """`ember serve` of the world's code with `config`, until /readyz answers 200; its process group stopped after."""
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    port = free_port()
    # Its own BENTOML_HOME: every `bentoml serve` wipes the Prometheus directory there when it starts.
    env = tool_env(EMBER_ADMIN_TOKEN=TOKEN, BENTOML_HOME=str(root / f"{name}-bentoml"))
    log = root / f"{name}.log"
    out = log.open("wb")
    start = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "serve", "--port", str(port), "--config", str(path)],
        cwd=world,
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: stopping it stops BentoML's workers too
    )
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"ember serve exited {proc.returncode}: {log.read_text()[-3000:]}")
            if time.monotonic() - start > 180:
                pytest.fail(f"ember serve not ready after 180 s: {log.read_text()[-3000:]}")
            with suppress(httpx.TransportError):
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            time.sleep(0.2)
        with httpx.Client(base_url=url, timeout=30) as http:
            yield Server(url, proc.pid, log, http)
    finally:
        stop_group(proc)
        out.close()


def metric(server: Server, name: str) -> float:
    """The sum of a Prometheus counter over its label sets, from GET /metrics (0 when absent)."""
    text = server.http.get("/metrics").text
    values = re.findall(rf"^{re.escape(name)}(?:{{[^}}]*}})? ([0-9.eE+-]+)$", text, flags=re.M)
    return sum(float(v) for v in values)
