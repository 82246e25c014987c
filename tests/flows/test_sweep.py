"""`ranker-sweep` (flows/sweep.py): sizes priced in FLOPs, the ones within the budget trained as Prefect tasks on
prefect-ray's RayTaskRunner against a real local Ray cluster (`ray start --head`, started and stopped here) through
a real (test-harness) Prefect API, the best chosen on validation."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from core.errors import UserError
from flows.sweep import plan, run_sweep, size_name, task_runner
from tests.features.ray_cluster import RayCluster, auth_env

SMALL = {"max_history": 8, "max_candidates": 8}
SIZES = [{"d_model": 32, "n_layers": 1, **SMALL}, {"d_model": 32, "n_layers": 2, **SMALL},
         {"d_model": 64, "n_layers": 2, **SMALL}]  # fmt: skip


@pytest.fixture(scope="module")
def ranker_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.models.test_train_ranker import OBSERVED, rows

    root = tmp_path_factory.mktemp("sweep") / "training"
    root.mkdir()
    rows().to_parquet(root / "training_set.parquet", index=False)
    (root / "meta.json").write_text(json.dumps({"dataset": "synthetic", "observed_actions": list(OBSERVED)}))
    return root


@pytest.fixture
def ray_and_prefect(monkeypatch: pytest.MonkeyPatch) -> Iterator[RayCluster]:
    import ray
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        head = RayCluster.start(num_cpus=2)
        monkeypatch.setenv("RAY_ADDRESS", head.address)
        monkeypatch.setenv("RAY_AUTH_MODE", auth_env()["RAY_AUTH_MODE"])
        try:
            yield head
        finally:
            ray.shutdown()
            head.stop()


def test_sizes_are_priced_in_flops_and_bad_ones_named() -> None:
    rows = plan("nano", SIZES, budget_mflops=1e6, candidates=500)
    assert [r["name"] for r in rows] == [size_name(s) for s in SIZES]
    assert rows[0]["mflops"] < rows[1]["mflops"] < rows[2]["mflops"]  # depth, then width, cost more
    assert all(r["within"] for r in rows)
    at_16 = plan("nano", SIZES[:1], budget_mflops=1e6, candidates=16)[0]["mflops"]
    assert at_16 < rows[0]["mflops"]  # more candidates cost more
    with pytest.raises(UserError, match="no_such_field"):
        plan("nano", [{"no_such_field": 1}], budget_mflops=60, candidates=500)
    with pytest.raises(UserError, match="budget_mflops"):
        plan("nano", SIZES, budget_mflops=0, candidates=500)


def test_without_ray_address_the_trials_run_here_one_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect.task_runners import ThreadPoolTaskRunner

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    runner = task_runner()
    assert isinstance(runner, ThreadPoolTaskRunner) and runner._max_workers == 1


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_sweep_trains_the_sizes_within_the_budget_on_ray_and_keeps_the_best_on_validation(
    ray_and_prefect: RayCluster, ranker_set: Path, tmp_path: Path
) -> None:
    from prefect.client.orchestration import get_client
    from prefect_ray import RayTaskRunner

    assert isinstance(task_runner(), RayTaskRunner)
    priced = plan("nano", SIZES, budget_mflops=1e6, candidates=16)
    budget = (priced[1]["mflops"] + priced[2]["mflops"]) / 2  # the first two within, the widest not
    out = tmp_path / "sweep"
    train: dict[str, Any] = {"epochs": 2, "batch_size": 16, "lr": 5e-3}
    report = run_sweep(
        training_set=str(ranker_set), out=str(out), sizes=SIZES, budget_mflops=budget, candidates=16, train=train
    )

    trained, skipped = report["sizes"][:2], report["sizes"][2]
    assert "metrics" not in skipped and "budget" in skipped["skipped"]
    assert not (out / "trials" / skipped["name"]).exists()
    for row in trained:
        assert row["ran_in"]["pid"] != os.getpid()  # in a Ray worker process, not in this one
        assert (out / "trials" / row["name"] / "best").is_dir()
        saved = json.loads((out / "trials" / row["name"] / "metrics.json").read_text())
        assert saved["auc_mean"] == pytest.approx(row["metrics"]["auc_mean"], abs=1e-9)
        assert saved["epochs_run"] == 2
    best = max(trained, key=lambda r: r["metrics"]["auc_mean"])
    assert report["best"]["name"] == best["name"]
    assert json.loads((out / "sweep.json").read_text()) == json.loads(json.dumps(report))

    with get_client(sync_client=True) as client:  # the trials are task runs of the flow, as the API recorded them
        runs = [r for r in client.read_task_runs() if r.name.startswith("train-trial")]
    assert len(runs) == 2 and all(r.state is not None and r.state.is_completed() for r in runs)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_tune_engine_stops_a_size_that_falls_behind_as_asha_rules_and_keeps_the_best_finished_one(
    ray_and_prefect: RayCluster, ranker_set: Path, tmp_path: Path
) -> None:
    """Two sizes, one trial at a time, 3 epochs, ASHA with grace 1 and reduction 2 (rungs at epochs 1 and 2): the
    first trial always finishes; the second stops at the first rung where its metric is below the first's there."""
    sizes = [SIZES[1], SIZES[0]]  # the deeper one first: on this set the shallower one falls behind at epoch 1
    out = tmp_path / "sweep"
    train: dict[str, Any] = {"epochs": 3, "batch_size": 16, "lr": 5e-3, "patience": 3}
    report = run_sweep(training_set=str(ranker_set), out=str(out), sizes=sizes, budget_mflops=1e6, candidates=16,
                       train=train, engine="tune", grace_epochs=1, reduction=2, concurrent=1)  # fmt: skip

    first, second = report["sizes"]
    assert report["engine"] == "tune"
    assert [h["epoch"] for h in first["history"]] == [1, 2, 3] and "metrics" in first
    assert (out / "trials" / first["name"] / "best").is_dir()
    assert first["ran_in"]["pid"] != os.getpid()  # in a Ray trial actor
    a = [h["auc_mean"] for h in first["history"]]
    b = [h["auc_mean"] for h in second["history"]]
    expected = next((rung + 1 for rung in (0, 1) if b[rung] < a[rung]), 3)
    assert len(b) == expected
    assert ("stopped_early" in second) == (expected < 3)
    assert ("metrics" in second) == (expected == 3)
    assert (out / "trials" / second["name"] / "best").is_dir() == (expected == 3)
    assert not (out / "work").exists()  # a stopped trial's unfinished run is not left behind
    finished = [r for r in report["sizes"] if "metrics" in r]
    assert report["best"]["name"] == max(finished, key=lambda r: r["metrics"]["auc_mean"])["name"]
    saved = json.loads((out / "trials" / first["name"] / "metrics.json").read_text())
    assert saved["auc_mean"] == pytest.approx(first["metrics"]["auc_mean"], abs=1e-9)


def test_an_unknown_engine_or_bad_asha_setting_is_named(ranker_set: Path, tmp_path: Path) -> None:
    from flows.sweep import ranker_sweep

    with pytest.raises(UserError, match="engine 'dask'"):
        ranker_sweep.fn(training_set=str(ranker_set), out=str(tmp_path / "s"), engine="dask")
    with pytest.raises(UserError, match="reduction"):
        ranker_sweep.fn(training_set=str(ranker_set), out=str(tmp_path / "s"), engine="tune", reduction=1)
    assert not (tmp_path / "s").exists()
