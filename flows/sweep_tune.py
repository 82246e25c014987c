"""The `ranker-sweep` flow's Ray Tune engine: the sizes within the budget as Tune trials, weak ones stopped early.

Each trial is a function trainable that calls `train_ranker_job` (the DVC stage's function) in a work folder of its
own and reports every epoch's validation metrics to Tune through the shared training loop's epoch hook
(`models.training.epoch_hook`, the hook Ray Train's report uses). An asynchronous successive-halving scheduler
(ASHA: after `grace_epochs`, then at every `reduction` x as many, a trial below the best 1/`reduction` of the trials
that reached the same epoch is stopped) stops the sizes that are behind, so the budget goes to the promising ones.
A finished trial's run is published to `trials/<name>/` whole; a stopped one leaves only its per-epoch history in
the report. Tune's own records (trial states, results) go to `<out>/tune/`.

The trials run on RAY_ADDRESS's cluster when it is set, else on a Ray started in this process; one CPU each.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).resolve().parents[1]


def _trial(config: dict[str, Any]) -> None:
    """One size: trained by the DVC stage's function, each epoch's numeric metrics reported to Tune."""
    from ray import tune

    from models.ranker.job import train_ranker_job
    from models.training import epoch_hook

    spec = config["spec"]
    work = Path(spec["out"]) / "work" / config["name"]

    def report(entry: dict[str, Any], run_dir: Path | None) -> None:
        tune.report({k: float(v) for k, v in entry.items() if isinstance(v, int | float)} | {"pid": os.getpid()})

    with epoch_hook(report):
        train_ranker_job(
            Path(spec["training_set"]), Path(spec["out"]) / "trials" / config["name"], spec["preset"],
            spec["sizes"][config["name"]], spec["train"],
            features=Path(spec["features"]) if spec["features"] else None, work=work,
        )  # fmt: skip
    shutil.rmtree(work, ignore_errors=True)


def _connect() -> None:
    import ray

    if not ray.is_initialized():
        path = os.pathsep.join(p for p in (str(PROJECT), os.environ.get("PYTHONPATH", "")) if p)
        ray.init(address=os.environ.get("RAY_ADDRESS") or None, runtime_env={"env_vars": {"PYTHONPATH": path}})


def tune_sizes(
    rows: list[dict[str, Any]],
    spec: dict[str, Any],
    select: str,
    epochs: int,
    grace_epochs: int = 1,
    reduction: int = 2,
    concurrent: int | None = None,
) -> dict[str, dict[str, Any]]:
    """Runs the rows within the budget as Tune trials under ASHA on `select` (higher is better).

    Args:
        rows: `flows.sweep.plan` rows; those with "within" are trained.
        spec: training_set, out, preset, train (overrides) and features, shared by every trial.
        epochs: the most epochs a trial trains (the scheduler's max_t).
        concurrent: trials at once (None: as many as the cluster's CPUs allow).

    Returns:
        {name: {"history": [per-epoch numeric metrics], "stopped_early": bool, "epochs_run": int, "pid": int}}.
    """
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from core.errors import UserError
    from models.ranker.data import TRAINING_SET_FILE

    # Trials run in their own folders (Tune's working directory): every path absolute, the input checked here.
    spec = spec | {k: str(Path(spec[k]).resolve()) for k in ("training_set", "out", "features") if spec.get(k)}
    if not (Path(spec["training_set"]) / TRAINING_SET_FILE).is_file():
        raise UserError(f"--training-set: no {TRAINING_SET_FILE} in {spec['training_set']}")
    _connect()
    names = [r["name"] for r in rows if r["within"]]
    sizes = {r["name"]: r["size"] for r in rows}  # the grid holds names; each trial looks its overrides up
    # stop_last_trials off: a trial that reports its last epoch must go on to publish its run, not be stopped there.
    scheduler = ASHAScheduler(
        time_attr="training_iteration", max_t=epochs, grace_period=grace_epochs, reduction_factor=reduction,
        stop_last_trials=False,
    )  # fmt: skip
    tuner = tune.Tuner(
        tune.with_resources(_trial, {"cpu": 1}),
        param_space={"name": tune.grid_search(names), "spec": spec | {"sizes": sizes}},
        tune_config=tune.TuneConfig(
            metric=select,
            mode="max",
            scheduler=scheduler,
            max_concurrent_trials=concurrent,
            trial_name_creator=lambda t: t.config["name"],
            trial_dirname_creator=lambda t: t.config["name"],
        ),  # fmt: skip
        run_config=tune.RunConfig(name="ranker-sweep", storage_path=str((Path(spec["out"]) / "tune").resolve())),
    )
    grid = tuner.fit()
    out: dict[str, dict[str, Any]] = {}
    for result in (grid[i] for i in range(len(grid))):
        if result.error is not None:
            raise result.error
        assert result.config is not None and result.metrics is not None and result.metrics_dataframe is not None
        name = result.config["name"]
        keep = {"epoch", select, "auc_mean", "gauc_mean", "train_loss", "seconds"}
        history = [{k: v for k, v in rec.items() if k in keep} for rec in result.metrics_dataframe.to_dict("records")]
        finished = (Path(spec["out"]) / "trials" / name / "metrics.json").is_file()
        out[name] = {"history": history, "stopped_early": not finished, "epochs_run": len(history),
                     "pid": int(result.metrics["pid"])}  # fmt: skip
    shutil.rmtree(Path(spec["out"]) / "work", ignore_errors=True)  # the stopped trials' unfinished runs
    return out
