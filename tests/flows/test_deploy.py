"""`prefect deploy --all` of flows/prefect.yaml against a real local `prefect server start` (its own home and port)."""

from __future__ import annotations

import json
import subprocess
import urllib.request
from pathlib import Path

import pytest
import yaml

from flows.api import PREFECT, local_server, server_env

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def _post(url: str, body: dict) -> list[dict]:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def test_prefect_deploy_all_creates_the_five_scheduled_deployments(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with local_server(home, timeout_s=120) as api:
        env = server_env(home, {"PREFECT_API_URL": api, "EMBER_HOME": str(ROOT)})
        pool = subprocess.run(
            [PREFECT, "work-pool", "create", "ember-process", "--type", "process"], env=env, capture_output=True
        )
        assert pool.returncode == 0, pool.stderr
        deploy = subprocess.run(
            [PREFECT, "--no-prompt", "deploy", "--all", "--prefect-file", "flows/prefect.yaml"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
        )
        assert deploy.returncode == 0, deploy.stdout[-2000:] + deploy.stderr[-2000:]
        deployments = _post(f"{api}/deployments/filter", {})
        spec = yaml.safe_load((ROOT / "flows" / "prefect.yaml").read_text())["deployments"]
        assert sorted(d["name"] for d in deployments) == sorted(d["name"] for d in spec)
        assert len(deployments) == 5
        for d in deployments:
            wanted = next(s for s in spec if s["name"] == d["name"])
            assert d["work_pool_name"] == "ember-process" and d["entrypoint"] == wanted["entrypoint"]
            assert d["parameters"] == wanted.get("parameters", {}), d["name"]
            crons = [s["schedule"]["cron"] for s in d["schedules"]]
            assert crons == [s["cron"] for s in wanted["schedules"]], d["name"]
