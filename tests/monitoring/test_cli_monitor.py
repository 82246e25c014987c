"""`ember monitor drift`: exit 0 pass, 1 fail, 0 + "insufficient data", 2 + one line for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.monitoring.test_drift import FEATURES, frame


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("monitor")
    paths = {
        "ref": d / "ref.parquet",
        "same": d / "same.parquet",
        "shifted": d / "shifted.parquet",
        "nan": d / "nan.parquet",
    }
    ref = frame(0, 1500).assign(user_id=np.arange(1500), hist_post_ids=[[1, 2]] * 1500)
    ref.to_parquet(paths["ref"])
    frame(1, 1200).to_parquet(paths["same"])
    frame(1, 1200, {c: 3.0 for c in FEATURES[:5]}).to_parquet(paths["shifted"])
    frame(1, 1200).assign(**{FEATURES[3]: np.nan}).to_parquet(paths["nan"])
    return paths


def test_pass_exit_0_with_json(run_cli, files: dict[str, Path], tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "drift.json"
    res = run_cli(
        "monitor", "drift", "--reference", str(files["ref"]), "--current", str(files["same"]), "--json", str(out)
    )
    assert res.code == 0, res.stderr
    assert "data drift: PASS" in res.stdout
    verdict = json.loads(out.read_text())["data_drift"]
    assert verdict["status"] == "pass" and set(verdict["per_feature"]) == set(FEATURES)  # user_id is not a feature


def test_fail_exit_1_lists_drifted(run_cli, files: dict[str, Path], tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    html = tmp_path / "drift.html"
    res = run_cli(
        "monitor", "drift", "--reference", str(files["ref"]), "--current", str(files["shifted"]), "--html", str(html)
    )
    assert res.code == 1
    assert "data drift: FAIL" in res.stdout
    assert all(f"  {c}: score" in res.stdout for c in FEATURES[:5])
    assert html.stat().st_size > 0


def test_insufficient_exit_0(run_cli, files: dict[str, Path]) -> None:  # type: ignore[no-untyped-def]
    res = run_cli("monitor", "drift", "--reference", str(files["ref"]), "--current", str(files["nan"]))
    assert res.code == 0
    assert "insufficient data" in res.stdout and repr(FEATURES[3]) in res.stdout
    res = run_cli(
        "monitor",
        "drift",
        "--reference",
        str(files["ref"]),
        "--current",
        str(files["same"]),
        "--features",
        f"{FEATURES[0]},nope",
    )
    assert res.code == 0 and "'nope' is missing" in res.stdout


def test_exposure_log_directory_as_current(run_cli, files: dict[str, Path], tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cur = pd.read_parquet(files["same"])
    lines = [
        json.dumps(
            {
                "kind": "exposure",
                "request_id": str(i),
                "user_id": i,
                "variant": "a",
                "ts": 0.0,
                "items": [{"post_id": 1, "position": 0, "score": 0.5}],
                "features": row,
            }
        )
        for i, row in enumerate(cur.to_dict(orient="records"))
    ]
    (tmp_path / "exposure.jsonl.1").write_text("\n".join(lines[:600]) + "\n{broken\n")
    (tmp_path / "exposure.jsonl").write_text("\n".join(lines[600:]) + "\n")
    res = run_cli("monitor", "drift", "--reference", str(files["ref"]), "--current", str(tmp_path))
    assert res.code == 0, res.stdout + res.stderr
    assert "2 files, 1200 records" in res.stdout and "1 malformed lines skipped" in res.stdout
    assert "data drift: PASS" in res.stdout


@pytest.mark.parametrize("which", ["reference", "current"])
def test_missing_file_is_one_line_error(run_cli, files: dict[str, Path], tmp_path: Path, which: str) -> None:  # type: ignore[no-untyped-def]
    args = {"reference": str(files["ref"]), "current": str(files["same"])}
    args[which] = str(tmp_path / "missing.parquet")
    res = run_cli("monitor", "drift", "--reference", args["reference"], "--current", args["current"])
    line = res.error_line()
    assert "missing.parquet" in line and "not found" in line


def test_bad_thresholds_key_is_one_line_error(run_cli, files: dict[str, Path], tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "t.yaml"
    bad.write_text("min_rows: 10\nshare: 0.2\n")
    res = run_cli(
        "monitor", "drift", "--reference", str(files["ref"]), "--current", str(files["same"]), "--thresholds", str(bad)
    )
    assert "t.yaml: share: unknown key" in res.error_line()
