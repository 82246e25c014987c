"""A copy of the project in a temporary directory, for tests that run DVC stages or flows end to end."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def copy_project(dst: Path) -> None:
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


def use_nano(project: Path) -> None:
    """Switches the copy's params.yaml to the nano synthetic scale and model preset (seconds instead of minutes)."""
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["synth"].update(scale="nano", days=4, drift_day=2)
    params["train_retrieval"].update(preset="nano", budget_s=15, epochs=3)
    params["training_set_ranker"].update(days=2)  # 2026-01-03..05, the last two of the 4 days
    params["train_ranker"].update(preset="nano", epochs=1, batch_size=64)
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    # serving/variants.yaml's `as_of: data` is the end of the world the features were built from: no rewrite.


def git_commit(project: Path, message: str = "copy") -> None:
    """Makes `project` a git repository (DVC needs one) holding all its files in one commit."""
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com"]
    for args in (["git", "init", "-q"], [*git, "add", "-A"], [*git, "commit", "-qm", message]):
        subprocess.run(args, cwd=project, check=True, capture_output=True)


def nano_project(root: Path) -> Path:
    """A committed copy of the project at the nano scale, in the new directory `root`."""
    root.mkdir(parents=True)
    copy_project(root)
    use_nano(root)
    git_commit(root)
    return root
