"""Prefect tasks: each calls one DVC stage or one layer function, with retries where failure can be transient."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from flows.isolated import run_isolated


def _env() -> dict[str, str]:
    """DVC stages call `ember`: put this interpreter's bin directory first on PATH."""
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}


@task(timeout_seconds=3600)  # no retries: a stage fails the same way twice; store I/O below is retried
def dvc_repro(project: Path, stage: str, force: bool = False) -> bool:
    """Runs one DVC stage; returns whether it did work (False when its inputs were unchanged). `force` reruns this
    stage alone even when its inputs are unchanged (the retrain flow)."""
    argv = ["dvc", "repro", stage] + (["--force", "--single-item"] if force else [])
    proc = subprocess.run(argv, cwd=project, env=_env(), capture_output=True, text=True)
    if proc.returncode != 0:
        # DVC clears a stage's outputs before running it: put the last good version back from the cache, so a
        # failed run leaves the previous artifacts in place and the next run resumes from them.
        subprocess.run(["dvc", "checkout", stage], cwd=project, env=_env(), capture_output=True)
        tail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-3:]
        raise RuntimeError(f"dvc repro {stage} failed: {' | '.join(tail)}")
    ran = f"Running stage '{stage}'" in proc.stdout
    get_run_logger().info("stage %s: %s", stage, "ran" if ran else "up to date (cached)")
    return ran


def stage_commands(project: Path, stages: list[str]) -> dict[str, str]:
    """Each stage's command as `dvc repro` would run it (dvc.yaml with params.yaml interpolated)."""
    from dvc.repo import Repo

    dvc_yaml = Path(project).resolve() / "dvc.yaml"  # a bare stage name is looked up from the working directory
    with Repo(str(dvc_yaml.parent)) as repo:
        return {name: repo.stage.collect(f"{dvc_yaml}:{name}")[0].cmd for name in stages}


@task(timeout_seconds=3600)  # no retries, as dvc_repro
def run_stages(project: Path, commands: dict[str, str]) -> dict[str, float]:
    """Runs stages' commands one after another, as `dvc repro` would, but outside DVC's repository lock, so that
    another branch of the pipeline runs beside them (DVC runs one stage at a time per repository); `dvc_commit`
    then records them in dvc.lock and the cache. Each command runs at one torch thread (OMP_NUM_THREADS=1 unless
    set): beside another busy process, two threads spin at every kernel's barrier (models/training.py).

    `commands` come from `stage_commands`, called by the flow before it starts the branches: DVC's dvc.yaml loader
    is not thread-safe (two branches loading it at once failed its schema check in CI).

    Returns each stage's seconds. Raises RuntimeError naming the stage, with the last good outputs put back."""
    import time

    env = {"OMP_NUM_THREADS": "1", **_env()}
    seconds: dict[str, float] = {}
    for stage, cmd in commands.items():
        start = time.perf_counter()
        proc = subprocess.run(cmd, shell=True, cwd=project, env=env, capture_output=True, text=True)
        seconds[stage] = round(time.perf_counter() - start, 2)
        if proc.returncode != 0:
            argv = ["dvc", "--wait-for-lock", "checkout", stage]
            subprocess.run(argv, cwd=project, env=_env(), capture_output=True)  # the last good output back
            tail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-3:]
            raise RuntimeError(f"stage {stage} failed: {' | '.join(tail)}")
        get_run_logger().info("stage %s: ran in %.1f s", stage, seconds[stage])
    return seconds


@task(timeout_seconds=1800)
def dvc_commit(project: Path, stages: list[str]) -> None:
    """Records stages run by `run_stages` as `dvc repro` records its own: their dependencies' and outputs' hashes in
    dvc.lock, their outputs in the cache."""
    argv = ["dvc", "--wait-for-lock", "commit", "--force", *stages]
    proc = subprocess.run(argv, cwd=project, env=_env(), capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-3:]
        raise RuntimeError(f"dvc commit {' '.join(stages)} failed: {' | '.join(tail)}")


@task(timeout_seconds=600)
def dvc_changed(project: Path) -> set[str] | None:
    """The stages `dvc status` finds out of date (changed dependencies or parameters, missing outputs), in one DVC
    process; None when DVC cannot tell (every stage is then run through `dvc repro`, which decides by itself)."""
    proc = subprocess.run(["dvc", "status", "--json"], cwd=project, env=_env(), capture_output=True, text=True)
    try:
        status = json.loads(proc.stdout) if proc.returncode == 0 else None
    except ValueError:
        status = None
    return set(status) if isinstance(status, dict) else None


@task(retries=3, retry_delay_seconds=[2, 10, 30], timeout_seconds=1800)
def materialize_online(project: Path, online_store: str, redis: str) -> dict[str, Any]:
    """Loads the newest feature rows into the online store (store I/O: retried with backoff).

    `features.store.materialize` (what `ember features materialize` calls) in its own process (flows.isolated):
    Feast's DuckDB offline store leaves native objects that only a process exit cleans up, and the flow's process
    must stay clean to shut its Prefect API down.
    """
    from features.store import StoreConfig, materialize, materialized_through

    cfg = StoreConfig(repo=project / "features" / "repo", online_store=online_store, redis=redis)
    if materialized_through(cfg):
        get_run_logger().info("online store already holds the newest snapshot: nothing to materialize")
        return {"views": {}, "seconds": 0.0, "skipped": True}
    result = run_isolated(project, materialize, cfg)
    get_run_logger().info("materialized %d views in %.1f s", len(result["views"]), result["seconds"])
    return result


@task(retries=2, retry_delay_seconds=[5, 30], timeout_seconds=1800)
def dvc_push(project: Path) -> None:
    """Sends the versioned artifacts to the DVC remote."""
    subprocess.run(["dvc", "push"], cwd=project, env=_env(), check=True, capture_output=True)


@task
def publish_data_metrics(project: Path) -> dict[str, Any]:
    """Publishes the dataset metrics as a markdown artifact (rows, action rates against the oracle)."""
    metrics = json.loads((project / "metrics" / "data.json").read_text())
    lines = ["| metric | value |", "|---|---|"]
    lines += [f"| rows.{k} | {v:,} |" for k, v in metrics["rows"].items()]
    oracle = metrics.get("oracle_mean_probability", {})
    lines += [
        f"| rate.{a} | {r:.4f}" + (f" (oracle {oracle[a]:.4f})" if a in oracle else "") + " |"
        for a, r in metrics["action_rate"].items()
    ]
    create_markdown_artifact("\n".join(lines), key="data-metrics", description="Synthetic feed metrics")
    return metrics


@task(timeout_seconds=1800)
def evaluate_against_champion(project: Path, challenger: str) -> Path | None:
    """Scores the challenger's and the champion's rankers on the same validation window, and their two-towers on the
    same test window of data/synth (`ember evaluate compare`); None when there is no other champion to compare with."""
    from flows.deploy import MODEL_STORE, champion_key

    champion = champion_key(project)
    if champion is None or champion == challenger:
        return None
    from release.compare import compare_models, summary_lines

    store = project / MODEL_STORE
    out = project / "metrics" / "compare.json"
    result = run_isolated(
        project, compare_models, store / challenger / "ranker", store / champion / "ranker",
        project / "data" / "training" / "ranker", out, features=project / "data" / "features",
        data=project / "data" / "synth", challenger_retrieval=store / challenger / "retrieval",
        champion_retrieval=store / champion / "retrieval",
    )  # fmt: skip
    get_run_logger().info("same window: %s", " | ".join(summary_lines(result)))
    return out


@task
def promotion_gate(
    project: Path, drift_passed: bool | None = None, bento: str | None = None, comparison: Path | None = None
) -> dict[str, Any]:
    """Gates the freshly trained models against the registry's champion (flows/promotion.yaml) and promotes them
    when every check passes; publishes the checks as a markdown artifact. A rerun on unchanged models is a no-op."""
    from release.promotion import run_gate

    metrics = project / "metrics"
    result = run_gate(
        project,
        metrics / "ranker.json",
        metrics / "retrieval.json",
        drift_passed=drift_passed,
        bento=bento,
        comparison=comparison,
    )
    decision = result["decision"]
    lines = ["| check | challenger | champion | rule | ok |", "|---|---|---|---|---|"]
    lines += [
        f"| {c['metric']} | {c['challenger']} | {c['champion'] if c['champion'] is not None else '-'} | {c['rule']} | "
        f"{'yes' if c['ok'] else 'NO'} |"
        for c in decision["checks"]
    ]
    verdict = f"promoted {result['champion']}" if result["changed"] else "champion unchanged"
    if not decision["promote"]:
        verdict = "stays shadow"
    lines += ["", f"**{verdict}**: {'; '.join(decision['reasons'])}"] + [f"- note: {n}" for n in decision["notes"]]
    create_markdown_artifact("\n".join(lines), key="promotion-gate", description="Promotion gate")
    get_run_logger().info("promotion gate: %s (%s)", verdict, "; ".join(decision["reasons"]))
    return result


def _champion_params(project: Path, variants: Path) -> dict[str, Any]:
    """The champion variant's recommender params in a variants file (paths as written, relative to `project`)."""
    from serving.ab import load_config

    cfg = load_config(project / variants)
    champion = next(v for v in cfg.variants if v.name == cfg.champion)
    return dict(getattr(champion.recommender, "params", {}) or {})


@task(retries=2, retry_delay_seconds=[5, 30], timeout_seconds=1800)
def monitor_window(
    project: Path,
    current: Path,
    out: Path,
    variants: Path,
    start: datetime | None = None,
    baseline: Path | None = None,
    request_time: bool = False,
    outcomes: Path | None = None,
) -> dict:
    """Every monitoring check (`ember monitor run`: drift, target drift, quality, skew, embedding drift) of the served
    window (`current` from `start` on) against the ranker training set and the champion's `baseline` window; returns
    the summary with the exit verdict. `monitoring.monitor.run_monitor` (what `ember monitor run` calls) in its own
    process (flows.isolated): Evidently and torch stay out of the flow's process. Feature lookups, outcomes and post
    ages are taken at the champion's fixed `as_of` when it has one, unless `request_time` says each request was served
    at its logged time. Outcomes: the outcome log `outcomes` when given, else drawn from data/synth's truth."""
    from core.io import parse_iso
    from monitoring.monitor import monitor_summary

    params = _champion_params(project, variants)
    as_of = None
    if params.get("as_of") and not request_time:
        from features.windows import resolve_as_of

        as_of = parse_iso(resolve_as_of(str(params["as_of"]), params.get("features"), project), "recommender.as_of")
    synthetic = project / "data" / "synth" if outcomes is None else None
    summary = run_isolated(
        project, monitor_summary, project / "data" / "training" / "ranker", project / current, project / out,
        baseline=None if baseline is None else project / baseline, outcomes=outcomes, synthetic=synthetic,
        features=project / "data" / "features",
        retrieval_model=project / str(params.get("retrieval_model", "artifacts/retrieval/best")),
        as_of=as_of, window_start=start if start is None or start.tzinfo else start.replace(tzinfo=UTC),
    )  # fmt: skip
    get_run_logger().info(
        "monitor: %s (%s)", summary["status"], ", ".join(f"{k} {v}" for k, v in summary["tests"].items())
    )
    return summary


@task(timeout_seconds=1800)
def drift_check(project: Path, current: Path = Path("logs"), hours: float = 24.0) -> bool | None:
    """The gate's drift test: the request population served over the last `hours` against the freshly built ranker
    training set (`ember monitor run`'s data drift, user features per request). None (not measured) without enough
    served requests (fewer than the thresholds' min_rows): a first deployment has none, and a smoke request or two
    after `make run` are no population, so the monitor is not even started for them."""
    from datetime import UTC, timedelta

    from flows.deploy import DEPLOY_FILE
    from monitoring.config import load_config
    from monitoring.exposure_frame import count_requests, exposure_files
    from release.lineage import VARIANTS_FILE

    if not (project / current).exists() or not exposure_files(project / current):
        return None
    now = datetime.now(UTC)
    served = count_requests(project / current, (now - timedelta(hours=hours)).timestamp())
    needed = load_config(project / "monitoring" / "thresholds.yaml").min_rows
    if served < needed:
        get_run_logger().info("gate drift test: not run (%d requests in the last %g h, fewer than %d)", served,
                              hours, needed)  # fmt: skip
        return None
    out = Path("monitoring") / "reports" / f"gate-{now.strftime('%Y%m%dT%H%M%SZ')}"
    variants = DEPLOY_FILE if (project / DEPLOY_FILE).is_file() else VARIANTS_FILE
    summary = monitor_window.fn(project, current, out, variants, now - timedelta(hours=hours))
    verdict = summary["tests"]["data_drift"]
    get_run_logger().info("gate drift test: %s (reports in %s)", verdict, out)
    return {"pass": True, "fail": False}.get(verdict)


@task(retries=2, retry_delay_seconds=[2, 10])
def champion_baseline(project: Path, current: Path, start: datetime) -> tuple[Path | None, str]:
    """The served window the champion is compared with: artifacts/baselines/<champion version>/, recorded from its
    first monitored window (this one, when there is none yet: the policy-dependent checks then have no verdict)."""
    from monitoring.exposure_frame import save_window
    from release.registry import champion_entry, read_registry

    entry = champion_entry(read_registry(project))
    version = entry["version"] if entry else "unpromoted"
    kept = Path("artifacts") / "baselines" / version
    if (project / kept / "exposure.jsonl").is_file():
        return kept, f"baseline: {version}'s first monitored window"
    copied = save_window(project / current, project / kept, start.timestamp()) if (project / current).exists() else 0
    note = f"baseline: recorded {copied} records of this window for {version}; the next run compares with it"
    get_run_logger().info(note)
    return None, note


@task(retries=2, retry_delay_seconds=[2, 10])
def record_dashboard(project: Path, summary: dict, workspace: Path = Path("artifacts/evidently")) -> str:
    """Adds the window as a run of its model's project in the Evidently UI workspace (`ember dashboards`)."""
    from monitoring.dashboards import add_monitor_run

    add_monitor_run(project / workspace, summary)
    return str(workspace)


@task
def publish_monitor(summary: dict, report_dir: Path) -> None:
    """The window's verdicts and quality as a markdown artifact, with the path of the HTML reports."""
    lines = ["| check | status |", "|---|---|"] + [f"| {k} | {v} |" for k, v in summary["tests"].items()]
    lines += ["", "| quality | value |", "|---|---|"]
    lines += [f"| {k} | {v:.4g} |" for k, v in summary.get("quality", {}).items() if isinstance(v, int | float)]
    lines += ["", f"**{summary['status']}**; reports (HTML, JSON): `{report_dir}`"]
    create_markdown_artifact("\n".join(lines), key="monitor", description="Drift and quality of the served window")


@task(retries=2, retry_delay_seconds=[2, 10])
def deploy_shadow(project: Path, shadow_share: float = 0.1) -> dict[str, Any]:
    """Stores the freshly trained model set (flows/deploy.py) and deploys it as the shadow of the registry's champion
    (artifacts/deploy/variants.yaml); before the first promotion there is no champion to shadow."""
    from flows.deploy import champion_key, stage_models, write_deployment

    key = stage_models(project)
    deployed = write_deployment(project, champion_key(project), key, shadow_share)
    get_run_logger().info("deployed: champion %s, shadow %s", deployed["champion"], deployed["challenger"])
    return deployed | {"staged": key}


@task(retries=2, retry_delay_seconds=[2, 10])
def deploy_champion(project: Path, challenger: str, shadow_share: float = 0.1) -> dict[str, Any]:
    """After the gate: the registry's champion serves; a challenger the gate refused stays in shadow."""
    from flows.deploy import champion_key, write_deployment

    return write_deployment(project, champion_key(project), challenger, shadow_share)


@task(timeout_seconds=1800)
def build_bento(project: Path) -> str:
    """`make bento` (bentofile.yaml): returns the Bento tag the lineage records."""
    proc = subprocess.run(["make", "-s", "bento"], cwd=project, env=_env(), capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"make bento failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
    found = re.findall(r'tag="([^"]+)"', proc.stdout + proc.stderr)
    if not found:
        raise RuntimeError("make bento: no Bento tag in its output")
    get_run_logger().info("built Bento %s", found[-1])
    return found[-1]
