"""The DVC pipeline: `dvc repro` on the synthetic default, then `dvc push` and `dvc pull` into a fresh clone."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from core.schema import Manifest, file_sha256

REPO = Path(__file__).resolve().parents[1]


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def _copy_project(dst: Path) -> None:
    """Copies the tracked and not-ignored files of the working tree (uncommitted edits included)."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for rel in filter(None, (p.decode() for p in listed)):
        src = REPO / rel
        if src.is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)


@pytest.mark.slow
def test_dvc_repro_push_then_pull_in_a_fresh_clone_restores_outputs(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "DO_NOT_TRACK": "1"}
    project, remote, clone = tmp_path / "project", tmp_path / "remote", tmp_path / "clone"
    project.mkdir()
    _copy_project(project)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["synth"].update(scale="nano", days=4, drift_day=2)
    (project / "params.yaml").write_text(yaml.safe_dump(params))

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
