"""Both models on Ray Train (`models.ray_train`) against a real local Ray cluster (`ray start --head` on 127.0.0.1,
2 CPUs, started here and stopped in teardown): two workers end where torchrun's DDP ends for the same seed, a run
whose worker is SIGKILLed mid-run resumes from Ray's checkpoint and publishes what an unbroken run does, and bad
settings fail on the driver before Ray starts."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp

from models.ray_train import KILL_ENV, RayTrainSpec, train_on_ray
from tests.conftest import CliResult
from tests.features.ray_cluster import RayCluster, auth_env
from tests.models.test_train_ddp import _free_ports

RANKER_MODEL = {"max_history": 8, "max_candidates": 8}
RANKER_TRAIN = {"epochs": 3, "batch_size": 16, "lr": 5e-3, "threads": 1}
RETRIEVAL_MODEL = {"max_history": 8}
RETRIEVAL_TRAIN = {"epochs": 2, "batch_size": 32, "lr": 3e-3, "n_negatives": 16, "threads": 1}


@pytest.fixture(scope="module")
def cluster() -> Iterator[RayCluster]:
    import ray

    head = RayCluster.start(num_cpus=2)
    patch = pytest.MonkeyPatch()
    patch.setenv("RAY_ADDRESS", head.address)
    patch.setenv("RAY_AUTH_MODE", auth_env()["RAY_AUTH_MODE"])
    try:
        yield head
    finally:
        ray.shutdown()
        patch.undo()
        head.stop()


@pytest.fixture(scope="module")
def ranker_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.models.test_train_ranker import OBSERVED, rows

    root = tmp_path_factory.mktemp("ray-ranker") / "training"
    root.mkdir()
    rows().to_parquet(root / "training_set.parquet", index=False)
    (root / "meta.json").write_text(json.dumps({"dataset": "synthetic", "observed_actions": list(OBSERVED)}))
    return root


@pytest.fixture(scope="module")
def retrieval_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from models.retrieval.job import TRAINING_SET_FILE
    from tests.models.test_train_retrieval import rows

    root = tmp_path_factory.mktemp("ray-retrieval") / "training"
    root.mkdir()
    rows().to_parquet(root / TRAINING_SET_FILE, index=False)
    return root


def _ddp_rank(rank: int, model: str, training_set: Path, out: Path, port: int) -> None:
    """One torchrun-style rank (env WORLD_SIZE, RANK, MASTER_*) running the job function the DVC stage calls."""
    torch.set_num_threads(1)
    os.environ |= {"WORLD_SIZE": "2", "RANK": str(rank), "LOCAL_RANK": str(rank)}
    os.environ |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    target = out if rank == 0 else out.with_name(f"{out.name}-rank{rank}")
    if model == "ranker":
        from models.ranker.job import train_ranker_job

        train_ranker_job(training_set, target, "nano", RANKER_MODEL, RANKER_TRAIN)
    else:
        from models.retrieval.job import train_retrieval

        train_retrieval(training_set, target, "nano", RETRIEVAL_MODEL, RETRIEVAL_TRAIN)


def _torchrun(model: str, training_set: Path, out: Path) -> dict[str, Any]:
    mp.spawn(_ddp_rank, args=(model, training_set, out, _free_ports(1)[0]), nprocs=2, join=True)
    return dict(json.loads((out / "metrics.json").read_text()))


def _weights(model: str, path: Path) -> dict[str, torch.Tensor]:
    if model == "ranker":
        from models.ranker.model import load_ranker

        return dict(load_ranker(path / "best").state_dict())
    from models.retrieval.model import load_two_tower

    return dict(load_two_tower(path / "best").state_dict())


def _assert_same_run(model: str, a: Path, b: Path, metrics_a: dict[str, Any], metrics_b: dict[str, Any]) -> None:
    for key in ("best_epoch", "epochs_run", "train_rows", "valid_rows"):
        assert metrics_a[key] == metrics_b[key], key
    for key in [k for k, v in metrics_a.items() if k.startswith(("auc", "gauc", "recall", "ndcg"))]:
        assert metrics_a[key] == pytest.approx(metrics_b[key], abs=1e-5), key
    wa, wb = _weights(model, a), _weights(model, b)
    assert wa.keys() == wb.keys()
    for name in wa:
        assert torch.allclose(wa[name], wb[name], atol=1e-6), name


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_ranker_on_two_ray_workers_ends_where_ddp_ends_and_resumes_after_a_killed_worker(
    cluster: RayCluster, ranker_set: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = {"preset": "nano", "model_overrides": RANKER_MODEL, "train_overrides": RANKER_TRAIN, "workers": 2}
    unbroken = train_on_ray(RayTrainSpec("ranker", ranker_set, tmp_path / "models" / "ranker", **spec))
    assert unbroken["ray"] == {"storage": str(tmp_path / "models" / "ray" / "ranker"), "workers": 2, "restores": 0}
    assert unbroken["epochs_run"] == 3 and unbroken["train_config"]["threads"] == 1
    # Ray's checkpoints sit beside the model: the last two kept (num_to_keep), the final one among them.
    kept = sorted(p.name for p in (tmp_path / "models" / "ray" / "ranker").iterdir() if p.is_dir())
    assert kept == ["epoch-0003", "final"]
    assert {p.name for p in (tmp_path / "models" / "ranker").iterdir()} >= {"best", "config.json", "metrics.json"}

    ddp = _torchrun("ranker", ranker_set, tmp_path / "ddp")
    _assert_same_run("ranker", tmp_path / "models" / "ranker", tmp_path / "ddp", unbroken, ddp)

    monkeypatch.setenv(KILL_ENV, "2:1")  # rank 1 SIGKILLs itself after epoch 2's report
    killed = train_on_ray(RayTrainSpec("ranker", ranker_set, tmp_path / "models" / "killed", **spec))
    assert killed["ray"]["restores"] == 1
    _assert_same_run("ranker", tmp_path / "models" / "killed", tmp_path / "models" / "ranker", killed, unbroken)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_two_tower_on_two_ray_workers_ends_where_ddp_ends(
    cluster: RayCluster, retrieval_set: Path, tmp_path: Path
) -> None:
    spec = {"preset": "nano", "model_overrides": RETRIEVAL_MODEL, "train_overrides": RETRIEVAL_TRAIN, "workers": 2}
    on_ray = train_on_ray(RayTrainSpec("retrieval", retrieval_set, tmp_path / "models" / "retrieval", **spec))
    assert on_ray["ray"]["restores"] == 0 and on_ray["epochs_run"] == 2
    ddp = _torchrun("retrieval", retrieval_set, tmp_path / "ddp")
    _assert_same_run("retrieval", tmp_path / "models" / "retrieval", tmp_path / "ddp", on_ray, ddp)


def test_bad_ray_settings_fail_on_the_driver_before_ray_starts(run_cli: Any, ranker_set: Path, tmp_path: Path) -> None:
    base = ("train", "ranker", "--training-set", str(ranker_set), "--out", str(tmp_path / "m"), "--preset", "nano")
    res: CliResult = run_cli(*base, "--ray-workers", "2", "--resume")
    assert "--ray-workers" in res.error_line() and "--resume" in res.error_line()
    res = run_cli(*base, "--ray-workers", "2", "--set", "model.no_such_field=1")
    assert "no_such_field" in res.error_line()
    res = run_cli("train", "ranker", "--training-set", str(tmp_path / "none"), "--ray-workers", "2")
    assert "--training-set" in res.error_line()
    with pytest.raises(Exception, match="unknown 'sasrec'"):
        RayTrainSpec("sasrec", ranker_set, tmp_path / "m")
    assert not (tmp_path / "m").exists() and not (tmp_path / "ray").exists()  # no model, no Ray run
