"""The loop closed through real DVC on a nano copy: requests logged by serving's ExposureLog become impressions with
their (synthetic) outcomes (dvc.yaml served, merge_served), and the next ranker training set holds them."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest
import yaml

from core.actions import ACTION_NAMES, prob_column
from core.schema import Manifest, read_table
from monitoring.served_impressions import SERVED_ID_BASE
from serving.exposure import ExposureLog, ExposureSettings
from tests.project import nano_project

pytestmark = pytest.mark.slow
AS_OF = datetime(2026, 1, 5, tzinfo=UTC)  # nano: 4 days from 2026-01-01; the service's `as_of: data`


def _dvc(project: Path, *args: str) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "DO_NOT_TRACK": "1"}
    proc = subprocess.run(["dvc", *args], cwd=project, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"dvc {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_served_impressions_reach_the_next_ranker_training_set(tmp_path: Path) -> None:
    project = nano_project(tmp_path / "project")
    _dvc(project, "repro", "features_apply")
    posts = read_table(project / "data" / "synth", "posts").to_pandas()
    recent = posts[posts.created_at < pd.Timestamp(AS_OF)].sort_values("created_at").post_id.to_numpy()[-40:]
    log = ExposureLog(ExposureSettings(path=project / "logs" / "exposure.jsonl"))
    for r in range(8):
        slate = recent[r * 5 : r * 5 + 5]
        items = [{"post_id": int(p), "position": n, "score": 0.0, "source": "ann"} for n, p in enumerate(slate)]
        log.log({"kind": "exposure", "request_id": f"req{r}", "ts": 1.8e9, "user_id": r + 1, "surface": 0,
                 "variant": "ranker", "items": items, "features": {}})  # fmt: skip
    assert log.flush()
    log.close()

    params = yaml.safe_load((project / "params.yaml").read_text())
    params["training_set_ranker"]["data"] = "data/merged"
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    ran = _dvc(project, "repro", "training_set_ranker")
    assert all(f"Running stage '{s}'" in ran for s in ("served", "merge_served", "training_set_ranker")), ran

    served = read_table(project / "data" / "served", "impressions").to_pandas()
    assert len(served) == 40 and served["ts"].eq(pd.Timestamp(AS_OF)).all()
    assert served[prob_column("click")].notna().all()  # drawn from the synthetic truth
    assert Manifest.load(project / "data" / "merged").rows["impressions"] == (
        Manifest.load(project / "data" / "synth").rows["impressions"] + 40
    )
    out = project / "data" / "training" / "ranker"
    frame = pd.read_parquet(out / "training_set.parquet")
    got = frame[frame.request_id >= SERVED_ID_BASE].set_index("impression_id").sort_index()
    want = served.set_index("impression_id").sort_index()
    assert list(got.index) == list(want.index)  # every served item, once
    for column in (*ACTION_NAMES, "user_id", "post_id", "position"):
        assert (got[column].to_numpy() == want[column].to_numpy()).all(), column
    assert got["event_timestamp"].eq(pd.Timestamp(AS_OF)).all()
    assert got["user_impressions_7d"].notna().all() and (got["user_impressions_7d"] > 0).any()  # joined features
    assert (got[prob_column("click")].to_numpy() == want[prob_column("click")].to_numpy()).all()  # the oracle's too
    # the served impressions are the newest: the window moved onto them
    assert pd.Timestamp(frame.event_timestamp.max()) == pd.Timestamp(AS_OF)
    # and the next ranker trains on them (served slates are 5 items, the world's 10)
    assert "Running stage 'train_ranker'" in _dvc(project, "repro", "train_ranker")
    assert (project / "artifacts" / "ranker" / "best" / "model.pt").is_file()
