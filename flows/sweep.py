"""`ranker-sweep`: ranker sizes under a FLOP budget, one training per size, the best chosen on validation.

Each size is the ranker preset with overrides (d_model, n_layers, ...). A size whose serving request (full history,
`candidates` candidates; `models.ranker.flops.request_flops`) costs more than the budget is not trained. The others
train as tasks of this flow, through `train_ranker_job`, the function the DVC stage calls, side by side on the
flow's task runner: prefect-ray's RayTaskRunner on RAY_ADDRESS's cluster when it is set (one CPU per trial), else
one at a time in this process. `out/sweep.json` (written last, atomically) lists every size with its FLOPs, its
validation metrics or why it did not train, and the chosen one; each trained model is in `out/trials/<name>/`.

`engine="tune"` runs the sizes as Ray Tune trials instead (flows/sweep_tune.py, one task of this flow): every epoch's
validation metric is reported to Tune and an ASHA scheduler stops the sizes that fall behind after `grace_epochs`,
so a sweep spends its time on the promising sizes; a stopped size's per-epoch history is in sweep.json, and the best
is chosen among the sizes that finished.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from core.errors import UserError
from core.io import atomic_write_text

PROJECT = Path(__file__).resolve().parents[1]
# The default grid: nano's width and depth doubled apart and together.
ENGINES = ("prefect", "tune")
SIZES: tuple[dict[str, int], ...] = (
    {"d_model": 32, "n_layers": 1},
    {"d_model": 64, "n_layers": 1},
    {"d_model": 32, "n_layers": 2},
    {"d_model": 64, "n_layers": 2},
)


def size_name(size: dict[str, Any]) -> str:
    return "-".join(f"{k}{v}" for k, v in sorted(size.items())) or "preset"


@task(name="train-trial", retries=1, retry_delay_seconds=5)
def train_trial(
    training_set: str, out: str, preset: str, size: dict[str, Any], train: dict[str, Any], features: str | None
) -> dict[str, Any]:
    """One size trained by the DVC stage's function; its metrics with the process and host it ran in."""
    import socket

    from models.ranker.job import train_ranker_job

    metrics = train_ranker_job(
        Path(training_set), Path(out), preset, size, train, features=Path(features) if features else None
    )
    return metrics | {"ran_in": {"pid": os.getpid(), "host": socket.gethostname()}}


@task(name="tune-sweep")
def tune_trials(
    rows: list[dict[str, Any]], spec: dict[str, Any], select: str, grace_epochs: int, reduction: int,
    concurrent: int | None,
) -> dict[str, dict[str, Any]]:  # fmt: skip
    """The sizes within the budget as Ray Tune trials under ASHA (flows/sweep_tune.py)."""
    from flows.sweep_tune import tune_sizes
    from models.ranker.job import train_config

    epochs = train_config(spec["train"]).epochs
    return tune_sizes(rows, spec, select, epochs, grace_epochs, reduction, concurrent)


def task_runner() -> TaskRunner[Any]:
    """prefect-ray's RayTaskRunner on RAY_ADDRESS (this repository on the workers' PYTHONPATH), else trials one at a
    time in this process (torch's thread count is per process, so two trials here would fight over it)."""
    address = os.environ.get("RAY_ADDRESS")
    if not address:
        return ThreadPoolTaskRunner(max_workers=1)
    from prefect_ray import RayTaskRunner

    path = os.pathsep.join(p for p in (str(PROJECT), os.environ.get("PYTHONPATH", "")) if p)
    return RayTaskRunner(address=address, init_kwargs={"runtime_env": {"env_vars": {"PYTHONPATH": path}}})


def plan(preset: str, sizes: list[dict[str, Any]], budget_mflops: float, candidates: int) -> list[dict[str, Any]]:
    """Each size with its request MFLOPs and whether it is within the budget; a bad size is a UserError."""
    from models.ranker.flops import request_flops
    from models.ranker.job import ranker_config

    if budget_mflops <= 0 or candidates < 1:
        raise UserError(f"sweep: budget_mflops must be > 0 and candidates >= 1 (got {budget_mflops}, {candidates})")
    rows = []
    for size in sizes:
        mflops = request_flops(ranker_config(preset, size), candidates) / 1e6
        rows.append(
            {"name": size_name(size), "size": size, "mflops": round(mflops, 3), "within": mflops <= budget_mflops}
        )
    return rows


@flow(name="ranker-sweep", log_prints=True)
def ranker_sweep(
    training_set: str,
    out: str,
    sizes: list[dict[str, Any]] | None = None,
    preset: str = "nano",
    budget_mflops: float = 60.0,
    candidates: int = 500,
    train: dict[str, Any] | None = None,
    features: str | None = None,
    select: str = "auc_mean",
    engine: str = "prefect",
    grace_epochs: int = 1,
    reduction: int = 2,
    concurrent: int | None = None,
) -> dict[str, Any]:
    """Trains every size within the budget (side by side on the task runner, or as Ray Tune trials with early
    stopping: `engine="tune"`) and chooses the best `select` validation metric; returns what out/sweep.json holds."""
    if engine not in ENGINES:
        raise UserError(f"sweep: unknown engine {engine!r} (choose from {', '.join(ENGINES)})")
    if grace_epochs < 1 or reduction < 2:
        raise UserError(f"sweep: grace_epochs must be >= 1 and reduction >= 2 (got {grace_epochs}, {reduction})")
    rows = plan(preset, list(sizes or SIZES), budget_mflops, candidates)
    if not any(r["within"] for r in rows):
        raise UserError(f"sweep: no size within {budget_mflops} MFLOPs a request at {candidates} candidates")
    trials = Path(out) / "trials"
    if engine == "tune":
        spec = {"training_set": training_set, "out": str(out), "preset": preset, "train": train or {},
                "features": features}  # fmt: skip
        tuned = tune_trials(rows, spec, select, grace_epochs, reduction, concurrent)
        return _report(rows, tuned, trials, select, budget_mflops, candidates, preset, engine, out)
    futures = {
        r["name"]: train_trial.submit(training_set, str(trials / r["name"]), preset, r["size"], train or {}, features)
        for r in rows
        if r["within"]
    }
    for r in rows:
        if r["name"] in futures:
            metrics = futures[r["name"]].result()
            r["metrics"] = {k: v for k, v in metrics.items() if isinstance(v, int | float)}
            r["ran_in"] = metrics["ran_in"]
            print(f"{r['name']}: {r['mflops']} MFLOPs, {select} {r['metrics'].get(select)}")
        else:
            r["skipped"] = f"{r['mflops']} MFLOPs a request > budget {budget_mflops}"
    return _write(rows, trials, select, budget_mflops, candidates, preset, "prefect", out)


def _report(rows: list[dict[str, Any]], tuned: dict[str, dict[str, Any]], trials: Path, select: str,
            budget_mflops: float, candidates: int, preset: str, engine: str, out: str) -> dict[str, Any]:  # fmt: skip
    """The Tune engine's rows: a finished size's saved metrics, a stopped one's per-epoch history."""
    for r in rows:
        if r["name"] not in tuned:
            r["skipped"] = f"{r['mflops']} MFLOPs a request > budget {budget_mflops}"
            continue
        trial = tuned[r["name"]]
        r["history"], r["ran_in"] = trial["history"], {"pid": trial["pid"]}
        if trial["stopped_early"]:
            r["stopped_early"] = f"after epoch {trial['epochs_run']} (ASHA on {select})"
        else:
            saved = json.loads((trials / r["name"] / "metrics.json").read_text())
            r["metrics"] = {k: v for k, v in saved.items() if isinstance(v, int | float)}
    return _write(rows, trials, select, budget_mflops, candidates, preset, engine, out)


def _write(rows: list[dict[str, Any]], trials: Path, select: str, budget_mflops: float, candidates: int,
           preset: str, engine: str, out: str) -> dict[str, Any]:  # fmt: skip
    """Chooses the best finished size on `select` and writes sweep.json (atomically, last)."""
    trained = [r for r in rows if "metrics" in r]
    best = max(trained, key=lambda r: r["metrics"].get(select, float("-inf")))
    report = {
        "select": select,
        "budget_mflops": budget_mflops,
        "candidates": candidates,
        "preset": preset,
        "engine": engine,
        "best": {"name": best["name"], "size": best["size"], "model": str(trials / best["name"] / "best")},
        "sizes": rows,
    }
    atomic_write_text(Path(out) / "sweep.json", json.dumps(report, indent=2, sort_keys=True) + "\n")
    return report


def run_sweep(**params: Any) -> dict[str, Any]:
    """ranker_sweep on `task_runner()` (Ray when RAY_ADDRESS is set); the Tune engine's one task runs here (Tune
    itself places the trials on Ray)."""
    runner: TaskRunner[Any] = ThreadPoolTaskRunner(max_workers=1) if params.get("engine") == "tune" else task_runner()
    return dict(ranker_sweep.with_options(task_runner=runner)(**params))
