"""`simulate` through a real (test-harness) Prefect API: a nano world, its models built and deployed by the main job in
the run's own project, two simulated days served by the deployed pipeline, the days becoming DVC-tracked data, and the
deployed flows' daily steps (features, materialize, monitor, retrain, gate)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.schema import Manifest
from features.synth import EPOCH, SynthConfig, generate
from features.windows import data_end
from tests.project import REPO

pytestmark = pytest.mark.slow
NANO_MODELS = {  # tests/project.use_nano's model settings: seconds instead of minutes
    "train_retrieval.preset": "nano", "train_retrieval.budget_s": 15, "train_retrieval.epochs": 3,
    "train_ranker.preset": "nano", "train_ranker.epochs": 1, "train_ranker.batch_size": 64,
}  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    from prefect.testing.utilities import prefect_test_harness

    from flows.simulate import simulate_flow

    root = tmp_path_factory.mktemp("simulate")
    data = root / "synth"
    generate(SynthConfig.for_scale("nano", seed=7), data)
    out = root / "run"
    with prefect_test_harness(server_startup_timeout=120):
        result = simulate_flow(
            data=str(data), out=str(out), days=2, requests_per_day=40, seed=0, drift="topic_shift", drift_day=2,
            retrain_every=1, overrides=NANO_MODELS, source=str(REPO),
        )  # fmt: skip
    return data, out, result


def test_every_policy_gets_its_true_reward_each_day_and_the_oracle_leads(run: tuple[Path, Path, dict]) -> None:
    _, out, result = run
    rows = pd.DataFrame(json.loads((out / "simulate.json").read_text())["rows"])
    assert rows.equals(pd.DataFrame(result["rows"]))
    assert len(rows) == 2 * 5 and set(rows.policy) == {"loop", "frozen", "oracle", "popular", "random"}
    assert (rows.requests == 40).all()
    assert list(rows.drop_duplicates("day").date) == ["2026-01-05", "2026-01-06"]  # the days after the dataset's
    table = rows.pivot(index="day", columns="policy", values="true_reward")
    for policy in ("loop", "frozen", "popular", "random"):
        assert (table["oracle"] > table[policy]).all(), table
    # before any retrain the loop serves the frozen model: the same slates, the same true reward
    assert table.loc[1, "loop"] == table.loc[1, "frozen"]
    first = json.loads((out / "simulate.json").read_text())["initial_champion"]
    for day, champion in rows.drop_duplicates("day")[["day", "champion"]].itertuples(index=False):
        if champion == first:
            assert table.loc[day, "loop"] == table.loc[day, "frozen"]
    assert rows.retrained.all()  # --retrain-every 1
    csv = pd.read_csv(out / "simulate.csv")
    assert list(csv.columns[:7]) == ["day", "date", "loop", "frozen", "oracle", "popular", "random"]
    assert len(csv) == 2 and np.allclose(csv.set_index("day")[table.columns].to_numpy(), table.to_numpy(), rtol=1e-5)
    assert "loop" in result["summary"] and "\n" not in result["summary"]


def test_what_the_loop_served_is_the_next_days_dvc_tracked_data(run: tuple[Path, Path, dict]) -> None:
    data, out, _ = run
    project = out / "project"
    synth = project / "data" / "synth"
    served = 0
    for n in (1, 2):
        records = [json.loads(line) for line in (project / "logs" / "simulated" / f"day-{n:02d}.jsonl").open()]
        assert len(records) == 40 and all(r["variant"] == "ranker" for r in records)
        # the deployment explores the last 2 slots (EXPLORE_SLOTS): ranked slots certain, explored ones drawn
        full = [r["items"] for r in records if len(r["items"]) == 10]
        assert full and all(i["propensity"] == 1.0 for items in full for i in items[:8])
        assert all(0.0 < i["propensity"] < 1.0 for items in full for i in items[8:])
        # as the service logs them: the ranker's predictions per item, the user features per request (data drift)
        assert all(item["actions"] for r in records for item in r["items"])
        assert sum("user_impressions_7d" in r["features"] for r in records) >= 35
        served += sum(len(r["items"]) for r in records)
    assert served > 0
    manifest = Manifest.load(synth)
    assert manifest.rows["impressions"] == Manifest.load(data).rows["impressions"] + served
    assert manifest.rows["posts"] > Manifest.load(data).rows["posts"]  # the simulated days' posts
    assert data_end(synth) == EPOCH + pd.Timedelta(days=6)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "DO_NOT_TRACK": "1"}
    status = subprocess.run(["dvc", "status", "synth", "features_build", "--json"], cwd=project, env=env,
                            capture_output=True, text=True, check=True)  # fmt: skip
    assert json.loads(status.stdout) == {}, status.stdout  # committed as the synth stage's output, features built
    # the daily monitor ran on each day's log
    reports = list((project / "monitoring" / "reports").glob("*/summary.json"))
    assert len(reports) >= 2


def _live_history_follows_the_earlier_hours(project: Path, days: int) -> int:
    """Checks every logged request's hist_live against its user's engagements (outcome log) in the day's earlier
    hours; returns how many requests had a live event."""
    from core.actions import ACTION_NAMES

    outcomes = pd.read_json(project / "logs" / "simulated" / "outcomes.jsonl", lines=True, dtype={"request_id": str})
    engaged = outcomes.assign(n=(outcomes[[a for a in ACTION_NAMES if a in outcomes]] > 0).any(axis=1).astype(int))
    per_request = engaged.groupby("request_id")["n"].sum()
    live_seen = 0
    for n in range(1, days + 1):
        records = [json.loads(line) for line in (project / "logs" / "simulated" / f"day-{n:02d}.jsonl").open()]
        frame = pd.DataFrame({"request_id": [r["request_id"] for r in records],
                              "user_id": [r["user_id"] for r in records], "ts": [r["ts"] for r in records],
                              "live": [r["features"].get("hist_live") for r in records]})  # fmt: skip
        frame["hour"] = (frame["ts"] // 3600).astype(int)
        frame["engaged"] = frame["request_id"].map(per_request).fillna(0).astype(int)
        for row in frame.itertuples():
            earlier = frame[(frame["user_id"] == row.user_id) & (frame["hour"] < row.hour)]
            assert row.live == int(earlier["engaged"].sum()), (n, row.request_id)
        live_seen += int((frame["live"] > 0).sum())
    return live_seen


def test_within_a_day_a_users_engagements_reach_their_next_requests_history_hour_by_hour(
    run: tuple[Path, Path, dict],
) -> None:
    """The live path (monitoring/simulate_live.py, one hour at a time): each request's history holds exactly the
    engagements its user made in the day's earlier hours (hist_live, as the service logs it), none of the same hour;
    and the monitor's skew check, which adds those to the offline history frozen at the day's start, finds no
    history skew."""
    _, out, _ = run
    project = out / "project"
    assert _live_history_follows_the_earlier_hours(project, days=2) > 0  # users came back the same day
    compared = 0
    for result in (project / "monitoring" / "reports").glob("*/result.json"):
        history = json.loads(result.read_text())["checks"]["skew"]["per_feature"].get("hist_length")
        if history is not None:
            assert history["mismatched"] == 0, result
            compared += history["compared"]
    assert compared > 0


def test_over_http_the_service_serves_the_loop_and_its_own_log_becomes_the_day(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """`--http`: the loop's requests go through `ember serve` (POST /recommend); the day's log is what the service
    logged, served at the day's start, and becomes the next day's data as in-process."""
    from prefect.testing.utilities import prefect_test_harness

    from flows.simulate import simulate_flow

    root = tmp_path_factory.mktemp("simulate-http")
    data = root / "synth"
    generate(SynthConfig.for_scale("nano", seed=7), data)
    out = root / "run"
    with prefect_test_harness(server_startup_timeout=120):
        result = simulate_flow(
            data=str(data), out=str(out), days=1, requests_per_day=60, seed=1, policies=("loop", "random"),
            retrain_every=0, overrides=NANO_MODELS, source=str(REPO), http=True,
        )  # fmt: skip
    meta = json.loads((out / "simulate.json").read_text())
    assert meta["served"] == "http"
    project = out / "project"
    records = [json.loads(line) for line in (project / "logs" / "simulated" / "day-01.jsonl").open()]
    assert len(records) == 60 and all(r["variant"] == "ranker" and r["items"] for r in records)
    # served an hour at a time, each hour's engagements sent as POST /events: in the service's own histories
    assert _live_history_follows_the_earlier_hours(project, days=1) > 0
    full = [r["items"] for r in records if len(r["items"]) == 10]
    assert full and all(i["propensity"] == 1.0 for items in full for i in items[:8])  # the deployment's explorer
    assert all(item["actions"] for r in records for item in r["items"])  # the ranker's predictions, as logged
    loop = [r for r in result["rows"] if r["policy"] == "loop"]
    assert len(loop) == 1 and np.isfinite(loop[0]["true_reward"])
    served = sum(len(r["items"]) for r in records)
    synth = project / "data" / "synth"
    assert Manifest.load(synth).rows["impressions"] == Manifest.load(data).rows["impressions"] + served
