"""infra/dvc-remote.sh: the S3-compatible DVC remote from the environment, offline (config only, no transfer)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "infra" / "dvc-remote.sh"
BIN = Path(sys.executable).parent


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "EMBER_DVC"))}
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", DVC_NO_ANALYTICS="1", **extra)
    return env


def _checkout(tmp_path: Path) -> Path:
    repo = tmp_path / "checkout"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    subprocess.run([str(BIN / "dvc"), "init", "-q"], cwd=repo, check=True, env=_env())
    return repo


def test_remote_url_and_endpoint_come_from_env_and_credentials_stay_there(tmp_path: Path) -> None:
    repo = _checkout(tmp_path)
    key_id, secret = "AKIAEMBERTEST", "do-not-write-me"
    env = _env(
        EMBER_DVC_REMOTE="s3://ember-artifacts/dvc",
        AWS_ENDPOINT_URL="http://127.0.0.1:9000",
        AWS_ACCESS_KEY_ID=key_id,
        AWS_SECRET_ACCESS_KEY=secret,
    )
    subprocess.run(["bash", str(SCRIPT)], cwd=repo, env=env, check=True, capture_output=True)
    local = (repo / ".dvc" / "config.local").read_text()
    assert "url = s3://ember-artifacts/dvc" in local
    assert "endpointurl = http://127.0.0.1:9000" in local
    assert "remote = env" in local
    for config in (local, (repo / ".dvc" / "config").read_text()):
        assert key_id not in config and secret not in config
    default = subprocess.run([str(BIN / "dvc"), "remote", "default"], cwd=repo, env=env, capture_output=True, text=True)
    assert default.stdout.strip() == "env"


def test_without_a_remote_it_fails_and_says_why(tmp_path: Path) -> None:
    repo = _checkout(tmp_path)
    proc = subprocess.run(["bash", str(SCRIPT)], cwd=repo, env=_env(), capture_output=True, text=True)
    assert proc.returncode != 0
    assert "EMBER_DVC_REMOTE" in proc.stderr
    assert not (repo / ".dvc" / "config.local").exists()
