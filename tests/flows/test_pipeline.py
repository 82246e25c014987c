"""The `ember-pipeline` flow through a real (ephemeral, test-harness) Prefect API on a nano copy of the project."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from features.online import OnlineFeatures, SqliteBackend
from tests.project import nano_project

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def prefect_api():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return nano_project(tmp_path_factory.mktemp("pipeline") / "project")


def test_pipeline_runs_every_stage_then_reruns_as_a_no_op(prefect_api: None, project: Path) -> None:
    from prefect.client.orchestration import get_client

    from flows.pipeline import STAGES, ember_pipeline

    first = ember_pipeline(project=str(project))
    assert first["stages_run"] == list(STAGES)
    assert first["rows"]["users"] == 300
    assert set(STAGES) <= set(first["seconds"])  # every step timed
    deployed = first["deployment"]
    assert first["drift_passed"] is None  # nothing served yet: not measured, a note at the gate
    assert first["promotion"]["promoted"] and deployed["challenger"] is None  # the first set: nothing to shadow
    assert (project / "artifacts" / "models" / deployed["champion"] / "ranker" / "model.pt").is_file()
    from serving.ab import load_config

    served = load_config(project / deployed["file"])
    assert deployed["champion"] in str(served.variant(served.champion).recommender.params.ranker)  # type: ignore[union-attr]
    reader = OnlineFeatures(SqliteBackend(project / "data" / "feast" / "online.db"))
    reader.check_schema()
    assert reader.user(1).missing == ()

    second = ember_pipeline(project=str(project))
    assert second["stages_run"] == [], "unchanged inputs must not redo any DVC stage"
    assert second["online"].get("skipped"), "the online store already held the newest snapshot"

    import asyncio

    async def artifact_keys() -> list[str]:
        async with get_client() as client:
            return [a.key for a in await client.read_artifacts()]

    assert "data-metrics" in asyncio.run(artifact_keys())


def test_a_failing_stage_fails_the_flow_and_names_the_stage(prefect_api: None, project: Path) -> None:
    from flows.pipeline import ember_pipeline

    ember_pipeline(project=str(project))  # a good run first (cached if the other test ran)
    before = (project / "data" / "synth" / "manifest.json").read_bytes()
    params = project / "params.yaml"
    good = params.read_text()
    params.write_text(good.replace("scale: nano", "scale: gigantic"))
    try:
        with pytest.raises(RuntimeError, match="dvc repro synth failed"):
            ember_pipeline(project=str(project))
        assert (project / "data" / "synth" / "manifest.json").read_bytes() == before, "the last good output is back"
    finally:
        params.write_text(good)


def test_a_failing_branch_stage_names_it_and_the_other_branch_is_recorded(prefect_api: None, project: Path) -> None:
    import subprocess
    import sys

    from core.errors import UserError
    from flows.pipeline import BRANCHES, ember_pipeline

    ember_pipeline(project=str(project))  # a good run first (cached if another test ran)
    model = project / "artifacts" / "ranker" / "best" / "model.pt"
    before = model.read_bytes()
    params = project / "params.yaml"
    good = params.read_text()
    bad = yaml.safe_load(good)
    bad["train_ranker"]["epochs"] = 0  # a value params.yaml's schema refuses: nothing runs
    params.write_text(yaml.safe_dump(bad))
    try:
        with pytest.raises(UserError, match=r"params.yaml: train_ranker.epochs: input should be greater than"):
            ember_pipeline(project=str(project))
        bad["train_ranker"]["epochs"] = 1
        bad["train_ranker"]["preset"] = "gigantic"  # a name only the stage knows: the ranker branch fails
        bad["train_retrieval"]["seed"] += 1  # new work for the retrieval branch, beside it
        params.write_text(yaml.safe_dump(bad))
        with pytest.raises(RuntimeError, match="stage train_ranker failed"):
            ember_pipeline(project=str(project))
        assert model.read_bytes() == before, "the last good ranker is back"
        dvc = str(Path(sys.executable).parent / "dvc")
        status = subprocess.run([dvc, "status", *BRANCHES[0]], cwd=project, capture_output=True, text=True)
        assert "changed" not in status.stdout, f"the retrieval branch ran beside it and was recorded: {status.stdout}"
    finally:
        params.write_text(good)


def test_retrain_reruns_the_training_stages_and_gates_the_result(prefect_api: None, project: Path) -> None:
    from flows.monitor import RETRAIN_STAGES, retrain_flow
    from flows.pipeline import ember_pipeline

    before = ember_pipeline(project=str(project))["promotion"]["champion"]
    result = retrain_flow(project=str(project), reason="test")
    assert set(RETRAIN_STAGES) <= set(result["stages_run"])  # forced although nothing changed
    assert "synth" not in result["stages_run"]
    # Seeded training on the same data gives the same models: the gate finds the champion's own lineage again.
    assert result["promotion"]["champion"] == before
    assert result["deployment"]["challenger"] is None


def test_monitor_keeps_the_champions_first_window_as_its_baseline_then_compares(
    prefect_api: None, project: Path
) -> None:
    import time

    import pandas as pd

    from flows.monitor import monitor_flow
    from flows.pipeline import ember_pipeline
    from monitoring.replay import replay, request_sample, write_records
    from serving.ab import load_config
    from serving.recommender_config import RecommenderConfig
    from serving.recommender_pipeline import PipelineRecommender

    deployed = ember_pipeline(project=str(project))["deployment"]
    cfg = load_config(project / deployed["file"])
    params = dict(cfg.variant(cfg.champion).recommender.params)  # type: ignore[union-attr]
    for key in ("retrieval_model", "index", "ranker", "features"):
        params[key] = str(project / params[key])
    params["sqlite_path"] = str(project / "data" / "feast" / "online.db")
    recommender = PipelineRecommender.load(RecommenderConfig.from_dict(params))
    ranker_set = project / "data" / "training" / "ranker" / "training_set.parquet"
    reference = pd.read_parquet(ranker_set, columns=["user_id", "request_id"])
    logs = project / "logs"

    def serve(seed: int, name: str) -> None:
        records = replay(recommender, request_sample(reference, 250, seed=seed), ts=time.time() - 600)
        write_records(records, logs / name)

    serve(1, "exposure.jsonl.1")
    first = monitor_flow(project=str(project), retrain_on_fail=False)
    assert "recorded 250 records" in first["summary"]["baseline"]
    assert first["summary"]["tests"]["target_drift"] == "insufficient_data"  # nothing to compare the policy with
    kept = list((project / "artifacts" / "baselines").glob("*/exposure.jsonl"))
    assert len(kept) == 1 and len(kept[0].read_text().splitlines()) == 250

    serve(2, "exposure.jsonl")  # another day of the same policy
    second = monitor_flow(project=str(project), retrain_on_fail=False)
    assert "first monitored window" in second["summary"]["baseline"]
    tests = second["summary"]["tests"]
    assert tests["target_drift"] != "insufficient_data" and tests["quality"] != "insufficient_data", tests
    assert (project / second["reports"] / "summary.json").is_file()
    from monitoring.dashboards import list_monitor_runs

    assert len(list_monitor_runs(project / "artifacts" / "evidently", "ranker")) == 2

    # With requests served in the last day, the main job's gate gets a measured drift test (pass or fail).
    assert ember_pipeline(project=str(project))["drift_passed"] in (True, False)
