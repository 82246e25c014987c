"""`prefect deploy --all` of flows/prefect.yaml against a real local `prefect server start` (its own home and port)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from serving.smoke import free_port, stop_group

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
PREFECT = str(Path(sys.executable).parent / "prefect")


def _post(url: str, body: dict) -> list[dict]:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def test_prefect_deploy_all_creates_the_four_scheduled_deployments(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env |= {"PREFECT_API_URL": f"http://127.0.0.1:{port}/api", "EMBER_HOME": str(ROOT), "DO_NOT_TRACK": "1"}
    env.pop("PREFECT_API_KEY", None)
    server = subprocess.Popen(
        [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2)
                break
            except OSError:
                assert server.poll() is None, "prefect server exited"
                assert time.monotonic() < deadline, "prefect server did not come up in 120 s"
                time.sleep(1)
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
        deployments = _post(f"http://127.0.0.1:{port}/api/deployments/filter", {})
        spec = yaml.safe_load((ROOT / "flows" / "prefect.yaml").read_text())["deployments"]
        assert sorted(d["name"] for d in deployments) == sorted(d["name"] for d in spec)
        assert len(deployments) == 4
        for d in deployments:
            wanted = next(s for s in spec if s["name"] == d["name"])
            assert d["work_pool_name"] == "ember-process" and d["entrypoint"] == wanted["entrypoint"]
            assert d["parameters"] == wanted.get("parameters", {}), d["name"]
            crons = [s["schedule"]["cron"] for s in d["schedules"]]
            assert crons == [s["cron"] for s in wanted["schedules"]], d["name"]
    finally:
        stop_group(server, timeout_s=30)
