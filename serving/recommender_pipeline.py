"""`PipelineRecommender`: the real recommender behind the `Recommender` contract (serving/recommender.py).

One loaded variant = a two-tower + its ANN index (out-of-network retrieval), an in-network recent-post store, a
popular/fresh list (cold start and fallback), the ranker, blend weights and pipeline parameters, run through the
generic runner (serving/pipeline.py) in x-algorithm's order:

    query hydrators  UserFeaturesHydrator, UserGraphHydrator                      (online store)
    sources          InNetworkSource, TwoTowerSource, FreshSource (posts added live), PopularSource (cold start only)
    hydrators        PostFeaturesHydrator                                         (online store)
    filters          DropDuplicates, CoreData, Age, SelfPost, PreviouslySeen, AuthorSocialgraph
    scorers          RankerScorer -> WeightedScorer -> AuthorDiversityScorer -> OutOfNetworkScorer
    selector         TopKSelector
    post-selection   AuthorCapFilter, then the slate is cut to k

Fallbacks (never an exception): a user the stores do not know gets the popular source ranked by the full pipeline
(fallback "cold_start"); when the user's features cannot be read (store unreachable) the popular list answers alone,
by popularity (degraded, fallback "popular"); a full run that leaves nothing gets the popular slate too.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
import torch

from core.errors import UserError
from core.online_store import OnlineStoreConfig, sqlite_path
from features.catalog import View
from features.online import Backend, FeatureStoreUnavailable, OnlineFeatures, open_backend
from models.ranker.model import EXTRA_PREFIX, Ranker, load_ranker
from models.retrieval.index import AnnIndex, load_index
from models.retrieval.job import model_version, post_corpus
from models.retrieval.model import TwoTower, load_two_tower
from serving.component import Component
from serving.filters.age import AgeFilter
from serving.filters.author_cap import AuthorCapFilter
from serving.filters.author_socialgraph import AuthorSocialgraphFilter
from serving.filters.core_data import CoreDataFilter
from serving.filters.drop_duplicates import DropDuplicatesFilter
from serving.filters.previously_seen import PreviouslySeenFilter
from serving.filters.self_post import SelfPostFilter
from serving.hydrators.post_features import PostFeaturesHydrator
from serving.hydrators.user_features import UserFeaturesHydrator
from serving.hydrators.user_graph import UserGraphHydrator
from serving.pipeline import Filter, Pipeline, PipelineResult, QueryHydrator, Source
from serving.recent_posts import RecentPost, RecentPostStore
from serving.recommender import Item, Recommendation
from serving.recommender_config import RecommenderConfig
from serving.scorers.author_diversity import AuthorDiversityScorer
from serving.scorers.out_of_network import OutOfNetworkScorer
from serving.scorers.ranker import RankerScorer
from serving.scorers.weighted import ScoringWeights, WeightedScorer
from serving.selectors.explore import PlackettLuceExplorer, SlotExplorer
from serving.selectors.top_k import TopKSelector
from serving.sources.fresh import FreshSource
from serving.sources.in_network import InNetworkSource
from serving.sources.popular import PopularPost, PopularSource, popular_posts
from serving.sources.two_tower import PostCatalog, TwoTowerSource
from serving.types import Candidate, Query

log = logging.getLogger(__name__)

# History posts whose attributes are looked up for a two-tower that reads one action's events (the user_history view
# keeps the newest 128 engagements: features_build.history_length).
FILTERED_HISTORY_LOOKUP = 128


def _warm(online: OnlineFeatures, index_ids: np.ndarray, corpus: pd.DataFrame | None, limit: int) -> None:
    """Reads the features of the posts requests will ask about (the ANN corpus, the newest first when it is larger
    than `limit`) into the cache. A store that cannot be read now is not a load error: requests read through."""
    ids = np.asarray(index_ids, dtype=np.int64)
    if corpus is not None and len(corpus):
        newest = corpus.sort_values("post_created_at_ms", ascending=False)["post_id"].to_numpy(dtype=np.int64)
        ids = np.concatenate([newest[:limit], ids])  # recent in-network posts count as much as ANN ones
    ids = np.asarray(list(dict.fromkeys(ids.tolist()))[:limit], dtype=np.int64)
    start = time.perf_counter()
    try:
        held = online.warm(ids)
    except FeatureStoreUnavailable as err:
        log.warning("feature cache not warmed (%s): requests read the store directly", err)
        return
    log.info("feature cache warmed: %d of %d posts in %.1f s", held, len(ids), time.perf_counter() - start)


class ReopeningBackend:
    """An online-store backend opened on first use and reopened after a failed open, so a store that is down when
    the service starts (or a SQLite file not there yet) makes requests fall back instead of failing the load."""

    def __init__(self, opener: Callable[[], Backend]) -> None:
        self.opener = opener
        self.backend: Backend | None = None

    def _get(self) -> Backend:
        if self.backend is None:
            self.backend = self.opener()  # FeatureStoreUnavailable propagates: the caller falls back
        return self.backend

    def opened(self) -> bool:
        try:
            self._get()
        except FeatureStoreUnavailable:
            return False
        return True

    def read(self, view: View, ids: Sequence[int]) -> list[dict[str, Any] | None]:
        return self._get().read(view, ids)

    def check(self, view: View) -> None:
        self._get().check(view)

    def materialized_at(self) -> str | None:
        return self._get().materialized_at()

    def mark_materialized(self, stamp: str) -> None:
        self._get().mark_materialized(stamp)


def reopening_backend(cfg: RecommenderConfig) -> ReopeningBackend:
    online = OnlineStoreConfig(cfg.online_store, cfg.sqlite_path or sqlite_path(), cfg.redis)
    return ReopeningBackend(lambda: open_backend(online))


def eligibility_filters(cfg: RecommenderConfig, hydrated: bool) -> list[Filter]:
    """The filters that decide which candidates may be served, in order, for the pipeline and its fallback.

    Args:
        hydrated: the pipeline hydrates post features, so CoreDataFilter drops what the store could not resolve.
            The fallback hydrates nothing: a popular list given at load may hold posts of unknown author (0), and
            it serves them.
    """
    return [
        DropDuplicatesFilter(),
        *([CoreDataFilter()] if hydrated else []),
        AgeFilter(cfg.max_age),
        SelfPostFilter(),
        PreviouslySeenFilter(),
        AuthorSocialgraphFilter(),
    ]


def _load_models(cfg: RecommenderConfig) -> tuple[TwoTower, AnnIndex, Ranker, str]:
    """The two-tower, its index and the ranker, and the variant's version "retrieval:<hash>+ranker:<hash>".

    Raises:
        UserError: a directory is missing or does not fit this code, the ranker reads dataset extras the served
            pipeline has no values for, or the index was built from another two-tower than `retrieval_model`.
    """
    device = torch.device(cfg.device)
    two_tower = load_two_tower(cfg.retrieval_model, map_location=device).to(device).eval()
    ranker = load_ranker(cfg.ranker, map_location=device)
    extras = [f for f in ranker.cfg.candidate_features if f.startswith(EXTRA_PREFIX)]
    if extras:
        raise UserError(f"{cfg.ranker}: reads dataset extras the served pipeline has no values for: {extras}")
    if not (cfg.index / "index.json").is_file():
        raise UserError(f"{cfg.index}: not an ANN index (no index.json; run `ember index build`)")
    index = load_index(cfg.index)
    retrieval_version = model_version(cfg.retrieval_model)
    built_from = json.loads((cfg.index / "index.json").read_text()).get("model")
    if built_from != retrieval_version:
        raise UserError(
            f"{cfg.index}: built from model {built_from}, not from {cfg.retrieval_model} ({retrieval_version})"
        )
    return two_tower, index, ranker, f"retrieval:{retrieval_version}+ranker:{model_version(cfg.ranker)}"


def _popular_list(cfg: RecommenderConfig, corpus: pd.DataFrame | None) -> list[PopularPost]:
    """The popular source's posts: `popular_posts` as given (authors and times from the corpus where it has them),
    else the corpus ranked by engagement; none without either."""
    if cfg.popular_posts:
        n = len(cfg.popular_posts)
        by_id = corpus.set_index("post_id") if corpus is not None else None
        known = by_id.index if by_id is not None else ()
        return [
            PopularPost(
                p,
                int(by_id.at[p, "author_id"]) if by_id is not None and p in known else 0,
                int(by_id.at[p, "post_created_at_ms"]) if by_id is not None and p in known else 0,
                float(n - i),
            )
            for i, p in enumerate(cfg.popular_posts)
        ]
    return popular_posts(corpus) if corpus is not None else []


def recent_post_store(corpus: pd.DataFrame, now: datetime) -> RecentPostStore:
    """The in-network source's store: every post of the corpus with a known creation time, trimmed at `now`."""
    recent = RecentPostStore()
    recent.extend(
        RecentPost(int(t), int(p), int(a))
        for p, a, t in zip(corpus["post_id"], corpus["author_id"], corpus["post_created_at_ms"], strict=True)
        if t == t  # NaN: creation time unknown
    )
    recent.trim(int(now.timestamp() * 1000))
    return recent


def _explorer(cfg: RecommenderConfig) -> PlackettLuceExplorer | SlotExplorer | None:
    """The configured exploration of the served slate (RecommenderConfig.explore_*), or None: the ranked order."""
    if cfg.explore_temperature > 0:
        return PlackettLuceExplorer(cfg.explore_temperature, cfg.explore_samples, cfg.explore_seed)
    if cfg.explore_slots:
        return SlotExplorer(cfg.explore_slots, cfg.explore_seed)
    return None


@dataclass
class GivenPostsSource(Component):
    """The posts a `rank` call asks about, in the order given."""

    post_ids: list[int] = field(default_factory=list)

    def fetch(self, query: Query) -> list[Candidate]:
        return [Candidate(post_id=p, author_id=0, created_at_ms=0, source="request") for p in self.post_ids]


class PipelineRecommender:
    """A loaded variant (see the module doc). Build with `load`; `recommend` and `rank` never raise for an unknown
    user or an unreachable store."""

    def __init__(
        self,
        cfg: RecommenderConfig,
        two_tower: TwoTower,
        index: AnnIndex,
        ranker: Ranker,
        online: OnlineFeatures,
        popular: list[PopularPost],
        recent: RecentPostStore | None,
        version: str,
        clock: Callable[[], datetime] | None = None,
        post_attributes: dict[int, dict[str, Any]] | None = None,
        catalog: PostCatalog | None = None,
    ) -> None:
        self.cfg, self.two_tower, self.index, self.ranker, self.online = cfg, two_tower, index, ranker, online
        self._version = version
        fixed = cfg.now_at()
        self._fixed_time = clock is not None or fixed is not None  # responses then say which time they served
        if clock is None:
            clock = (lambda: fixed) if fixed is not None else (lambda: datetime.now(UTC))
        self.clock = clock
        history = max(two_tower.cfg.max_history, ranker.cfg.max_history)
        if two_tower.cfg.history_action:  # its newest S events of one action lie further back: look up all of them
            history = max(history, FILTERED_HISTORY_LOOKUP)
        attributes = tuple(dict.fromkeys((*ranker.cfg.candidate_attributes, *two_tower.cfg.post_attributes)))
        self.query_hydrators: list[QueryHydrator] = [
            UserFeaturesHydrator(online, attributes, max_history=history, known_attributes=post_attributes or {}),
            UserGraphHydrator(online),
        ]
        self.post_hydrator = PostFeaturesHydrator(online)
        self.ranker_scorer = RankerScorer(ranker)
        # The candidate inputs a sampled request logs with each served item (RecommenderConfig.log_candidate_features).
        self.logged_inputs = tuple(
            dict.fromkeys(("post_author_id", *ranker.cfg.candidate_features, *ranker.cfg.candidate_attributes))
        )
        self._log_draw = random.Random(cfg.log_seed)
        self.weighted = WeightedScorer(ScoringWeights(cfg.weights) if cfg.weights is not None else ScoringWeights())
        self.recent = recent
        self.catalog = catalog  # the indexed posts' authors and times: the ANN source drops aged posts itself
        self.fresh = FreshSource(cfg.max_age, cfg.fresh_max_results)
        self.pipeline = Pipeline(
            query_hydrators=list(self.query_hydrators),
            sources=self._sources(popular),
            hydrators=[self.post_hydrator],
            filters=eligibility_filters(cfg, hydrated=True),
            scorers=[
                self.ranker_scorer,
                self.weighted,
                AuthorDiversityScorer(cfg.diversity_decay, cfg.diversity_floor),
                OutOfNetworkScorer(cfg.oon_factor),
            ],
            selector=TopKSelector(cfg.top_k),
            post_filters=[AuthorCapFilter(cfg.author_cap)],
            explorer=_explorer(cfg),
        )
        # No store needed: the popular list by popularity (the source sets each candidate's score).
        self.fallback = Pipeline(
            sources=[PopularSource(popular, cfg.popular_max_results, cfg.max_age, always=True)],
            filters=eligibility_filters(cfg, hydrated=False),
            selector=TopKSelector(cfg.top_k),
            post_filters=[AuthorCapFilter(cfg.author_cap)],
        )

    def _sources(self, popular: list[PopularPost]) -> list[Source]:
        """In-network (with a recent-post store), the two-tower's ANN, posts added live, popular (cold start only)."""
        cfg = self.cfg
        sources: list[Source] = []
        if self.recent is not None and cfg.in_network:
            sources.append(
                InNetworkSource(self.recent, cfg.max_age, cfg.in_network_per_author, cfg.in_network_max_results)
            )
        return [
            *sources,
            TwoTowerSource(self.two_tower, self.index, cfg.retrieval_max_results, self.catalog, cfg.max_age),
            self.fresh,
            PopularSource(popular, cfg.popular_max_results, cfg.max_age),
        ]

    @classmethod
    def load(
        cls, cfg: RecommenderConfig, online: OnlineFeatures | None = None, clock: Callable[[], datetime] | None = None
    ) -> PipelineRecommender:
        """Loads the models, the index and the popular / recent-post lists.

        Raises:
            UserError: a model or index directory is missing or does not fit this code, or the index was built from
                another two-tower than `retrieval_model`.
        """
        two_tower, index, ranker, version = _load_models(cfg)
        now = cfg.now_at()
        corpus = None
        if cfg.features is not None:
            corpus = post_corpus(cfg.features, None if now is None else int(now.timestamp() * 1000))
        popular = _popular_list(cfg, corpus)
        recent = None if corpus is None else recent_post_store(corpus, now or datetime.now(UTC))
        if online is None:
            online = OnlineFeatures(reopening_backend(cfg))
        if cfg.warm_posts:
            _warm(online, index.item_ids, corpus, cfg.warm_posts)
        attributes: dict[int, dict[str, Any]] = {}
        if corpus is not None:
            names = [a for a in (*ranker.cfg.candidate_attributes, *two_tower.cfg.post_attributes) if a in corpus]
            ids = corpus["post_id"].to_numpy(dtype=np.int64).tolist()
            columns = [corpus[a].tolist() for a in names]
            attributes = {p: dict(zip(names, values, strict=True)) for p, *values in zip(ids, *columns, strict=True)}
        catalog = None if corpus is None else PostCatalog.of_corpus(corpus)
        return cls(cfg, two_tower, index, ranker, online, popular, recent, version, clock, attributes, catalog)

    # The Recommender protocol -------------------------------------------------------------------------------------

    @property
    def version(self) -> str:
        return self._version

    def ready(self) -> bool:
        """Models are loaded at construction; ready when the online store could be opened."""
        backend = self.online.backend
        return backend.opened() if isinstance(backend, ReopeningBackend) else True

    def add_posts(self, posts: Sequence[RecentPost]) -> None:
        """New posts, at once: into the in-network store (their author's followers) and the fresh-post source
        (everyone, until the next index holds them). Their features are read from the online store on first use."""
        if self.recent is not None:
            self.recent.extend(posts)
        self.fresh.add(posts)
        self.online.forget_posts([p.post_id for p in posts])

    def recommend(
        self, user_id: int, k: int, seen_ids: frozenset[int] = frozenset(), surface: int = 0
    ) -> Recommendation:
        query = Query(user_id=user_id, now=self.clock(), seen_ids=frozenset(seen_ids), k=k, surface=surface)
        try:
            result = self.pipeline.run(query)
        except Exception:  # the runner fails open per component; this is a bug, still not the caller's problem
            log.exception("recommendation pipeline failed for user %s", user_id)
            return self._popular(query, [], "popular")
        hydrated = result.query
        if not hydrated.hydrated:  # the user's features could not be read: the store is down
            return self._popular(query, _stages(result), "popular")
        if not result.selected and not hydrated.cold_start:
            return self._popular(hydrated, _stages(result), "popular", degraded=result.degraded)
        logged = self.logged_inputs if self._log_draw.random() < self.cfg.log_candidate_features else ()
        return Recommendation(
            items=[_item(c, logged) for c in result.selected],
            degraded=result.degraded,
            fallback="cold_start" if hydrated.cold_start else "",
            stages=_stages(result),
            features=_user_features(hydrated),
            as_of=self._as_of(query),
        )

    def rank(self, user_id: int, post_ids: list[int], surface: int = 0) -> Recommendation:
        """Ranker predictions and the weighted blend for the given posts, in the order given (no filters, no
        diversity or out-of-network factor: those depend on the rest of a slate)."""
        ids = [int(p) for p in post_ids]
        query = Query(user_id=user_id, now=self.clock(), k=max(len(ids), 1), surface=surface)
        pipeline = Pipeline(
            query_hydrators=list(self.query_hydrators),
            sources=[GivenPostsSource(ids)],
            hydrators=[self.post_hydrator],
            scorers=[self.ranker_scorer, self.weighted],
        )
        result = pipeline.run(query)
        by_post = {c.post_id: c for c in result.selected}
        items = [_item(by_post.get(p) or Candidate(p, 0, 0, "request")) for p in ids]
        return Recommendation(
            items=items,
            degraded=result.degraded,
            # Store unreachable: the ranker scored the posts with default features.
            fallback="" if result.query.hydrated else "default_features",
            stages=_stages(result),
            features=_user_features(result.query),
            as_of=self._as_of(query),
        )

    def _popular(
        self, query: Query, stages: list[dict[str, Any]], fallback: str, degraded: bool = True
    ) -> Recommendation:
        result = self.fallback.run(query)
        return Recommendation(
            items=[_item(c) for c in result.selected],
            degraded=degraded,
            fallback=fallback,
            stages=stages + _stages(result),
            features=_user_features(query),
            as_of=self._as_of(query),
        )

    def _as_of(self, query: Query) -> datetime | None:
        return query.now if self._fixed_time else None


def _item(c: Candidate, inputs: tuple[str, ...] = ()) -> Item:
    """The response item of a candidate; with `inputs`, the candidate's hydrated values of those features (a
    feature the store did not hold is left out, as the ranker then read its default)."""
    return Item(
        post_id=c.post_id,
        author_id=c.author_id,
        score=float(c.score) if c.score is not None else 0.0,
        source=c.source,
        in_network=c.in_network,
        actions=dict(c.actions),
        propensity=c.propensity,
        inclusion=c.inclusion,
        rank=c.rank,
        features={k: _plain(c.features[k]) for k in inputs if k in c.features} if inputs else None,
    )


def _plain(value: Any) -> Any:
    """A feature value as JSON carries it (numpy scalars to Python)."""
    return value.item() if isinstance(value, np.generic) else value


def _stages(result: PipelineResult) -> list[dict[str, Any]]:
    out = []
    for s in result.stats:
        row: dict[str, Any] = {"stage": s.stage, "name": s.component, "ms": round(s.ms, 3), "in": s.count_in}
        row["out"] = s.count_out
        if s.error is not None:
            row["error"] = s.error
        out.append(row)
    return out


def _user_features(query: Query) -> dict[str, Any]:
    """What the models saw of the user: the user_stats values, the history length, how many of its events are from
    the request's own (UTC) day, and the views found missing.

    The offline history is frozen at each day boundary and serving extends it in real time (the push source), so
    `hist_live`, the events since the day began, is what the skew check adds to the offline length to know what a
    consistent service must have served (monitoring/skew.py)."""
    if not query.hydrated:
        return {}
    history = query.history or {}
    day_start_ms = int(query.now.timestamp() // 86_400) * 86_400_000
    times = history.get("hist_timestamps", ())
    return {
        **(query.user_stats or {}),
        "hist_length": len(history.get("hist_post_ids", ())),
        "hist_live": sum(1 for t in times if t is not None and int(t) >= day_start_ms),
        "n_followees": len(query.followee_ids),
        "missing_views": sorted(query.missing_views),
    }
