"""`simulate`: days of production against a synthetic world's ground truth, the closed loop measured.

The run owns a project: a copy of this one (its code and configs, `params.yaml` with the synth section set to what
reproduces `--data`, plus `overrides`) under `<out>/project`, where the main job (`ember-pipeline`) first builds
and deploys the models from the dataset. Then, for each simulated day after the dataset's last:

1. the day's posts exist (monitoring/simulate.extend_world) and requests arrive (users in proportion to activity);
2. every request goes through the deployed pipeline, in-process (serving.recommender_pipeline.PipelineRecommender,
   the deployment's champion: "loop"; the first champion's model set: "frozen"), served at the request's time with
   the day's posts (the corpus as of the day's start, posts newer than the variant's index through its fresh-post
   source, as POST /events adds them); the run's deployment explores the last `explore_slots` slots of every slate
   (uniform draws from the rest of the ranked pool, propensities logged: serving/selectors/explore.SlotExplorer),
   so that what the loop serves keeps showing what it under-rates; oracle, popular and random fill the same
   requests' slates. With `http` the loop's requests go through `ember serve` instead (monitoring/simulate_http.py:
   the day's variants config, the posts the index lacks as POST /events, POST /recommend per request, the items
   read back from the service's own exposure log), served at the day's start;
3. each slate's true reward is read from the truth (expected weighted engagement under the blend's signed weights);
4. what the loop served goes to an exposure log (logs/simulated/day-NN.jsonl, the service's format), what users
   did with it (drawn from the truth) to an outcome log (logs/simulated/outcomes.jsonl), and, with outcomes drawn
   from the truth, it becomes the day's impressions in data/synth (served_impressions + merge), which `dvc commit`
   records as the synth stage's output: the next day's data is DVC-tracked;
5. the deployed flows' steps: `dvc repro features_build` (the next day's features) and the `materialize` flow, then
   the `monitor` flow on the day's log with the outcome log, each request taken at its own time (the simulated
   world's posts and days run past the dataset's: the monitor can neither redraw outcomes from the dataset's
   manifest nor take the deployment's fixed `as_of`); drift and quality; a failing check starts `retrain` (the main
   job with the training stages forced, its promotion gate and deployment), and the monitor flow's follow-up
   retrains on the days after (flows/monitor.py); `retrain_every` > 0 also retrains on that cadence (`retrain` with
   reason "scheduled"): every day by default, as the deployed main job does (flows/prefect.yaml, daily at 03:00).

`<out>/simulate.json` and `<out>/simulate.csv` hold one row per day and policy (true reward per request, requests,
alarm, retrain, promotion, the loop's champion); the days also go to the run project's Evidently workspace, project
"simulation" (`ember dashboards --workspace <out>/project/artifacts/evidently`). The whole of `<out>` is written
under a temporary name and renamed
at the end: a failed or refused run leaves `<out>` as it was.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from prefect import flow, get_run_logger

from flows.deploy import DEPLOY_FILE, MODEL_PATHS, MODEL_STORE, champion_key
from flows.monitor import monitor_flow, retrain_flow
from flows.pipeline import PROJECT, ember_pipeline, materialize_flow
from flows.tasks import _env, dvc_repro

LOGS = Path("logs") / "simulated"
OUTCOMES = LOGS / "outcomes.jsonl"  # every day's outcomes of the loop's served items (the monitor's outcome log)
# Explored slots of each served slate (serving/selectors/explore.SlotExplorer). Without them the loop never learns a
# taste it does not already serve: after a topic shift the nano loop served 0.1-0.5% posts of the new topic (half of
# all new posts, clicked 3-4x as often), so every retrain saw next to none and scored the topic lower still.
EXPLORE_SLOTS = 2


def copy_project(source: Path, dst: Path) -> None:
    """The tracked and not-ignored files of `source`'s working tree (its code and configs, no data or artifacts)
    into `dst`, made a git repository (DVC needs one) with them in one commit."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=source, capture_output=True, check=True,
    ).stdout.split(b"\0")  # fmt: skip
    for rel in filter(None, (p.decode() for p in listed)):
        if (source / rel).is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / rel, dst / rel)
    git = ["git", "-c", "user.name=ember-simulate", "-c", "user.email=simulate@localhost"]
    for args in (["git", "init", "-q"], [*git, "add", "-A"], [*git, "commit", "-qm", "ember simulate"]):
        subprocess.run(args, cwd=dst, check=True, capture_output=True)


def run_params(path: Path, synth: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """The params.yaml at `path` with the synth section that reproduces the dataset, then `overrides`
    ("stage.key": value). Raises a UserError naming --set for a key params.yaml does not have."""
    from core.errors import UserError
    from core.params import parse_params

    params = yaml.safe_load(Path(path).read_text())
    params["synth"].update(synth)
    for dotted, value in overrides.items():
        stage, _, key = dotted.partition(".")
        if stage not in params or not isinstance(params[stage], dict) or key not in params[stage]:
            raise UserError(f"--set: {dotted!r} is not a key of params.yaml (stage.key)")
        params[stage][key] = value
    parse_params(params, f"{path} with --set")  # a value of the wrong type or range: one line, before anything runs
    return params


def explore_variants(path: Path, slots: int) -> None:
    """Every pipeline variant of the variants config at `path` explores its last `slots` slots (RecommenderConfig
    explore_slots: uniform draws from the rest of the ranked pool); 0 leaves the file as it is."""
    if slots <= 0:
        return
    config = yaml.safe_load(Path(path).read_text())
    for variant in config.get("variants", []):
        recommender = variant.get("recommender", {})
        if recommender.get("kind") == "pipeline":
            recommender.setdefault("params", {})["explore_slots"] = slots
    Path(path).write_text(yaml.safe_dump(config, sort_keys=False))


def deployed_params(project: Path, as_of: datetime, models: str | None = None) -> dict[str, Any]:
    """The deployment's champion recommender params with paths under `project`, served at `as_of`; `models`: a
    model-store key whose set replaces the champion's (the frozen policy)."""
    from core.online_store import sqlite_path
    from serving.ab import load_config

    cfg = load_config(project / DEPLOY_FILE)
    params = cfg.variant(cfg.champion).recommender.params.model_dump(exclude_unset=True)  # type: ignore[union-attr]
    if models is not None:
        params.update({p: str(MODEL_STORE / models / d) for p, d in MODEL_PATHS.items()})
    for key in ("retrieval_model", "index", "ranker", "features"):
        if params.get(key) is not None:
            params[key] = str(project / params[key])
    params["sqlite_path"] = str(sqlite_path(project / "data"))
    params["as_of"] = as_of.isoformat()
    explores = params.get("explore_slots") or params.get("explore_temperature")
    if explores and params.get("explore_seed") is None:
        params["explore_seed"] = int(as_of.timestamp()) // 86_400  # reproducible draws, new each day
    return params


def load_recommender(params: dict[str, Any], world: Any, day_start_s: int) -> Any:
    """The variant, with the posts of the 48 h before the day that its index lacks offered through its fresh-post
    source (PipelineRecommender.add_posts, what POST /events does for a new post)."""
    from features.synth import EPOCH_MS
    from serving.recent_posts import RecentPost
    from serving.recommender_config import RecommenderConfig
    from serving.recommender_pipeline import PipelineRecommender

    rec = PipelineRecommender.load(RecommenderConfig.from_dict(params))
    rec.add_posts([
        RecentPost(int(EPOCH_MS + world.post_created_s[p] * 1000), int(p + 1), int(world.post_author[p] + 1))
        for p in posts_lacking(world, day_start_s, rec.index.item_ids)
    ])  # fmt: skip
    return rec


def posts_lacking(world: Any, day_start_s: int, index_ids: Any) -> Any:
    """The world's posts (indexes) created in the 48 h before the day that the variant's index does not hold."""
    import numpy as np

    from features.synth import DAY_S

    lo = int(np.searchsorted(world.post_created_s, day_start_s - 2 * DAY_S))
    hi = int(np.searchsorted(world.post_created_s, day_start_s))
    recent = np.arange(lo, hi)
    return recent[~np.isin(recent + 1, np.asarray(index_ids, dtype=np.int64))]


def serve_day_over_http(project: Path, params: dict[str, Any], world: Any, day: int, requests: Any, k: int,
                        workdir: Path, live: Any = None) -> Any:  # fmt: skip
    """The loop's day through `ember serve` (monitoring/simulate_http.py): the deployment's variants with the
    champion at the day's params, the posts its index lacks sent as POST /events, every request a POST /recommend;
    `live` (a LiveHours): block by block, each block's engagements sent as POST /events."""
    from core.schema import MEDIA_TYPES
    from features.synth import DAY_S, EPOCH_MS
    from models.retrieval.index import load_index
    from monitoring.simulate_http import day_config, serve_day_http

    lacking = posts_lacking(world, day * DAY_S, load_index(Path(params["index"])).item_ids)
    posts = [
        {"post_id": int(p + 1), "author_id": int(world.post_author[p] + 1), "topic": int(world.post_topic[p]),
         "media_type": MEDIA_TYPES[int(world.post_media[p])],
         "created_ms": int(EPOCH_MS + world.post_created_s[p] * 1000)}
        for p in lacking
    ]  # fmt: skip
    events = project / "features" / "repo" if posts or (live is not None and live.every) else None
    config = day_config(project, project / DEPLOY_FILE, params, workdir, events)
    return serve_day_http(
        config, requests, k, posts, workdir, project, live if live is not None and live.every else None
    )


def serve_day(rec: Any, requests: Any, k: int) -> tuple[list[list[dict[str, Any]]], list[dict[str, Any]]]:
    """Each request's slate from `rec`, served at the request's time (its clock), as exposure-log items (an exploring
    variant's propensity, inclusion and rank with them, as the service logs them), and the user features the
    recommender read for it."""
    slates, features = [], []
    for r in requests.itertuples(index=False):
        now = datetime.fromtimestamp(float(r.ts), UTC)
        rec.clock = lambda now=now: now
        result = rec.recommend(int(r.user_id), k, frozenset(), int(r.surface))
        slates.append([
            {"post_id": int(i.post_id), "score": float(i.score), "source": str(i.source),
             "actions": {a: round(float(v), 6) for a, v in (i.actions or {}).items()},
             **({"propensity": i.propensity, "inclusion": i.inclusion, "rank": i.rank}
                if i.propensity is not None else {})}
            for i in result.items[:k]
        ])  # fmt: skip
        features.append(dict(result.features))
    return slates, features


def _prepare_project(source: Path, project: Path, synth: dict[str, Any], overrides: dict[str, Any],
                     explore_slots: int) -> None:  # fmt: skip
    """The run's own project: a copy of `source` with the params that reproduce the dataset (and `overrides`) and
    the deployment's variants exploring `explore_slots` slots, committed."""
    project.mkdir()
    copy_project(source, project)
    params = run_params(project / "params.yaml", synth, overrides)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    explore_variants(project / "serving" / "variants.yaml", explore_slots)
    subprocess.run(["git", "-c", "user.name=ember-simulate", "-c", "user.email=simulate@localhost", "commit",
                    "-qam", "simulation params"], cwd=project, check=True, capture_output=True)  # fmt: skip


def _serve_policies(
    project: Path,
    sim: Any,
    day: int,
    requests: Any,
    policies: tuple[str, ...],
    frozen: str | None,
    k: int,
    seed: int,
    http: Path | None,
    live_hours: int = 0,
) -> tuple[str, list, list, dict[str, list[list[int]]], Any]:
    """One day's slates of every policy for the same requests: (the loop's version, its exposure-log items, the
    features it read, {policy: slates of post ids}, the loop's drawn outcomes or None). The loop is served whether
    or not its reward is reported: what it serves is the next day's data; with `http` (a work folder) through
    `ember serve`, else in-process, `live_hours` at a time (`LiveHours`: the outcomes drawn as the day goes)."""
    from features.synth import DAY_S, EPOCH
    from monitoring import simulate as simulated
    from monitoring.simulate_live import LiveHours

    day_start = EPOCH + timedelta(days=day)
    outcomes = None
    hours = LiveHours(project, sim, day, live_hours, seed, lambda: materialize_flow(project=str(project)))
    if http is not None:
        over_http = serve_day_over_http(project, deployed_params(project, day_start), sim, day, requests, k, http,
                                        hours)  # fmt: skip
        version, loop_items, loop_features = over_http.version, over_http.items, over_http.features
        frozen_slates, outcomes = None, over_http.outcomes
        hours.pushed = over_http.engagements_sent
    else:
        loop = load_recommender(deployed_params(project, day_start), sim, day * DAY_S)
        version = loop.version
        frozen_rec = None
        if "frozen" in policies:
            frozen_rec = load_recommender(deployed_params(project, day_start, frozen), sim, day * DAY_S)
        loop_items, loop_features, frozen_slates, outcomes = hours.serve(loop, frozen_rec, requests, k)
    get_run_logger().info("day %d: %d engagements pushed live, %d hourly materializations", day, hours.pushed,
                          hours.materializations)  # fmt: skip
    served = {"loop": [[i["post_id"] for i in s] for s in loop_items]}
    for policy in policies:
        if policy == "frozen" and frozen_slates is not None:
            served[policy] = frozen_slates
        elif policy == "frozen":
            rec = load_recommender(deployed_params(project, day_start, frozen), sim, day * DAY_S)
            served[policy] = [[i["post_id"] for i in s] for s in serve_day(rec, requests, k)[0]]
        elif policy != "loop":
            served[policy] = simulated.reference_slates(sim, requests, policy, k, seed)
    return version, loop_items, loop_features, served, outcomes


def _loop_day_to_data(project: Path, tmp: Path, sim: Any, n: int, day: int, requests: Any, version: str,
                      loop_items: list, loop_features: list, loop_outcomes: Any, seed: int) -> Path:  # fmt: skip
    """What the loop served and what users did with it become the run's logs and the next day's DVC-tracked data
    (exposure log -> impressions with drawn outcomes -> data/synth); returns the day's exposure log."""
    from features.synth import DAY_S
    from monitoring import simulate as simulated
    from monitoring.replay import write_records

    simulated.append_outcomes(loop_outcomes, project / OUTCOMES)
    log_file = LOGS / f"day-{n:02d}.jsonl"
    records = simulated.exposure_records(requests, loop_items, "ranker", version, loop_features)
    write_records(records, project / log_file)
    work = tmp / "work" / f"day-{n:02d}"
    data_dir = project / "data" / "synth"
    simulated.write_day(data_dir, sim, project / log_file, data_dir, (day + 1) * DAY_S, seed + day, work)
    shutil.rmtree(work, ignore_errors=True)
    subprocess.run(["dvc", "commit", "-f", "-q", "synth"], cwd=project, env=_env(), check=True,
                   capture_output=True)  # fmt: skip
    return log_file


def _deployed_flows(project: Path, log_file: Path, day_start: datetime, n: int, retrain_every: int) -> tuple[bool, Any]:
    """The deployed flows' steps after a served day: features, materialize, the monitor on the day's log (a failing
    check retrains), and the scheduled retrain; returns (alarm, the retrain's result or None)."""
    dvc_repro(project, "features_build")
    materialize_flow(project=str(project))
    hours = (datetime.now(UTC) - day_start).total_seconds() / 3600 + 1
    monitored = monitor_flow(project=str(project), current=str(log_file), window_hours=hours,
                             retrain_on_fail=True, dashboards=False, request_time=True,
                             outcomes=str(OUTCOMES))  # fmt: skip
    retrained = monitored["retrained"]
    if retrained is None and retrain_every and n % retrain_every == 0:
        retrained = retrain_flow(project=str(project), reason=f"scheduled (every {retrain_every} days)")
    return monitored["summary"]["status"] == "fail", retrained


def _simulate_day(
    project: Path,
    tmp: Path,
    sim: Any,
    n: int,
    day: int,
    requests_per_day: int,
    policies: tuple[str, ...],
    frozen: str | None,
    k: int,
    seed: int,
    retrain_every: int,
    http: bool = False,
    live_hours: int = 0,
) -> list[dict[str, Any]]:
    """Simulated day `n` (world day `day`): every policy serves the day's requests (the loop through `ember serve`
    with `http`), the loop's day becomes data, the deployed flows run; one row per policy (true reward, alarm,
    retrain, promotion)."""
    from features.synth import EPOCH
    from monitoring import simulate as simulated

    log = get_run_logger()
    day_start = EPOCH + timedelta(days=day)
    requests = simulated.day_requests(sim, day, requests_per_day, seed)
    champion = champion_key(project)
    served_http = tmp / "work" / f"http-{n:02d}" if http else None
    version, loop_items, loop_features, served, loop_outcomes = _serve_policies(
        project, sim, day, requests, policies, frozen, k, seed, served_http, live_hours
    )
    reward = {p: simulated.mean_true_reward(sim, requests, served[p], seed + day) for p in policies if p != "loop"}
    # What users did with the loop's slates: its reward, and the outcome log the monitor joins with exposures.
    if loop_outcomes is None:
        loop_outcomes = simulated.slate_outcomes(sim, simulated.served_frame(requests, served["loop"]), seed + day)
    if "loop" in policies:
        reward["loop"] = float(simulated.true_rewards(loop_outcomes, requests).mean())
    reward = {p: reward[p] for p in policies}
    log_file = _loop_day_to_data(project, tmp, sim, n, day, requests, version, loop_items, loop_features, loop_outcomes,
                                 seed)  # fmt: skip
    alarm, retrained = _deployed_flows(project, log_file, day_start, n, retrain_every)
    after = champion_key(project)
    log.info("day %d (%s): %s; alarm %s, retrained %s, champion %s", n, day_start.date(),
             ", ".join(f"{p} {v:.4f}" for p, v in reward.items()), alarm, retrained is not None, after)  # fmt: skip
    return [
        {"day": n, "date": day_start.date().isoformat(), "policy": policy, "true_reward": reward[policy],
         "requests": len(requests), "alarm": alarm, "retrained": retrained is not None, "promoted": after != champion,
         "champion": champion}
        for policy in policies
    ]  # fmt: skip


@flow(name="simulate", log_prints=True)
def simulate_flow(
    data: str,
    out: str,
    days: int,
    policies: tuple[str, ...] = ("loop", "frozen", "oracle", "popular", "random"),
    requests_per_day: int = 0,
    seed: int = 0,
    drift: str = "none",
    drift_day: int | None = None,
    k: int = 10,
    retrain_every: int = 1,  # the deployed main job retrains daily (flows/prefect.yaml)
    overrides: dict[str, Any] | None = None,
    source: str = str(PROJECT),
    explore_slots: int = EXPLORE_SLOTS,
    http: bool = False,
    live_hours: int = 1,  # monitoring/simulate_live.py
) -> dict[str, Any]:
    """Runs the simulation (see the module doc) and returns {"rows", "summary", "out"}; `http`: the loop's requests
    through the real BentoML service (monitoring/simulate_http.py)."""
    from core.io import atomic_dir
    from features.synth import EPOCH
    from monitoring import simulate as simulated
    from monitoring.simulate_live import check_live_hours

    log = get_run_logger()
    simulated.check_args(days, requests_per_day, drift, drift_day, seed, k, retrain_every, explore_slots)
    check_live_hours(live_hours)
    world = simulated.load_synthetic(Path(data))
    synth = simulated.synth_params(Path(data))
    first_day = world.cfg.days
    requests_per_day = requests_per_day or simulated.world_requests_per_day(world)
    with atomic_dir(Path(out)) as tmp:
        project = tmp / "project"
        _prepare_project(Path(source), project, synth, overrides or {}, explore_slots)
        start = time.perf_counter()
        initial = ember_pipeline(project=str(project))
        frozen = champion_key(project)
        log.info("initial main job: champion %s (%.0f s)", frozen, time.perf_counter() - start)
        sim = simulated.extend_world(world, days, drift, drift_day, seed)
        rows: list[dict[str, Any]] = []
        for n in range(1, days + 1):
            rows += _simulate_day(project, tmp, sim, n, first_day + n - 1, requests_per_day, policies, frozen, k, seed,
                                  retrain_every, http, live_hours)  # fmt: skip
        meta = {
            "data": str(data), "days": days, "first_date": (EPOCH + timedelta(days=first_day)).date().isoformat(),
            "policies": list(policies), "requests_per_day": requests_per_day, "k": k, "seed": seed,
            "drift": drift, "drift_day": drift_day, "retrain_every": retrain_every, "overrides": overrides or {},
            "explore_slots": explore_slots, "served": "http" if http else "in-process", "live_hours": live_hours,
            "initial_champion": frozen, "initial_stages": initial["stages_run"],
            "posts_per_day": (len(sim.post_author) - len(world.post_author)) / days,
        }  # fmt: skip
        alarms = sum(r["alarm"] for r in rows if r["policy"] == policies[0])
        meta["alarm_share"] = round(alarms / days, 4)
        meta["recovery"] = simulated.recovery(rows, drift_day if drift != "none" else None)
        simulated.write_results(tmp, rows, meta)
        from monitoring.dashboards import add_simulation_days

        add_simulation_days(project / "artifacts" / "evidently", rows, Path(out).name)
        shutil.rmtree(tmp / "work", ignore_errors=True)
    return {"rows": rows, "summary": simulated.summary_line(rows), "out": str(out)}
