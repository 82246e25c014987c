"""`ember-pipeline`, the main job, and `materialize`, the hourly online-store refresh.

The flows only wire tasks: artifacts come from `dvc repro` (cached, versioned: a rerun with unchanged inputs does no
work), the online store from the same `materialize` function `ember features materialize` calls.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from prefect import flow

from core.online_store import REDIS_ADDRESS
from core.params import load_params
from flows.tasks import (
    build_bento,
    deploy_champion,
    deploy_shadow,
    drift_check,
    dvc_changed,
    dvc_commit,
    dvc_push,
    dvc_repro,
    evaluate_against_champion,
    materialize_online,
    promotion_gate,
    publish_data_metrics,
    run_stages,
    stage_commands,
)

PROJECT = Path(__file__).resolve().parents[1]
T = TypeVar("T")
# The stages, in dependency order: the prefix one after another, then two branches that share no output (the
# two-tower and its index; the ranker's training set and the ranker) side by side, one process each (on 2 cores the
# single-threaded trainings otherwise leave a core idle for three minutes).
PREFIX = ("synth", "data_stats", "features_build", "features_apply")
BRANCHES = (("train_retrieval", "build_index"), ("training_set_ranker", "train_ranker"))
STAGES = PREFIX + tuple(stage for branch in BRANCHES for stage in branch)


@flow(name="ember-pipeline", log_prints=True)
def ember_pipeline(
    project: str = str(PROJECT),
    online_store: str = "sqlite",
    redis: str = REDIS_ADDRESS,
    push: bool = False,
    force: tuple[str, ...] = (),
    bento: bool = False,
) -> dict[str, Any]:
    """Data -> features -> Feast registry -> two-tower (click sequences) -> ANN index -> ranker training set
    -> ranker -> (the Bento) -> the model set stored and deployed as shadow -> challenger and champion rankers
    scored on the same window -> the drift test of the last day's served requests against the new training set ->
    promotion gate (release/ against the registry's champion) -> the deployment rewritten for the gate's
    champion (flows/deploy.py), then the online store, the metrics artifact (and `dvc push`). `force`: stages rerun
    even when their inputs are unchanged (retrain); `bento`: build the Bento (`make bento`) and record its tag in the
    lineage."""
    root = Path(project)
    load_params(root / "params.yaml")  # a bad key or value: one line naming it, before any stage runs
    unknown = [s for s in force if s not in STAGES]
    if unknown:
        raise ValueError(f"force: unknown stage {unknown[0]!r} (stages: {', '.join(STAGES)})")
    seconds: dict[str, float] = {}
    timed = partial(timed_into, seconds)
    # One `dvc status` first: while no earlier stage has run, a stage it does not list is up to date and its DVC
    # process is skipped (a no-op rerun then starts DVC once, not once per stage). From the first stage that runs on,
    # every later one of the prefix goes through `dvc repro`, which sees the new upstream outputs.
    changed = timed("dvc_status", lambda: dvc_changed(root))
    ran: dict[str, bool] = {}
    for stage in PREFIX:
        if changed is not None and stage not in changed and stage not in force and not any(ran.values()):
            ran[stage] = False
            continue
        ran[stage] = timed(stage, partial(dvc_repro, root, stage, stage in force))
    if any(ran.values()) and changed is not None:
        changed = timed("dvc_status_branches", lambda: dvc_changed(root))  # what the prefix's new outputs changed
    ran |= run_branches(root, changed, force, seconds)
    tag = timed("build_bento", lambda: build_bento(root)) if bento else None
    shadow = timed("deploy_shadow", lambda: deploy_shadow(root))
    compared = timed("evaluate", lambda: evaluate_against_champion(root, shadow["staged"]))
    drift = timed("drift_check", lambda: drift_check(root))
    gate = timed("promotion_gate", lambda: promotion_gate(root, drift_passed=drift, bento=tag, comparison=compared))
    deployed = timed("deploy_champion", lambda: deploy_champion(root, shadow["staged"]))
    online = timed("materialize", lambda: materialize_online(root, online_store, redis))
    metrics = timed("publish_metrics", lambda: publish_data_metrics(root))
    if push:
        timed("dvc_push", lambda: dvc_push(root))
    return {
        "seconds": seconds,
        "stages_run": [s for s, did in ran.items() if did],
        "promotion": {"promoted": gate["decision"]["promote"], "champion": gate["champion"]},
        "deployment": deployed,
        "drift_passed": drift,
        "bento": tag,
        "online": online,
        "rows": metrics["rows"],
    }


def run_branches(
    root: Path, changed: set[str] | None, force: tuple[str, ...], seconds: dict[str, float]
) -> dict[str, bool]:
    """The branches side by side (`run_stages`, then one `dvc_commit` of what ran). In a branch, the first stage
    `dvc status` lists (or `force` names) runs with every stage after it. Without a status (None), every stage goes
    through `dvc repro`, one at a time. Fills `seconds` per stage; returns which stages ran."""
    if changed is None:
        return {stage: timed_into(seconds, stage, partial(dvc_repro, root, stage, stage in force))
                for branch in BRANCHES for stage in branch}  # fmt: skip
    todo = []
    for branch in BRANCHES:
        first = next((i for i, stage in enumerate(branch) if stage in changed or stage in force), len(branch))
        todo.append(list(branch[first:]))
    commands = stage_commands(root, [stage for stages in todo for stage in stages])  # one thread: see run_stages
    futures = [run_stages.submit(root, {stage: commands[stage] for stage in stages}) for stages in todo if stages]
    done, failed = [], None
    for future in futures:
        try:
            for stage, s in future.result().items():
                seconds[stage] = s
                done.append(stage)
        except Exception as err:  # the other branch still finishes and is recorded
            failed = failed or err
    if done:
        timed_into(seconds, "dvc_commit", lambda: dvc_commit(root, done))
    if failed is not None:
        raise failed
    return {stage: stage in done for branch in BRANCHES for stage in branch}


def timed_into(seconds: dict[str, float], name: str, call: Callable[[], T]) -> T:
    """call(), its wall time in seconds[name] (also when it raises)."""
    start = time.perf_counter()
    try:
        return call()
    finally:
        seconds[name] = round(time.perf_counter() - start, 2)


@flow(name="materialize")
def materialize_flow(
    project: str = str(PROJECT), online_store: str = "sqlite", redis: str = REDIS_ADDRESS
) -> dict[str, Any]:
    """Incremental materialization of the online store (hourly)."""
    return materialize_online(Path(project), online_store, redis)
