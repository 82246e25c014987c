"""Simulated production on a synthetic world: the parts of `ember simulate` that need no project (flows/simulate.py
runs the days: serving, data, the deployed flows).

The world of a synthetic dataset (features/oracle.load_world) ends with its last day: no post is created after it.
`extend_world` adds the posts of the simulated days with the generator's own process (each author posts in
proportion to activity, uniformly over the day; the primary topic, half the time a secondary one with its weight,
and the media type drawn as features/synth.py draws them, an author's topic preference being the smoothed
distribution of the topics of the posts it wrote in the dataset), so that every simulated day has fresh posts, and
it can start a topic shift on a simulated day (features/synth.py `topic_shift`: every user's preference moves
halfway to the last topic and half of the new posts are that topic, from the onset on). Users and follows stay the
dataset's.

A simulated day: `day_requests` draws the day's requests (users in proportion to the world's activity, times uniform
over the day); every policy fills a slate for each request; `slate_outcomes` draws what users did with each served
item from the truth (monitoring/outcomes.simulate_outcomes: the formulas of features/synth.impressions_chunk,
position included) and `true_rewards` reads the expected weighted engagement of each slate from the truth model's
probabilities under the blend's signed weights (monitoring/ab_report.item_rewards, as the A/B simulation does).
The reference policies, on the pool the world's own logging policy draws from (posts of the 48 h before the day,
features/synth._popularity_pool), the user's own posts left out:

- oracle: the pool ranked by each post's true reward at the top of the slate, at the request's time;
- popular: the pool ranked by the logging policy's popularity (author popularity x freshness);
- random: k posts of the pool, uniformly.

`write_day` turns what the loop served, with its drawn outcomes, into the next day's data: the exposure log's
records become canonical impressions (monitoring/served_impressions.served_dataset, outcomes from this world),
merged into the dataset (features/merge.merge_datasets), whose posts table then gains the posts created that day.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from core.errors import UserError

POLICIES = ("loop", "frozen", "oracle", "popular", "random")
REFERENCE_POLICIES = ("oracle", "popular", "random")
DRIFTS = ("none", "topic_shift")
ROW_FIELDS = ("day", "date", "policy", "true_reward", "requests", "alarm", "retrained", "promoted", "champion")


def parse_policies(text: str) -> tuple[str, ...]:
    """`loop,frozen,...` -> the policies in POLICIES order; one-line errors name --policies."""
    names = [p.strip() for p in text.split(",") if p.strip()]
    if not names:
        raise UserError("--policies: give at least one of " + ", ".join(POLICIES))
    unknown = [p for p in names if p not in POLICIES]
    if unknown:
        raise UserError(f"--policies: unknown policy {unknown[0]!r} (choose from {', '.join(POLICIES)})")
    return tuple(p for p in POLICIES if p in names)


def check_args(days: int, requests_per_day: int, drift: str, drift_day: int | None, seed: int, k: int = 10,
               retrain_every: int = 0, explore_slots: int = 0) -> None:  # fmt: skip
    """The run's numbers, before anything is loaded or written."""
    if days < 1:
        raise UserError(f"--days: must be >= 1, got {days}")
    if requests_per_day < 0:
        raise UserError(f"--requests-per-day: must be >= 1 (0 = the world's own traffic), got {requests_per_day}")
    if k < 1:
        raise UserError(f"--k: must be >= 1, got {k}")
    if seed < 0:
        raise UserError(f"--seed: must be >= 0, got {seed}")
    if retrain_every < 0:
        raise UserError(f"--retrain-every: must be >= 0 (0 = only on a monitor alarm), got {retrain_every}")
    if not 0 <= explore_slots <= k:
        raise UserError(f"--explore-slots: must be in [0, --k] (0 = the ranked slate), got {explore_slots}")
    if drift not in DRIFTS:
        why = " (new_users and author_spam change the population: generate them with ember data synth)"
        raise UserError(f"--drift: {drift!r} cannot start mid-run; choose from {', '.join(DRIFTS)}" + why)
    if drift != "none" and (drift_day is None or not 1 <= drift_day <= days):
        raise UserError(f"--drift-day: must be a simulated day in [1, {days}] with --drift {drift}, got {drift_day}")


def load_synthetic(dataset: Path) -> Any:
    """The world of a synthetic dataset; `--data: ...` when the directory is none."""
    from core.errors import SchemaError
    from core.schema import Manifest
    from features.oracle import load_world

    dataset = Path(dataset)
    try:
        manifest = Manifest.load(dataset)
    except SchemaError as err:
        raise UserError(f"--data: not a synthetic dataset ({err})") from None
    if manifest.dataset != "synthetic" or "truth" not in manifest.params:
        raise UserError(f"--data: {dataset} is not a synthetic dataset (it is {manifest.dataset!r})")
    if manifest.params.get("drift", "none") != "none":
        raise UserError(
            f"--data: {dataset} already drifts ({manifest.params['drift']}); simulate from a drift-free world"
        )
    return load_world(dataset)


def synth_params(dataset: Path) -> dict[str, Any]:
    """The params.yaml `synth` section whose stage (`ember data synth`) regenerates `dataset` exactly.

    Raises:
        UserError: naming --data, when no preset scale with the dataset's seed and days gives its parameters.
    """
    from core.schema import Manifest
    from features.synth import SynthConfig

    params = dict(Manifest.load(Path(dataset)).params)
    args: dict[str, Any] = {name: params.get(name) for name in ("scale", "seed", "drift", "drift_day", "days")}
    try:
        cfg = SynthConfig.for_scale(args["scale"], int(args["seed"]), args["drift"], args["drift_day"], args["days"])
    except (UserError, TypeError, ValueError):
        cfg = None
    given = {k: v for k, v in params.items() if k not in ("epoch", "truth_model", "truth")}
    if cfg is None or {k: v for k, v in dataclasses.asdict(cfg).items() if k != "truth"} != given:
        raise UserError(f"--data: {dataset} is not what `ember data synth` gives for a preset scale (its stage must "
                        "regenerate it)")  # fmt: skip
    return args


def extend_world(world: Any, days: int, drift: str = "none", drift_day: int | None = None, seed: int = 0) -> Any:
    """The world plus `days` more days of posts (see the module doc); `drift_day` counts simulated days from 1.

    Returns:
        a features.synth.World whose cfg.days covers the simulated days and whose cfg.drift/drift_day start the
        drift at the beginning of simulated day `drift_day`; every post of `world` keeps its index and attributes.
    """
    from core.schema import MEDIA_TYPES
    from features.synth import DAY_S, TIME_OFFSET, _weighted_choice

    cfg = world.cfg
    first, k = cfg.days, cfg.n_topics
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, seed, 1807]))
    authors = np.flatnonzero(world.is_author & ~world.is_spam)
    counts = np.zeros((len(world.user_act), k))
    np.add.at(counts, (world.post_author, world.post_topic), 1.0)
    pref = counts[authors] + 0.2
    pref /= pref.sum(1, keepdims=True)
    per_day = len(world.post_author) / (cfg.days + 2)  # the generator spreads n_posts over [-2 days, end)
    n_new = int(rng.poisson(per_day * days))
    which = authors[_weighted_choice(rng, world.user_act[authors], n_new)]
    created = rng.integers(first * DAY_S, (first + days) * DAY_S, size=n_new)
    row = np.searchsorted(authors, which)
    cum = np.cumsum(pref[row], axis=1)
    topic = np.minimum((cum < rng.random(n_new)[:, None]).sum(1), k - 1).astype(np.int32)
    topic2 = np.minimum((cum < rng.random(n_new)[:, None]).sum(1), k - 1).astype(np.int32)
    two = (rng.random(n_new) < 0.5) & (topic2 != topic)
    weight = np.where(two, rng.uniform(0.55, 0.95, size=n_new), 1.0).astype(np.float32)
    topic2 = np.where(two, topic2, -1).astype(np.int32)
    new_cfg = dataclasses.replace(cfg, days=first + days)
    if drift == "topic_shift":
        assert drift_day is not None
        new_cfg = dataclasses.replace(new_cfg, drift=drift, drift_day=first + drift_day - 1)
        shifted = (created >= new_cfg.drift_day * DAY_S) & (rng.random(n_new) < 0.5)
        topic = np.where(shifted, k - 1, topic).astype(np.int32)
        topic2 = np.where(shifted & (topic2 == k - 1), -1, topic2).astype(np.int32)
    media = rng.choice(len(MEDIA_TYPES), size=n_new, p=(0.5, 0.3, 0.2)).astype(np.int8)
    order = np.lexsort((which, created))  # ids keep increasing with creation time
    post_author = np.concatenate([world.post_author, which[order]])
    post_created = np.concatenate([world.post_created_s, created[order].astype(np.int64)])
    by_author = np.lexsort((post_created, post_author))
    return dataclasses.replace(
        world,
        cfg=new_cfg,
        post_author=post_author,
        post_created_s=post_created,
        post_topic=np.concatenate([world.post_topic, topic[order]]),
        post_topic2=np.concatenate([world.post_topic2, topic2[order]]),
        post_weight=np.concatenate([world.post_weight, weight[order]]),
        post_media=np.concatenate([world.post_media, media[order]]),
        by_author=by_author,
        by_author_keys=(post_author[by_author] << 32) | (post_created[by_author] + TIME_OFFSET),
    )


def world_requests_per_day(world: Any) -> int:
    """The requests of one day of the world's own traffic: impressions per user and day x users / slate size (the
    generator's Poisson rates, whose mean over users is impressions_per_user_day)."""
    cfg = world.cfg
    return max(1, round(cfg.impressions_per_user_day * cfg.n_users / cfg.slate_size))


def day_requests(world: Any, day: int, n: int, seed: int) -> pd.DataFrame:
    """`n` requests on absolute day `day`: users alive that day drawn in proportion to the world's activity, times
    uniform over the day, sorted by time. Columns: request_id ("sim-d<day>-<i>"), user_id, ts (epoch s), surface."""
    from features.synth import DAY_S, EPOCH, _weighted_choice

    rng = np.random.default_rng(np.random.SeedSequence([seed, day, 1808]))
    start = day * DAY_S
    alive = np.flatnonzero(world.user_created_s < start + DAY_S)
    users = alive[_weighted_choice(rng, world.user_act[alive], n)]
    t = np.sort(start + rng.integers(0, DAY_S, size=n))
    t = np.maximum(t, world.user_created_s[users])
    return pd.DataFrame({
        "request_id": [f"sim-d{day}-{i}" for i in range(n)],
        "user_id": users + 1,
        "ts": (t + int(EPOCH.timestamp())).astype(np.float64),
        "surface": np.zeros(n, dtype=np.int64),
    })  # fmt: skip


def served_frame(requests: pd.DataFrame, slates: Sequence[Sequence[int]]) -> pd.DataFrame:
    """One row per served item (request_id, user_id, post_id, position, ts) of each request's slate."""
    rows = [
        (r.request_id, int(r.user_id), int(p), n, float(r.ts))
        for r, slate in zip(requests.itertuples(index=False), slates, strict=True)
        for n, p in enumerate(slate)
    ]
    return pd.DataFrame(rows, columns=["request_id", "user_id", "post_id", "position", "ts"])


def slate_outcomes(world: Any, served: pd.DataFrame, seed: int) -> pd.DataFrame:
    """Every served item with its actions drawn from the truth, the truth's p_<action>, `reward` (the blend of what
    happened) and `true_reward` (the blend of the probabilities: the expected weighted engagement)."""
    from monitoring.ab_report import item_rewards
    from monitoring.outcomes import simulate_outcomes

    if served.empty:
        return served.assign(reward=pd.Series(dtype=float), true_reward=pd.Series(dtype=float))
    return item_rewards(simulate_outcomes(served, world, seed=seed).frame)


def true_rewards(outcomes: pd.DataFrame, requests: pd.DataFrame) -> np.ndarray:
    """(R,) the true reward of each request's slate (sum over its items; an empty slate earns 0)."""
    per = outcomes.groupby("request_id")["true_reward"].sum() if len(outcomes) else pd.Series(dtype=float)
    return per.reindex(requests["request_id"].astype(str)).fillna(0.0).to_numpy(np.float64)


def append_outcomes(outcomes: pd.DataFrame, path: Path) -> None:
    """Appends served items' drawn actions (request_id, post_id, one 0/1 column per action) to a JSONL outcome log,
    the format `ember monitor run --outcomes` joins with the exposure log."""
    from core.actions import ACTION_NAMES

    if outcomes.empty:
        return
    columns = ["request_id", "post_id", *[a for a in ACTION_NAMES if a in outcomes.columns]]
    frame = outcomes[columns].astype({"request_id": str, "post_id": "int64"})
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        handle.write(frame.to_json(orient="records", lines=True).rstrip("\n") + "\n")


def mean_true_reward(world: Any, requests: pd.DataFrame, slates: Sequence[Sequence[int]], seed: int) -> float:
    """The true reward per request of the slates (post ids) served to `requests`."""
    return float(true_rewards(slate_outcomes(world, served_frame(requests, slates), seed), requests).mean())


def _pool(world: Any, day: int, user: int, max_pool: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Post indices of the 48 h before the day (not the user's own) and their logging-policy popularity weights."""
    from features.synth import DAY_S, _popularity_pool

    pool, weights = _popularity_pool(world, day * DAY_S)
    own = world.post_author[pool] == user
    pool, weights = pool[~own], weights[~own]
    if len(pool) > max_pool:
        keep = np.sort(rng.choice(len(pool), max_pool, replace=False))
        pool, weights = pool[keep], weights[keep]
    return pool, weights


def reference_slates(world: Any, requests: pd.DataFrame, policy: str, k: int, seed: int, max_pool: int = 2_000
                     ) -> list[list[int]]:  # fmt: skip
    """Each request's slate (post ids) under the oracle, popular or random policy (see the module doc)."""
    from features.synth import DAY_S, EPOCH

    if policy not in REFERENCE_POLICIES:
        raise ValueError(f"reference_slates: {policy!r} is not one of {REFERENCE_POLICIES}")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 1809, REFERENCE_POLICIES.index(policy)]))
    slates: list[list[int]] = []
    for r in requests.itertuples(index=False):
        user = int(r.user_id) - 1
        day = int((r.ts - EPOCH.timestamp()) // DAY_S)
        pool, popularity = _pool(world, day, user, max_pool, rng)
        if policy == "random":
            pick = pool[rng.choice(len(pool), min(k, len(pool)), replace=False)]
        elif policy == "popular":
            pick = pool[np.lexsort((-pool, -popularity))[:k]]
        else:
            top = pd.DataFrame({"request_id": "q", "user_id": user + 1, "post_id": pool + 1, "position": 0,
                                "ts": float(r.ts)})  # fmt: skip
            value = slate_outcomes(world, top, seed)["true_reward"].to_numpy()
            pick = pool[np.lexsort((pool, -value))[:k]]
        slates.append([int(p) + 1 for p in pick])
    return slates


def posts_table(world: Any, end_s: int) -> Any:
    """The canonical posts table of the world's posts created before `end_s` (seconds from the epoch)."""
    from core.schema import POSTS, conform, validate
    from features.synth import entity_tables

    posts = entity_tables(world)["posts"]
    keep = int(np.searchsorted(world.post_created_s, end_s, side="left"))
    table = conform(posts.slice(0, keep), POSTS)
    validate(table, POSTS, "posts.parquet")
    return table


def exposure_records(
    requests: pd.DataFrame,
    slates: Sequence[Sequence[dict[str, Any]]],
    variant: str,
    version: str,
    features: Sequence[dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """The exposure-log records (serving/service.py's format) of what `variant` served: `slates` holds each
    request's items as dicts with post_id, score, source and actions; `features` each request's user features as
    the recommender returned them (what the monitor's data drift reads)."""
    features = features if features is not None else [{} for _ in range(len(requests))]
    return [
        {
            "kind": "exposure",
            "endpoint": "recommend",
            "request_id": r.request_id,
            "ts": float(r.ts),
            "user_id": int(r.user_id),
            "surface": int(r.surface),
            "variant": variant,
            "version": version,
            "degraded": False,
            "fallback": "",
            "items": [{**item, "position": n} for n, item in enumerate(slate)],
            "features": dict(user),
        }
        for r, slate, user in zip(requests.itertuples(index=False), slates, features, strict=True)
    ]


def write_day(dataset: Path, world: Any, exposure: Path, out: Path, day_end_s: int, seed: int, work: Path
              ) -> dict[str, Any]:  # fmt: skip
    """The next day's dataset `out` (atomically): `dataset` plus the impressions of the exposure log `exposure` with
    outcomes drawn from `world` (the served items' own ts), and the posts created before `day_end_s`. `work`: a
    scratch directory for the served impressions."""
    from core.io import atomic_dir, atomic_write_text
    from core.schema import Manifest, write_table
    from features.merge import merge_datasets
    from monitoring.served_impressions import served_dataset

    served = Path(work) / "served"
    info = served_dataset(exposure, dataset, served, synthetic=dataset, world=world, seed=seed)
    merged = Path(work) / "merged"
    merge_datasets(dataset, [served], merged)
    with atomic_dir(Path(out)) as tmp:
        for f in merged.iterdir():
            f.rename(tmp / f.name)
        manifest = Manifest.load(tmp)
        table = posts_table(world, day_end_s)
        manifest.files["posts.parquet"] = write_table(table, tmp / "posts.parquet")
        manifest.rows["posts"] = table.num_rows
        simulated = dict(manifest.params.get("simulated", {}))
        simulated["posts_through_s"] = int(day_end_s)
        manifest.params["simulated"] = simulated
        atomic_write_text(tmp / "manifest.json", manifest.to_json())
    return info


def write_results(out: Path, rows: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    """`simulate.json` (the run's parameters and one row per day and policy) and `simulate.csv` (one row per day:
    day, date, each policy's true reward per request, then alarm, retrained, promoted and the champion that served;
    a DVC plot with x = day and y = the policies) into the directory `out`."""
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / "simulate.json").write_text(json.dumps({**meta, "rows": rows}, indent=2, default=str) + "\n")
    frame = pd.DataFrame(rows, columns=list(ROW_FIELDS))
    wide = frame.pivot(index=["day", "date"], columns="policy", values="true_reward")
    wide = wide[list(dict.fromkeys(frame["policy"]))].reset_index()
    wide.columns.name = None
    days = frame.drop_duplicates("day")[["day", "alarm", "retrained", "promoted", "champion"]]
    wide.merge(days, on="day").to_csv(Path(out) / "simulate.csv", index=False, float_format="%.6g")


def normalised_rewards(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Per day, each learned policy's true reward on the scale random = 0, oracle = 1: (policy - random) / (oracle -
    random), the share of what ranking can add over a random slate that the policy earns. Empty without the oracle
    and random policies."""
    wide = pd.DataFrame(rows).pivot(index="day", columns="policy", values="true_reward")
    if not {"oracle", "random"} <= set(wide.columns):
        return pd.DataFrame()
    span = (wide["oracle"] - wide["random"]).where(lambda x: x > 0)
    learned = [p for p in ("loop", "frozen", "popular") if p in wide.columns]
    return wide[learned].sub(wide["random"], axis=0).div(span, axis=0)


def recovery(rows: list[dict[str, Any]], drift_day: int | None, share: float = 0.9, within: int = 2
             ) -> dict[str, Any]:  # fmt: skip
    """Issue 18's recovery test on the normalised true reward (`normalised_rewards`): for the loop and the frozen
    model, the mean over the days before `drift_day` and each day from it on; `back_from` = the first day (counted
    from the onset, 0 = the onset day) from which the policy stays at >= `share` of its pre-drift level to the end of
    the run (None: below it on the last day); `recovered` when that is within `within` days of the onset.

    "Stays" is the point: a model the drift has not reached yet on the onset day is not back, it has not left, and
    one that falls later has not recovered. None entries where the run cannot say (no drift, no day before it, no
    oracle/random)."""
    norm = normalised_rewards(rows)
    if drift_day is None or norm.empty or drift_day <= int(norm.index.min()):
        return {}
    out: dict[str, Any] = {"share": share, "within_days": within, "drift_day": drift_day}
    for policy in [p for p in ("loop", "frozen") if p in norm.columns]:
        before = float(norm.loc[norm.index < drift_day, policy].mean())
        after = norm.loc[norm.index >= drift_day, policy]
        held = [before > 0 and v >= share * before for v in after.to_numpy()]
        back_from = None
        for i in range(len(held) - 1, -1, -1):  # the start of the last run of held days that reaches the end
            if not held[i]:
                break
            back_from = int(after.index[i]) - drift_day
        out[policy] = {
            "pre_drift": round(before, 4),
            "after": {int(d): round(float(v), 4) for d, v in after.items()},
            "back_from": back_from,
            "recovered": back_from is not None and back_from <= within,
        }
    return out


def summary_line(rows: list[dict[str, Any]]) -> str:
    """Mean true reward per request per policy over the run, and the alarms, retrains and promotions."""
    frame = pd.DataFrame(rows)
    means = frame.groupby("policy", sort=False)["true_reward"].mean()
    per_day = frame.drop_duplicates("day")
    counts = f"{int(per_day.alarm.sum())} alarms, {int(per_day.retrained.sum())} retrains, " \
             f"{int(per_day.promoted.sum())} promotions"  # fmt: skip
    days = frame["day"].nunique()
    return (
        f"simulated {days} days: true reward per request "
        + ", ".join(f"{p} {v:.4f}" for p, v in means.items())
        + f"; {counts}"
    )
