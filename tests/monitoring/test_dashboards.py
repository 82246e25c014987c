"""The monitoring dashboards (monitoring/dashboards.py, `ember dashboards`): projects, panels and runs in an Evidently
workspace, and the UI itself opened in headless Chromium."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pytest

from monitoring import dashboards as board
from serving.smoke import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def summary(day: int, **overrides: Any) -> dict[str, Any]:
    """A hand-made monitor summary for 2026-11-0<day>."""
    end = datetime(2026, 11, day, tzinfo=UTC)
    base: dict[str, Any] = {
        "model": "ranker",
        "window_start": (end - timedelta(days=1)).isoformat(),
        "window_end": end.isoformat(),
        "status": "pass",
        "data_drift_share": 0.1 * day,
        "prediction_mean": {"click": 0.2 + 0.01 * day, "like": 0.05 + 0.005 * day},
        "quality": {
            "ndcg@10": 0.3 + 0.01 * day,
            "precision@10": 0.12,
            "recall@10": 0.25,
            "novelty": 8.5 - 0.1 * day,
            "diversity": 0.6,
            "popularity_bias": 0.35,
            "coverage": 0.2,
        },
        "skew_rate": 0.01 + 0.002 * (day % 2),
        "embedding_drift_share": 0.02,
        "target_drift_share": None,
        "tests": {"data_drift": "pass", "ndcg@10": "fail"},
    }
    base.update(overrides)
    return base


def drift_frames(shift: float = 1.0, n: int = 200) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(0)
    reference = pd.DataFrame({"user_age": rng.normal(size=n), "post_len": rng.normal(size=n)})
    current = pd.DataFrame({"user_age": rng.normal(shift, 1.0, size=n), "post_len": rng.normal(size=n)})
    return reference, current


def panel_titles(workspace: Path, model: str) -> list[str]:
    project = board.open_workspace(workspace).search_project(model)[0]
    return [p.title for p in project.dashboard.model().panels]


def test_summary_values_leave_out_none_and_count_failed_checks() -> None:
    values = board.summary_values(summary(2, skew_rate=None, data_drift_share=float("nan")))
    assert "skew_rate" not in values and "data_drift_share" not in values and "target_drift_share" not in values
    assert values["prediction_mean.click"] == pytest.approx(0.22)
    assert values["ndcg@10"] == pytest.approx(0.32)
    assert values["failed_checks"] == 1.0


def test_projects_and_panels_are_created_once(tmp_path: Path) -> None:
    board.init_workspace(tmp_path)
    board.init_workspace(tmp_path)
    board.add_monitor_run(tmp_path, summary(1))
    board.add_monitor_run(tmp_path, summary(2))
    names = sorted(p.name for p in board.open_workspace(tmp_path).list_projects())
    assert names == ["ranker", "retrieval"]
    for model in board.MODELS:
        assert panel_titles(tmp_path, model) == list(board.PANEL_TITLES)
    assert [p.title for p in board.dashboard_panels()] == list(board.PANEL_TITLES)


def test_a_new_model_gets_its_own_project(tmp_path: Path) -> None:
    board.add_monitor_run(tmp_path, summary(1, model="candidate"))
    assert [p.name for p in board.open_workspace(tmp_path).list_projects()] == ["candidate"]
    assert panel_titles(tmp_path, "candidate") == list(board.PANEL_TITLES)


def test_runs_are_listed_with_their_timestamps_and_values(tmp_path: Path) -> None:
    for day in (3, 1, 2):
        board.add_monitor_run(tmp_path, summary(day))
    explicit = datetime(2026, 11, 9, 12, 30, tzinfo=UTC)
    board.add_monitor_run(tmp_path, summary(4, status="fail", quality={}), timestamp=explicit)
    runs = board.list_monitor_runs(tmp_path, "ranker")
    # The summary's window_end (aware, UTC) is the run's time, stored naive UTC; an explicit timestamp wins.
    assert [r.timestamp for r in runs] == [datetime(2026, 11, d) for d in (1, 2, 3)] + [datetime(2026, 11, 9, 12, 30)]
    assert [r.values["data_drift_share"] for r in runs] == pytest.approx([0.1, 0.2, 0.3, 0.4])
    assert runs[0].values["ndcg@10"] == pytest.approx(0.31)
    assert runs[0].values["prediction_mean.click"] == pytest.approx(0.21)
    assert "ndcg@10" not in runs[3].values  # no quality that day: nothing plotted
    assert runs[3].metadata["status"] == "fail" and "status:fail" in runs[3].tags
    assert runs[0].metadata["source"] == "monitor" and not runs[0].is_demo
    assert board.list_monitor_runs(tmp_path, "retrieval") == []
    assert board.list_monitor_runs(tmp_path / "missing", "ranker") == []


def test_frames_add_evidently_data_drift_to_the_same_snapshot(tmp_path: Path) -> None:
    reference, current = drift_frames(shift=2.0)
    board.add_monitor_run(tmp_path, summary(1), reference=reference, current=current)
    (run,) = board.list_monitor_runs(tmp_path, "ranker")
    assert run.values["evidently_drift_share"] == pytest.approx(0.5)  # user_age drifted, post_len did not
    assert run.values["ndcg@10"] == pytest.approx(0.31)
    workspace = board.open_workspace(tmp_path)
    project = workspace.search_project("ranker")[0]
    stored = workspace.get_run(project.id, run.snapshot_id)
    assert stored is not None
    kinds = {r.metric_value_location.metric.params["type"] for r in stored.metric_results.values()}
    assert "evidently:metric_v2:ValueDrift" in kinds and "evidently:metric_v2:MeanValue" in kinds


def test_an_insufficient_data_run_still_records_a_point(tmp_path: Path) -> None:
    empty: dict[str, Any] = {"model": "retrieval", "status": "insufficient_data", "data_drift_share": None, "tests": {}}
    board.add_monitor_run(tmp_path, empty, timestamp=datetime(2026, 11, 5))
    (run,) = board.list_monitor_runs(tmp_path, "retrieval")
    assert run.values == {"failed_checks": 0.0}


@pytest.mark.parametrize(
    ("bad", "field"),
    [({"status": "pass"}, "summary.model"), ({"model": "ranker", "window_end": "yesterday"}, "summary.window_end")],
)
def test_a_bad_summary_is_a_user_error(tmp_path: Path, bad: dict[str, Any], field: str) -> None:
    from core.errors import UserError

    with pytest.raises(UserError, match=field):
        board.add_monitor_run(tmp_path, bad)


def test_seed_demo_runs_are_labelled_and_not_repeated(tmp_path: Path) -> None:
    end = datetime(2026, 11, 20)
    assert board.seed_demo(tmp_path, days=3, models=("ranker",), end=end) == 3
    assert board.seed_demo(tmp_path, days=3, models=("ranker",), end=end) == 0
    runs = board.list_monitor_runs(tmp_path, "ranker")
    assert [r.timestamp for r in runs] == [datetime(2026, 11, d) for d in (18, 19, 20)]
    assert all(r.is_demo and r.metadata["source"] == "demo" and (r.name or "").startswith("demo: ") for r in runs)


def test_cli_missing_workspace_is_one_line(run_cli: Any, tmp_path: Path) -> None:
    line = run_cli("dashboards", "--workspace", str(tmp_path / "nope")).error_line()
    assert "--workspace" in line and "nope" in line


def test_cli_port_in_use_is_one_line(run_cli: Any, tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        line = run_cli("dashboards", "--workspace", str(tmp_path), "--port", str(port)).error_line()
    assert "--port" in line and str(port) in line


def test_cli_seed_demo_without_serving(run_cli: Any, tmp_path: Path) -> None:
    result = run_cli("dashboards", "--workspace", str(tmp_path / "ws"), "--seed-demo", "--days", "2", "--no-serve")
    assert result.code == 0, result.stderr
    assert "4 demo runs added" in result.stdout
    assert len(board.list_monitor_runs(tmp_path / "ws", "retrieval")) == 2


def _wait_for_ui(base: str, server: subprocess.Popen[bytes], timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"`ember dashboards` exited with {server.returncode}")
        try:
            with urllib.request.urlopen(f"{base}/api/version", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"the Evidently UI did not answer at {base} within {timeout:.0f} s")


# Per panel card: its title, the counter's text, and the plotted marks (line markers, bars) inside its SVG charts.
_PANELS_JS = """
return Array.from(document.querySelectorAll('.MuiCard-root')).map(card => ({
  title: (card.querySelector('h5') || {}).textContent || '',
  text: card.innerText,
  svgs: card.querySelectorAll('svg').length,
  marks: card.querySelectorAll('svg .MuiMarkElement-root, svg [class*="MuiBarElement"]').length,
  lines: card.querySelectorAll('svg .MuiLineElement-root').length,
}));
"""


@pytest.mark.slow
def test_dashboard_renders_with_data_in_headless_chromium(tmp_path: Path) -> None:
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        if os.environ.get("CI"):
            pytest.fail("chromium/chromium-driver missing: `make test` installs them (make browsers)")
        pytest.skip("Debian's chromium and chromium-driver are not installed (make browsers)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    workspace = tmp_path / "evidently"
    reference, current = drift_frames(shift=2.0)
    for day in (1, 2, 3):
        board.add_monitor_run(workspace, summary(day))
    board.add_monitor_run(workspace, summary(4, status="fail"), reference=reference, current=current)
    board.add_monitor_run(workspace, summary(4, model="retrieval"))

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    argv = [sys.executable, "-m", "cli.main", "dashboards", "--workspace", str(workspace), "--port", str(port)]
    log = (tmp_path / "ui.log").open("wb")
    server = subprocess.Popen(argv, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
    driver = None
    try:
        _wait_for_ui(base, server)
        with urllib.request.urlopen(f"{base}/api/projects", timeout=10) as response:
            projects = {p["name"]: p["id"] for p in json.load(response)}
        assert set(projects) == {"ranker", "retrieval"}

        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
            options.add_argument(flag)
        options.add_argument("--window-size=1600,2300")
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        driver.get(f"{base}/projects/{projects['ranker']}")

        def panels_drawn(drv: Any) -> list[dict[str, Any]] | Literal[False]:
            found = drv.execute_script(_PANELS_JS)
            titles = {p["title"] for p in found}
            if not set(board.PANEL_TITLES) <= titles:
                return False
            plots = [p for p in found if p["svgs"]]
            return found if plots and all(p["marks"] for p in plots) else False

        drawn: list[dict[str, Any]] = WebDriverWait(driver, 60, poll_frequency=0.5).until(panels_drawn)
        panels = {p["title"]: p for p in drawn}
        # The whole dashboard in one picture: the window as tall as the page, then the charts' animation let finish.
        height = int(driver.execute_script("return document.documentElement.scrollHeight"))
        driver.set_window_size(1600, height + 120)
        time.sleep(1.5)
        for title in board.PANEL_TITLES:
            panel = panels[title]
            assert "no data" not in panel["text"].lower(), title
            if title.endswith("(last run)"):
                value = panel["text"].removeprefix(title).split()[0]
                float(value)  # a counter shows a number
            else:
                assert panel["svgs"] and panel["marks"] >= 1, (title, panel)
        # Every run is a point: the line panels have one marker per run and per series with a value that day.
        assert panels["Ranking quality@10"]["marks"] == 3 * 4
        assert panels["Ranking quality@10"]["lines"] == 3
        assert panels["Drift share"]["lines"] == 3  # data, embedding and Evidently's own (target drift is None)
        assert panels["Prediction mean per action"]["lines"] == 2

        shot = tmp_path / "dashboard.png"
        assert driver.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
        if os.environ.get("EMBER_SAVE_SCREENSHOT"):
            target = REPO_ROOT / "bench" / "results" / "dashboard.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(shot, target)

        severe = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
        assert severe == [], severe
    finally:
        if driver is not None:
            driver.quit()
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


def test_a_simulation_run_plots_each_policy_per_day_in_its_own_project(tmp_path: Path) -> None:
    rows = [
        {"day": d, "date": f"2026-01-0{4 + d}", "policy": p, "true_reward": v, "alarm": d == 2, "retrained": d == 2,
         "promoted": False}
        for d in (1, 2) for p, v in (("loop", 1.5 * d), ("oracle", 10.0 + d), ("random", -3.0))
    ]  # fmt: skip
    ids = board.add_simulation_days(tmp_path, rows, "nodrift")
    assert len(ids) == 2
    runs = board.list_monitor_runs(tmp_path, board.SIMULATION)
    assert [r.timestamp for r in runs] == [datetime(2026, 1, 5), datetime(2026, 1, 6)]
    assert runs[1].values == {"true_reward.loop": 3.0, "true_reward.oracle": 12.0, "true_reward.random": -3.0,
                              "alarm": 1.0, "retrained": 1.0, "promoted": 0.0}  # fmt: skip
    assert "nodrift" in runs[0].tags and runs[0].metadata["run"] == "nodrift"
    workspace = board.open_workspace(tmp_path)
    project = workspace.search_project(board.SIMULATION)[0]
    titles = [p.title for p in project.dashboard.model().panels]
    assert titles == ["True reward per request", "Alarms, retrains, promotions"]
    board.add_simulation_days(tmp_path, rows[:3], "again")  # a second run: the same project and panels
    assert len(workspace.search_project(board.SIMULATION)) == 1
    assert [p.title for p in project.dashboard.model().panels] == titles
    assert board.list_monitor_runs(tmp_path, "ranker") == []
