"""Rolling windows through real DVC on a nano copy: one more day of data moves the ranker's training window and the
served `as_of` by a day; unchanged data leaves the stage cached."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.project import nano_project

pytestmark = pytest.mark.slow


def _dvc(project: Path, *args: str) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "DO_NOT_TRACK": "1"}
    proc = subprocess.run(["dvc", *args], cwd=project, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"dvc {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def _window(project: Path) -> dict:
    """The stage's recorded window, the training set's event times and the deployment's as_of."""
    from flows.deploy import DEPLOY_FILE, write_deployment

    out = project / "data" / "training" / "ranker"
    meta = json.loads((out / "meta.json").read_text())
    ts = pd.read_parquet(out / "training_set.parquet", columns=["event_timestamp"])["event_timestamp"]
    write_deployment(project, None)  # no model set yet: the template's params, with as_of resolved
    deployed = yaml.safe_load((project / DEPLOY_FILE).read_text())
    as_of = deployed["variants"][0]["recommender"]["params"]["as_of"]
    return {
        "start": datetime.fromisoformat(meta["start"]),
        "end": datetime.fromisoformat(meta["end"]),
        "window": meta["window"],
        "first": ts.min().to_pydatetime(),
        "last": ts.max().to_pydatetime(),
        "as_of": datetime.fromisoformat(as_of),
    }


def test_a_new_day_of_data_moves_the_window_and_the_served_as_of(tmp_path: Path) -> None:
    project = nano_project(tmp_path / "project")
    _dvc(project, "repro", "training_set_ranker")
    before = _window(project)
    day = timedelta(days=1)
    # nano: 4 days from 2026-01-01; params training_set_ranker.days 2
    assert (before["start"], before["end"]) == (datetime(2026, 1, 3, tzinfo=UTC), datetime(2026, 1, 5, tzinfo=UTC))
    assert before["window"]["days"] == 2
    assert before["start"] <= before["first"] < before["start"] + day  # both whole days are in the set
    assert before["end"] - day <= before["last"] < before["end"]
    assert before["as_of"] == before["end"]  # the service's "now" is the end of the newest day

    again = _dvc(project, "status", "training_set_ranker")
    assert "up to date" in again.lower(), again  # unchanged data: the derived window keeps the stage cached

    params = yaml.safe_load((project / "params.yaml").read_text())
    params["synth"]["days"] = 5  # one more day of the same world
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    _dvc(project, "repro", "training_set_ranker")
    after = _window(project)
    assert (after["start"], after["end"]) == (before["start"] + day, before["end"] + day)
    assert after["end"] - day <= after["last"] < after["end"]
    assert after["first"] >= before["first"] + day - timedelta(hours=1)
    assert after["as_of"] == before["as_of"] + day
