"""`PipelineRecommender` end to end on a real nano world: synthetic feed -> features -> Feast online store (SQLite)
-> two-tower + ANN index + ranker trained by `dvc repro`, then served through the pipeline.

Checks the slate rules (length, duplicates, self posts, blocked authors, author cap, ordering, actions), the
fallbacks (unknown user, unreachable store) and serving/training parity of the ranker inputs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from core.errors import UserError
from features.catalog import View
from features.online import OnlineFeatures, SqliteBackend
from models.ranker.data import RankerDataset, predict
from models.ranker.task_table import TaskKind
from models.ranker.tasks import availability
from models.retrieval.data import HISTORY
from serving.recommender import Recommender
from serving.recommender_config import RecommenderConfig
from serving.recommender_pipeline import PipelineRecommender
from serving.scorers.ranker import RankerScorer, ranker_inputs
from serving.types import Query
from tests.project import nano_project

pytestmark = pytest.mark.slow  # the world takes about a minute to build

K = 10
USERS = (1, 2, 3, 5, 7, 11, 13)
UNKNOWN_USER = 10**9


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> None:
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A nano copy of the project with trained models, an index and a materialized SQLite online store."""
    root = nano_project(tmp_path_factory.mktemp("recommender") / "project")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "DO_NOT_TRACK": "1"}
    _run(["dvc", "repro", "build_index", "train_ranker"], root, env)
    _run(["ember", "features", "materialize"], root, env)
    return root


def _as_of(world: Path) -> str:
    """The simulated now: the newest post snapshot of the offline store (what was materialized)."""
    ts = pd.read_parquet(world / "data" / "features" / "post_stats.parquet", columns=["event_timestamp"])
    return ts["event_timestamp"].max().isoformat()


def _config(world: Path, **overrides: Any) -> RecommenderConfig:
    values: dict[str, Any] = {
        "retrieval_model": world / "artifacts" / "retrieval" / "best",
        "index": world / "artifacts" / "index",
        "ranker": world / "artifacts" / "ranker" / "best",
        "features": world / "data" / "features",
        "sqlite_path": world / "data" / "feast" / "online.db",
        "as_of": _as_of(world),
    }
    return RecommenderConfig(**(values | overrides))


@pytest.fixture(scope="module")
def rec(world: Path) -> PipelineRecommender:
    return PipelineRecommender.load(_config(world))


@pytest.fixture(scope="module")
def online(world: Path) -> OnlineFeatures:
    return OnlineFeatures(SqliteBackend(world / "data" / "feast" / "online.db"))


def _check_actions(rec: PipelineRecommender, actions: dict[str, float]) -> None:
    assert set(actions) == {t.name for t in rec.ranker.tasks}
    for t in rec.ranker.tasks:
        value = actions[t.name]
        assert np.isfinite(value)
        assert value >= 0.0 if t.kind is TaskKind.CONTINUOUS else 0.0 <= value <= 1.0, (t.name, value)


def test_it_implements_the_contract_and_names_its_models(rec: PipelineRecommender) -> None:
    contract: Recommender = rec  # the protocol is static: mypy checks the signatures
    assert contract.ready()
    retrieval, ranker = rec.version.split("+")
    assert retrieval.startswith("retrieval:") and ranker.startswith("ranker:")


@pytest.mark.parametrize("user_id", USERS)
def test_a_slate_follows_every_rule(rec: PipelineRecommender, online: OnlineFeatures, user_id: int) -> None:
    graph = online.user(user_id).graph
    banned = set(graph["blocked_author_ids"]) | set(graph["muted_author_ids"])
    followees = set(graph["followee_ids"])
    out = rec.recommend(user_id, K)

    assert not out.degraded and out.fallback == ""
    assert len(out.items) == K
    posts = [i.post_id for i in out.items]
    assert len(set(posts)) == K, "no duplicates"
    assert all(i.author_id != user_id for i in out.items), "no self posts"
    assert not {i.author_id for i in out.items} & banned, "no blocked or muted authors"
    assert max(Counter(i.author_id for i in out.items).values()) <= rec.cfg.author_cap
    scores = [i.score for i in out.items]
    assert scores == sorted(scores, reverse=True)
    for item in out.items:
        _check_actions(rec, item.actions)
        assert item.in_network == (item.author_id in followees)
        assert item.source in ("InNetworkSource", "TwoTowerSource")
    names = [s["name"] for s in out.stages]
    assert names[:2] == ["UserFeaturesHydrator", "UserGraphHydrator"] and "RankerScorer" in names
    assert all("error" not in s for s in out.stages)
    assert "user_impressions_7d" in out.features and out.features["hist_length"] > 0
    json.dumps([out.features, out.stages, [i.actions for i in out.items]])  # what the service logs is JSON


def test_seen_posts_are_not_served_again(rec: PipelineRecommender) -> None:
    first = rec.recommend(USERS[0], K)
    seen = frozenset(i.post_id for i in first.items)
    second = rec.recommend(USERS[0], K, seen_ids=seen)
    assert len(second.items) == K and not seen & {i.post_id for i in second.items}


class _BlockingBackend:
    """The SQLite store, except that one user's graph blocks and mutes the given authors."""

    def __init__(self, inner: SqliteBackend, user_id: int, blocked: list[int], muted: list[int]) -> None:
        self.inner, self.user_id, self.blocked, self.muted = inner, user_id, blocked, muted

    def read(self, view: View, ids: Sequence[int]) -> list[dict[str, Any] | None]:
        rows = self.inner.read(view, ids)
        if view.name != "user_graph":
            return rows
        out = []
        for i, row in zip(ids, rows, strict=True):
            if i == self.user_id:
                row = {**(row or {}), "blocked_author_ids": tuple(self.blocked), "muted_author_ids": tuple(self.muted)}
            out.append(row)
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_blocking_the_top_authors_removes_their_posts(world: Path, rec: PipelineRecommender) -> None:
    user = USERS[1]
    before = rec.recommend(user, K)
    authors = list(dict.fromkeys(i.author_id for i in before.items))
    blocked, muted = authors[:2], authors[2:3]
    backend = _BlockingBackend(SqliteBackend(world / "data" / "feast" / "online.db"), user, blocked, muted)
    blocking = PipelineRecommender.load(rec.cfg, online=OnlineFeatures(backend))
    after = blocking.recommend(user, K)
    assert len(after.items) == K
    assert not {i.author_id for i in after.items} & set(blocked + muted)
    dropped = next(s for s in after.stages if s["name"] == "AuthorSocialgraphFilter")
    assert dropped["in"] > dropped["out"]


def test_an_unknown_user_gets_a_ranked_cold_start_slate(rec: PipelineRecommender) -> None:
    out = rec.recommend(UNKNOWN_USER, K)
    assert out.fallback == "cold_start" and not out.degraded
    assert len(out.items) == K and len({i.post_id for i in out.items}) == K
    assert {i.source for i in out.items} == {"PopularSource"}
    for item in out.items:
        _check_actions(rec, item.actions)
    assert set(out.features["missing_views"]) == {"user_stats", "user_history", "user_graph"}


@pytest.mark.parametrize(
    "store",
    [
        {"online_store": "redis", "redis": "127.0.0.1:1"},  # nothing listens on port 1: connection refused
        {"sqlite_path": Path("/nonexistent/online.db")},
    ],
)
def test_an_unreachable_store_gives_a_degraded_popular_slate(world: Path, store: dict[str, Any]) -> None:
    rec = PipelineRecommender.load(_config(world, **store))
    out = rec.recommend(USERS[0], K)
    assert out.degraded and out.fallback == "popular"
    assert len(out.items) == K and len({i.post_id for i in out.items}) == K
    assert {i.source for i in out.items} == {"PopularSource"}
    assert all(i.author_id != USERS[0] for i in out.items)
    scores = [i.score for i in out.items]
    assert scores == sorted(scores, reverse=True) and scores[0] > 0, "ordered by popularity"
    assert any("FeatureStoreUnavailable" in s.get("error", "") for s in out.stages)
    assert out.as_of == datetime.fromisoformat(_as_of(world)), "a fallback says which time it served too"
    ranked = rec.rank(USERS[0], [i.post_id for i in out.items[:3]])
    assert ranked.degraded and [i.post_id for i in ranked.items] == [i.post_id for i in out.items[:3]]
    if "sqlite_path" in store:
        assert not rec.ready()


def test_a_response_says_the_time_it_was_served_for_unless_that_is_the_wall_clock(
    world: Path, rec: PipelineRecommender
) -> None:
    fixed = datetime.fromisoformat(_as_of(world))
    assert rec.recommend(USERS[0], K).as_of == fixed and rec.rank(USERS[0], [1, 2]).as_of == fixed
    live = PipelineRecommender.load(_config(world, as_of=None))
    assert live.recommend(USERS[0], K).as_of is None and live.rank(USERS[0], [1, 2]).as_of is None
    at = datetime(2026, 1, 5, 7, tzinfo=UTC)
    clocked = PipelineRecommender.load(_config(world, as_of=None), clock=lambda: at)  # a simulation's clock
    assert clocked.recommend(USERS[0], K).as_of == at


def test_rank_scores_the_given_posts_in_the_given_order(rec: PipelineRecommender) -> None:
    slate = rec.recommend(USERS[2], K)
    asked = [i.post_id for i in reversed(slate.items)] + [987_654_321]  # the last one no store knows
    out = rec.rank(USERS[2], asked)
    assert [i.post_id for i in out.items] == asked
    assert not out.degraded and out.fallback == ""
    for item in out.items:
        _check_actions(rec, item.actions)
        assert item.score >= 0
    # Same predictions as in the slate: the ranker's outputs do not depend on the other candidates.
    by_post = {i.post_id: i for i in slate.items}
    for item in out.items[:-1]:
        for name, p in item.actions.items():
            assert p == pytest.approx(by_post[item.post_id].actions[name], abs=1e-5)


def _served_query_and_candidates(rec: PipelineRecommender, user_id: int) -> tuple[Query, list[Any]]:
    """What the ranker scorer sees for a user: the hydrated query and the filtered, hydrated candidates."""
    query = Query(user_id=user_id, now=rec.clock(), k=K)
    for h in rec.query_hydrators:
        query = h.hydrate(query)
    candidates = [c for s in rec.pipeline.sources if s.enabled(query) for c in s.fetch(query)]
    candidates = rec.post_hydrator.hydrate(query, candidates)
    for f in rec.pipeline.filters:
        if f.enabled(query):
            candidates = f.filter(query, candidates).kept
    # Both kinds, and only posts the store knows (a training row never lacks its post's features).
    known = [c for c in candidates if "post_topic" in c.features]
    return query, [c for c in known if c.in_network][:20] + [c for c in known if not c.in_network][:20]


def test_the_scorer_returns_what_the_ranker_forward_gives(rec: PipelineRecommender) -> None:
    query, candidates = _served_query_and_candidates(rec, USERS[3])
    scored = RankerScorer(rec.ranker).score(query, [replace(c, actions={}) for c in candidates])
    user, batch, hist = ranker_inputs(rec.ranker, query, candidates)
    C = rec.ranker.cfg.max_candidates
    with torch.inference_mode():
        expected = torch.cat(
            [
                rec.ranker.predictions(rec.ranker(user, batch.slice(lo, lo + C), hist))[0]
                for lo in range(0, len(candidates), C)
            ]
        )
    got = torch.tensor([[c.actions[t.name] for t in rec.ranker.tasks] for c in scored])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def _training_rows(rec: PipelineRecommender, query: Query, candidates: list[Any]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The same request as a ranker training set would hold it (point-in-time columns, labels, position) and the
    post attribute table training reads for history posts."""
    stats = query.user_stats or {}
    history = query.history or {}
    user_cols = {name: value for name, value in stats.items() if name.startswith("user_")}
    rows = []
    for i, c in enumerate(candidates):
        row = {
            "request_id": 1,
            "impression_id": i,
            "user_id": query.user_id,
            "post_id": c.post_id,
            "author_id": c.author_id,
            "event_timestamp": pd.Timestamp(query.now),
            "surface": query.surface,
            "position": -1,  # serving does not know the slot: the position-bias tower adds nothing
            "in_network": c.in_network,
            **user_cols,
            **c.features,
            **{t.name: 0.0 for t in rec.ranker.tasks},
        }
        rows.append(row)
    df = pd.DataFrame(rows)
    for name in HISTORY:
        df[name] = [list(history[name])] * len(df)
    attrs = rec.ranker.cfg.candidate_attributes
    known = [
        {"post_id": int(p), **{a: history[f"hist_{a}"][i] for a in attrs}}
        for i, p in enumerate(history["hist_post_ids"])
        if all(history[f"hist_{a}"][i] is not None for a in attrs)
    ]
    return df, pd.DataFrame(known, columns=["post_id", *attrs])


def test_serving_inputs_equal_the_training_inputs_for_the_same_feature_values(rec: PipelineRecommender) -> None:
    """The ranker scorer's predictions equal `models.ranker.data.predict` on a training-set frame of the same
    request: serving builds the user, history attributes and candidate features exactly as training does."""
    model = rec.ranker
    query, candidates = _served_query_and_candidates(rec, USERS[4])
    assert query.history and len(query.history["hist_post_ids"]) > 0, "a user with history"
    assert any(c.in_network for c in candidates) and any(not c.in_network for c in candidates)
    scored = RankerScorer(model).score(query, [replace(c, actions={}) for c in candidates])
    df, posts = _training_rows(rec, query, candidates)
    ds = RankerDataset(df, model.cfg, model.tasks, availability([t.name for t in model.tasks]), posts=posts)
    expected = predict(model, ds)
    got = np.array([[c.actions[t.name] for t in model.tasks] for c in scored], dtype=np.float32)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("user_id", USERS[:4])
def test_the_served_two_tower_reads_what_its_evaluation_read(
    world: Path, rec: PipelineRecommender, user_id: int
) -> None:
    """The served source's user input (online store at `as_of`) equals the one `ember evaluate retrieval` builds from
    the dataset's click events before the same time
    (models.retrieval.train_sequences.SequenceRetriever.event_features): the same clicks, predecessor gaps, user
    attributes and history post attributes, so the served user embedding is the evaluated one."""
    from models.retrieval.sequences import positive_events
    from models.retrieval.train_sequences import SequenceRetriever, post_table
    from serving.inputs import user_inputs

    model = rec.two_tower
    assert model.cfg.history_gaps == "predecessor" and model.cfg.history_action == "click"
    query = Query(user_id=user_id, now=rec.clock(), k=K)
    for h in rec.query_hydrators:
        query = h.hydrate(query)
    served = user_inputs(query, model.cfg)
    data = world / "data" / "synth"
    events = positive_events(data)
    now_ms = int(pd.Timestamp(query.now).timestamp() * 1000)
    corpus = np.unique(events["post_id"].to_numpy())
    table = post_table(model.cfg, corpus, events[events["ts_ms"] < now_ms], data)
    request = pd.DataFrame({"user_id": [user_id], "ts_ms": [now_ms], "impression_id": [np.iinfo(np.int64).max]})
    evaluated, _ = SequenceRetriever(model, table, "full", data).event_features(events, request)
    assert int((served.hist_post_ids != 0).sum()) > 0, "a user with clicks"
    for name in ("user_ids", "attribute_ids", "hist_post_ids", "hist_author_ids", "hist_actions", "hist_surfaces",
                 "hist_gap_ms", "hist_attributes"):  # fmt: skip
        torch.testing.assert_close(getattr(served, name), getattr(evaluated, name), msg=lambda m, n=name: f"{n}: {m}")
    with torch.inference_mode():
        torch.testing.assert_close(model.user_embedding(served), model.user_embedding(evaluated))


def test_an_exploring_variant_draws_varied_slates_and_logs_their_propensities(
    world: Path, rec: PipelineRecommender
) -> None:
    ranked = [i.post_id for i in rec.recommend(USERS[0], K).items]
    assert all(i.propensity is None for i in rec.recommend(USERS[0], K).items)  # off by default: a ranked slate
    explorer = PipelineRecommender.load(_config(world, explore_temperature=0.3, explore_seed=7, warm_posts=0))
    n = 150
    slates = [explorer.recommend(USERS[0], K) for _ in range(n)]
    firsts: dict[int, int] = {}
    p0: dict[int, float] = {}
    for out in slates:
        assert not out.degraded and len(out.items) == K and len({i.post_id for i in out.items}) == K
        assert max(Counter(i.author_id for i in out.items).values()) <= explorer.cfg.author_cap
        for item in out.items:
            assert item.propensity is not None and item.inclusion is not None
            assert 0.0 < item.propensity <= item.inclusion <= 1.0
        first = out.items[0]
        firsts[first.post_id] = firsts.get(first.post_id, 0) + 1
        assert p0.setdefault(first.post_id, first.propensity) == pytest.approx(first.propensity)  # exact softmax
        assert out.stages[-1]["name"] == "PlackettLuceExplorer"
    assert len({tuple(i.post_id for i in out.items) for out in slates}) > n // 2  # the slates vary
    # The ranked slate's first post has the largest slot-0 propensity, and leads as often as that propensity says.
    top = ranked[0]
    assert max(p0, key=p0.__getitem__) == top and sum(p0.values()) <= 1.0 + 1e-9
    assert abs(firsts[top] / n - p0[top]) < 4 * np.sqrt(p0[top] * (1 - p0[top]) / n), (firsts[top], p0[top])
    with pytest.raises(UserError, match="recommender.explore_temperature"):
        RecommenderConfig.from_dict({"retrieval_model": "a", "index": "b", "ranker": "c", "explore_temperature": -1})


def test_a_slot_exploring_variant_keeps_the_ranked_top_and_draws_its_last_slots_from_the_rest(
    world: Path, rec: PipelineRecommender
) -> None:
    ranked = [i.post_id for i in rec.recommend(USERS[0], K).items]
    explorer = PipelineRecommender.load(_config(world, explore_slots=2, explore_seed=7, warm_posts=0))
    slates = [explorer.recommend(USERS[0], K) for _ in range(30)]
    for out in slates:
        ids = [i.post_id for i in out.items]
        assert not out.degraded and len(ids) == K == len(set(ids)) and ids[: K - 2] == ranked[: K - 2]
        assert all(i.propensity == 1.0 for i in out.items[: K - 2])
        assert all(0.0 < (i.propensity or 0.0) < 1.0 and i.post_id not in ranked[: K - 2] for i in out.items[K - 2 :])
        assert out.stages[-1]["name"] == "SlotExplorer"
    assert len({tuple(i.post_id for i in out.items[K - 2 :]) for out in slates}) > 5  # the explored slots vary
    for bad in ({"explore_slots": -1}, {"explore_slots": 1, "explore_temperature": 0.3}):
        with pytest.raises(UserError, match="^recommender.explore_slots"):
            RecommenderConfig.from_dict({"retrieval_model": "a", "index": "b", "ranker": "c", **bad})


def test_bad_configs_are_one_line_errors_naming_the_key(world: Path) -> None:
    base = {"retrieval_model": "a", "index": "b", "ranker": "c"}
    with pytest.raises(UserError, match="recommender.author_cpa"):
        RecommenderConfig.from_dict({**base, "author_cpa": 2})
    with pytest.raises(UserError, match="recommender.top_k"):
        RecommenderConfig.from_dict({**base, "top_k": "many"})
    with pytest.raises(UserError, match="weights.report"):
        RecommenderConfig.from_dict({**base, "weights": {"report": 5.0}})
    with pytest.raises(UserError, match="as_of"):
        RecommenderConfig.from_dict({**base, "as_of": "yesterday"})
    with pytest.raises(UserError, match="recommender.author_cap: input should be a valid integer, got '3'"):
        RecommenderConfig.from_dict({**base, "author_cap": "3"})  # strict: a quoted number is a mistake
    with pytest.raises(UserError, match="recommender.in_network"):
        RecommenderConfig.from_dict({**base, "in_network": "yes"})
    cfg = RecommenderConfig.from_dict({**base, "author_cap": 3, "max_age_hours": 24, "popular_posts": [5, 4]})
    assert cfg.author_cap == 3 and cfg.ranker == Path("c") and cfg.popular_posts == (5, 4)  # paths, lists as YAML
    other = _config(world, index=world / "artifacts" / "ranker")
    with pytest.raises(UserError, match="not an ANN index"):
        PipelineRecommender.load(other)


def test_sampled_requests_log_the_candidate_inputs_and_the_skew_check_covers_them(world: Path, tmp_path: Path) -> None:
    from monitoring.config import SkewConfig
    from monitoring.exposure_frame import read_exposure
    from monitoring.replay import replay, write_records
    from monitoring.skew import read_candidate_tables, read_user_tables, train_serve_skew

    assert all(i.features is None for i in rec_items(PipelineRecommender.load(_config(world, warm_posts=0))))
    logger = PipelineRecommender.load(_config(world, log_candidate_features=1.0, log_seed=3, warm_posts=0))
    requests = pd.DataFrame({"user_id": list(USERS) * 3, "surface": 0})
    records = replay(logger, requests, K, ts=datetime.fromisoformat(_as_of(world)).timestamp())
    for record in records:
        for item in record["items"]:
            assert set(item["features"]) <= set(logger.logged_inputs) and "post_author_id" in item["features"]
            assert {"post_click_rate", "post_topic"} <= set(item["features"])  # what the ranker read (as hydrated)
    frame = read_exposure(write_records(records, tmp_path / "exposure.jsonl")).frame
    features = world / "data" / "features"
    users = frame["user_id"].to_numpy(np.int64)
    tables = read_user_tables(features, users) | read_candidate_tables(features, frame)
    as_of = datetime.fromisoformat(_as_of(world))
    cfg = SkewConfig(min_rows=10)
    result = train_serve_skew(frame, tables, cfg, as_of)
    inputs = [f for f in result.per_feature if f.startswith("cand_")]
    assert result.status == "pass", result.reasons
    assert result.n_items_compared == len(frame) and {"cand_post_click_rate", "cand_author_click_rate"} <= set(inputs)
    assert all(result.per_feature[f]["rate"] == 0.0 for f in inputs)
    # A served value that differs from the offline table is caught, named and counted exactly.
    bad = frame.copy()
    rows = bad.index[: len(bad) // 4]
    bad.loc[rows, "cand_post_click_rate"] = bad.loc[rows, "cand_post_click_rate"] + 0.5
    skewed = train_serve_skew(bad, tables, cfg, as_of)
    assert skewed.per_feature["cand_post_click_rate"]["mismatched"] == len(rows)
    assert skewed.status == "fail" and "cand_post_click_rate" in skewed.reasons[-1]
    assert any(e["feature"] == "cand_post_click_rate" and "post_id" in e for e in skewed.examples)
    # Sampling: a share of requests, and a bad share is a one-line config error.
    half = PipelineRecommender.load(_config(world, log_candidate_features=0.5, log_seed=3, warm_posts=0))
    logged = [bool(half.recommend(u, K).items[0].features) for u in list(USERS) * 6]
    assert 0 < sum(logged) < len(logged)
    with pytest.raises(UserError, match="recommender.log_candidate_features"):
        RecommenderConfig.from_dict({"retrieval_model": "a", "index": "b", "ranker": "c", "log_candidate_features": 2})


def rec_items(rec: PipelineRecommender) -> list[Any]:
    return [i for u in USERS[:3] for i in rec.recommend(u, K).items]


def test_the_logged_user_features_count_the_history_events_of_the_requests_own_day() -> None:
    """hist_live: the events the push source added since the (UTC) day began, which the offline history frozen at
    the day's start cannot hold; the skew check adds them to the offline length (monitoring/skew.py)."""
    from datetime import UTC, datetime

    from serving.recommender_pipeline import _user_features
    from serving.types import Query

    now = datetime(2026, 3, 5, 14, 30, tzinfo=UTC)
    day_start_ms = int(datetime(2026, 3, 5, tzinfo=UTC).timestamp() * 1000)
    times = (day_start_ms - 3_600_000, day_start_ms - 1, day_start_ms, day_start_ms + 40_000_000)
    history = {"hist_post_ids": (1, 2, 3, 4), "hist_timestamps": times}
    logged = _user_features(Query(user_id=1, now=now, user_stats={"user_click_1d": 2}, history=history))
    assert logged["hist_length"] == 4 and logged["hist_live"] == 2 and logged["user_click_1d"] == 2
    empty = _user_features(Query(user_id=1, now=now, user_stats={}, history={}))
    assert empty["hist_length"] == 0 and empty["hist_live"] == 0
    assert _user_features(Query(user_id=1, now=now)) == {}  # not hydrated: nothing logged
