"""The DVC pipeline: `dvc repro` on the synthetic default, then `dvc push` and `dvc pull` into a fresh clone."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.schema import Manifest, file_sha256
from tests.project import copy_project, use_nano

REPO = Path(__file__).resolve().parents[1]


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.mark.slow
def test_dvc_repro_push_then_pull_in_a_fresh_clone_restores_outputs(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "DO_NOT_TRACK": "1"}
    project, remote, clone = tmp_path / "project", tmp_path / "remote", tmp_path / "clone"
    project.mkdir()
    copy_project(project)
    use_nano(project)

    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com"]
    _run(["git", "init", "-q"], project, env)
    _run(["dvc", "remote", "modify", "local", "url", str(remote)], project, env)
    _run([*git, "add", "-A"], project, env)
    _run([*git, "commit", "-qm", "project"], project, env)

    _run(["dvc", "repro", "synth", "data_stats"], project, env)
    produced = Manifest.load(project / "data" / "synth")
    assert produced.rows["users"] == 300
    _run(["dvc", "push", "synth", "data_stats"], project, env)
    _run([*git, "add", "-A"], project, env)
    _run([*git, "commit", "-qm", "repro"], project, env)

    _run(["git", "clone", "-q", str(project), str(clone)], tmp_path, env)
    assert not (clone / "data" / "synth").exists()
    _run(["dvc", "pull", "synth"], clone, env)
    pulled = Manifest.load(clone / "data" / "synth")
    assert pulled.files == produced.files
    for rel, digest in pulled.files.items():
        assert file_sha256(clone / "data" / "synth" / rel) == digest
    status = _run(["dvc", "status", "synth", "data_stats"], clone, env)
    assert "up to date" in status.lower()
    # A no-op rerun does no work: nothing to reproduce.
    again = _run(["dvc", "repro", "synth", "data_stats"], clone, env)
    assert "didn't change, skipping" in again or "up to date" in again.lower()
