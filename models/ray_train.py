"""Both models' training on Ray Train: a TorchTrainer runs the same job function the DVC stages call
(`train_ranker_job`, `train_retrieval`) on N workers, data-parallel through the process group Ray sets up (gloo on
CPU, nccl on GPU), which `models.training.distributed_context` joins as it joins torchrun's.

Checkpoints: after every epoch each worker calls `ray.train.report` (Ray's barrier); rank 0 hands over its run
directory (checkpoint.pt, config.json, best/), which Ray copies into `storage/<name>/epoch-NNNN`, beside the model
in the model store. When a worker dies, Ray restarts the worker group (up to `max_failures` times); each worker
then restores the newest reported checkpoint into its own scratch directory and the job resumes at the next epoch.
Shuffling is seeded by epoch, so a resumed run ends with the weights an unbroken one ends with.

At the end rank 0 reports the finished run (with metrics.json) once more; the driver copies that checkpoint into
`out` with one rename (`models.training.publish_run`), so `out` is the same directory `ember train` writes.

The cluster: RAY_ADDRESS (a `ray start` head, a KubeRay head service), else a local Ray started for the call. The
workers import this repository from PYTHONPATH (a local cluster shares the checkout; a remote one runs the flows
image, which holds it) and read the training set from the same path, so it must be on storage the workers see.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.errors import UserError

REPO = Path(__file__).resolve().parents[1]
MODELS = ("ranker", "retrieval")
# Fault drill: "EPOCH:RANK" makes that rank SIGKILL itself after reporting that epoch, on the first attempt only
# (never after a restore), so a drill or test sees Ray restart the group and the run resume.
KILL_ENV = "EMBER_RAY_KILL_AFTER_EPOCH"
RESTORES = "ray_restores.txt"  # in the run directory: how many times the run was restored from a checkpoint


@dataclass(frozen=True)
class RayTrainSpec:
    """How a training job runs on Ray."""

    model: str  # ranker | retrieval
    training_set: Path
    out: Path
    preset: str = "small"
    model_overrides: dict[str, Any] = field(default_factory=dict)
    train_overrides: dict[str, Any] = field(default_factory=dict)
    valid_fraction: float = 0.2
    features: Path | None = None  # ranker only: offline features (history posts' attributes)
    workers: int = 2
    cpus_per_worker: int = 1
    use_gpu: bool = False
    max_failures: int = 1
    storage: Path | None = None  # Ray's checkpoints; default: out's folder / "ray" (the model store)

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise UserError(f"model: unknown {self.model!r} (choose from {', '.join(MODELS)})")
        for name in ("workers", "cpus_per_worker"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')}: must be >= 1, got {getattr(self, name)}")
        if self.max_failures < 0:
            raise UserError(f"--max-failures: must be >= 0, got {self.max_failures}")
        if not Path(self.training_set).exists():
            raise UserError(f"--training-set: {self.training_set} does not exist")

    @property
    def run_name(self) -> str:
        return Path(self.out).name

    @property
    def storage_path(self) -> Path:
        return Path(self.storage if self.storage is not None else Path(self.out).parent / "ray").resolve()


def _check_settings(spec: RayTrainSpec) -> None:
    """Builds both configs on the driver, so a bad preset or override is a one-line error before Ray starts."""
    if spec.model == "ranker":
        from models.ranker.job import ranker_config, train_config

        ranker_config(spec.preset, spec.model_overrides)
        train_config(spec.train_overrides)
    else:
        from models.config_overrides import coerce
        from models.retrieval.job import model_config
        from models.retrieval.train import TrainConfig

        model_config(spec.preset, spec.model_overrides)
        TrainConfig(**coerce(TrainConfig, spec.train_overrides, prefix="train"))


def _job(spec: RayTrainSpec, out: Path, resume: bool, log: Callable[[str], None] | None) -> dict[str, Any]:
    """The job function the DVC stage calls, in this worker, writing its run to `out`."""
    train = {"threads": spec.cpus_per_worker, **spec.train_overrides}
    if spec.model == "ranker":
        from models.ranker.job import train_ranker_job

        return train_ranker_job(
            spec.training_set, out, spec.preset, spec.model_overrides, train, spec.valid_fraction, resume, log=log,
            features=spec.features,
        )  # fmt: skip
    from models.retrieval.job import train_retrieval

    return train_retrieval(
        spec.training_set, out, spec.preset, spec.model_overrides, train, spec.valid_fraction, resume, log=log
    )


def _kill_drill(epoch: int, rank: int, restored: bool) -> None:
    """The KILL_ENV drill. It waits past two of the controller's health checks first: Ray registers a reported
    checkpoint when it polls the workers, and a group that dies before that poll loses the epochs since the last."""
    at = os.environ.get(KILL_ENV, "")
    if at and not restored and at == f"{epoch}:{rank}":
        time.sleep(2 * float(os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "2")) + 1)
        os.kill(os.getpid(), signal.SIGKILL)


def _worker(config: dict[str, Any]) -> None:
    """Ray Train's loop on each worker: restore the newest checkpoint if there is one, train, report."""
    import ray.train

    spec: RayTrainSpec = config["spec"]
    context = ray.train.get_context()
    rank = context.get_world_rank()
    os.environ["LOCAL_RANK"] = str(context.get_local_rank())  # distributed_context's CUDA device
    scratch = Path(tempfile.mkdtemp(prefix=f"ember-ray-{spec.model}-{rank}-"))
    try:
        checkpoint = ray.train.get_checkpoint()
        restored = checkpoint is not None
        if checkpoint is not None:
            checkpoint.to_directory(str(scratch))
            restores = scratch / RESTORES
            restores.write_text(str(int(restores.read_text()) + 1 if restores.exists() else 1))

        def report(entry: dict[str, Any], run_dir: Path | None) -> None:
            metrics = {k: v for k, v in entry.items() if isinstance(v, int | float)}
            if run_dir is None:
                ray.train.report(metrics)
            else:
                ckpt = ray.train.Checkpoint.from_directory(str(run_dir))
                ray.train.report(metrics, checkpoint=ckpt, checkpoint_dir_name=f"epoch-{entry['epoch']:04d}")
            _kill_drill(int(entry["epoch"]), rank, restored)

        from models.training import epoch_hook

        with epoch_hook(report):
            metrics = _job(spec, scratch, restored, print if rank == 0 else None)
        final = {k: v for k, v in metrics.items() if isinstance(v, int | float)}
        done = ray.train.Checkpoint.from_directory(str(scratch)) if rank == 0 else None
        ray.train.report(final, checkpoint=done, checkpoint_dir_name="final" if done is not None else None)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _worker_env() -> dict[str, str]:
    """The workers' environment: this repository on PYTHONPATH, and the kill drill when the driver sets it."""
    env = {"PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)}
    if KILL_ENV in os.environ:
        env[KILL_ENV] = os.environ[KILL_ENV]
    return env


def _connect() -> None:
    """Joins RAY_ADDRESS's cluster, else starts a local Ray (once per process)."""
    import ray

    if not ray.is_initialized():
        env = {"PYTHONPATH": _worker_env()["PYTHONPATH"]}  # the train controller unpickles RayTrainSpec too
        ray.init(address=os.environ.get("RAY_ADDRESS") or None, runtime_env={"env_vars": env}, log_to_driver=True)


def train_on_ray(spec: RayTrainSpec) -> dict[str, Any]:
    """Trains spec.model with Ray Train on spec.workers workers and publishes the run to spec.out; returns its
    metrics (out/metrics.json) with the Ray run's storage path and the number of restarts it took."""
    import json

    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from models.training import publish_run

    _check_settings(spec)
    _connect()
    run_dir = spec.storage_path / spec.run_name
    shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run: never restore a previous run's checkpoints
    trainer = TorchTrainer(
        _worker,
        train_loop_config={"spec": spec},
        scaling_config=ScalingConfig(
            num_workers=spec.workers, use_gpu=spec.use_gpu, resources_per_worker={"CPU": spec.cpus_per_worker}
        ),
        run_config=RunConfig(
            name=spec.run_name,
            storage_path=str(spec.storage_path),
            failure_config=FailureConfig(max_failures=spec.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            worker_runtime_env={"env_vars": _worker_env()},
        ),  # type: ignore[call-arg]  # ray.train.RunConfig is Train V2's at run time; the stub is V1's
    )
    try:
        result = trainer.fit()
    except Exception as exc:  # TrainingFailedError and the like: the workers' own traceback is in Ray's log
        raise RuntimeError(f"Ray Train run {spec.run_name} failed: {str(exc).splitlines()[0]}") from exc
    if result.checkpoint is None or not Path(result.checkpoint.path).name == "final":
        raise RuntimeError(f"Ray Train run {spec.run_name} ended without its final checkpoint")
    staged = Path(tempfile.mkdtemp(prefix=".ray-publish-", dir=Path(spec.out).parent))
    result.checkpoint.to_directory(str(staged))
    restores_file = staged / RESTORES
    restores = int(restores_file.read_text()) if restores_file.exists() else 0
    restores_file.unlink(missing_ok=True)
    publish_run(staged, Path(spec.out))
    metrics: dict[str, Any] = json.loads((Path(spec.out) / "metrics.json").read_text())
    return metrics | {"ray": {"storage": str(run_dir), "workers": spec.workers, "restores": restores}}
