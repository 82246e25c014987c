"""`RecommenderConfig`: one served variant's configuration (model directories, stores, blend weights and pipeline
parameters), checked at load so a bad value is one line naming `recommender.<field>` and never a request error.
serving/recommender_pipeline.py assembles and runs the pipeline it describes."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from core.errors import UserError
from core.io import parse_iso, read_yaml
from core.online_store import REDIS_ADDRESS, check_store
from features.windows import AS_OF_DATA, features_end
from serving.scorers.weighted import ScoringWeights


@dataclass(frozen=True)
class RecommenderConfig:
    """One variant: model directories, the stores, blend weights and pipeline parameters.

    Attributes:
        retrieval_model: saved two-tower directory (artifacts/retrieval/best).
        index: ANN index directory built from that model (artifacts/index).
        ranker: saved ranker directory (artifacts/ranker/best).
        features: offline feature directory (post_stats): the popular list and the in-network recent posts are
            loaded from it as of `as_of`; None = no popular/in-network sources (unless popular_posts is given).
        online_store: "sqlite" or "redis"; sqlite_path (default data/feast/online.db) or redis ("host:port").
        as_of: ISO time taken as "now" (a simulated or replayed world); "data" = the end of the newest day of the
            data `features` was built from, read at load (features.windows.features_end); None = the wall clock.
        weights: signed blend weights per action (None = the x-algorithm defaults of ScoringWeights).
        retrieval_max_results: posts the ANN source fetches (x-algorithm: 1000).
        in_network, in_network_max_results, in_network_per_author: the in-network source (Thunder: 1200, 50).
        popular_max_results: posts the popular source returns; popular_posts: a popularity list given at load
            (post ids, most popular first) instead of the one ranked from `features`.
        fresh_max_results: posts added live (`add_posts`) the fresh-post source offers every request, newest first.
        max_age_hours: posts older than this are filtered (x-algorithm MAX_POST_AGE: 48 h).
        top_k: candidates kept by the selector before post-selection filters (x-algorithm: 50).
        author_cap: at most this many posts per author in a slate.
        diversity_decay, diversity_floor: author diversity (x-algorithm 0.5, 0.25).
        oon_factor: out-of-network score factor (x-algorithm 0.75).
        warm_posts: at load, read this many posts' features (the newest of the ANN corpus) into the in-process
            cache, so requests do not pay a cold online-store read per candidate; 0 = off.
        device: torch device of the models.
        explore_temperature: > 0 draws the slate from the ranked pool at random (Plackett-Luce over the standardised
            final scores at this temperature, serving/selectors/explore.py) and logs each item's propensity; 0 (the
            default) serves the ranked order. explore_samples: draws that estimate the propensities;
            explore_seed: fixes the draws (simulations, tests), None = fresh entropy per request.
        explore_slots: > 0 serves the ranked order but the last this many slots of each slate, drawn uniformly from
            the rest of the ranked pool (serving/selectors/explore.SlotExplorer: epsilon slots, propensities logged),
            so the log keeps showing how users take what the ranker under-rates; 0 (the default) = off.
        log_candidate_features: the share of requests whose served items carry the candidate inputs the ranker read
            (its dense post_*/author_* features, its post attributes and post_author_id, as hydrated) into the
            exposure log, so the train/serve skew check covers them (monitoring/skew.py); 0 = never, 1 = always.
        log_seed: fixes which requests are sampled (tests); None = fresh entropy.
    """

    retrieval_model: Path
    index: Path
    ranker: Path
    features: Path | None = None
    online_store: str = "sqlite"
    sqlite_path: Path | None = None
    redis: str = REDIS_ADDRESS
    as_of: str | None = None
    weights: dict[str, float] | None = None
    retrieval_max_results: int = 500
    in_network: bool = True
    in_network_max_results: int = 1200
    in_network_per_author: int = 50
    popular_max_results: int = 200
    popular_posts: tuple[int, ...] = ()
    fresh_max_results: int = 100
    max_age_hours: float = 48.0
    top_k: int = 50
    author_cap: int = 2
    diversity_decay: float = 0.5
    diversity_floor: float = 0.25
    oon_factor: float = 0.75
    warm_posts: int = 200_000  # ~20 s and ~250 MB per million posts: the small world's 100k load in about 1 s
    device: str = "cpu"
    explore_temperature: float = 0.0
    explore_samples: int = 2000
    explore_seed: int | None = None
    explore_slots: int = 0
    log_candidate_features: float = 0.0
    log_seed: int | None = None

    def __post_init__(self) -> None:
        for name in ("retrieval_model", "index", "ranker", "features", "sqlite_path"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, Path(value))
        object.__setattr__(self, "popular_posts", tuple(int(p) for p in self.popular_posts))
        check_store(self.online_store, "recommender.online_store")
        positive = (
            "retrieval_max_results",
            "in_network_max_results",
            "in_network_per_author",
            "fresh_max_results",
            "top_k",
            "author_cap",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise UserError(f"recommender.{name}: must be >= 1, got {getattr(self, name)}")
        if self.warm_posts < 0:
            raise UserError(f"recommender.warm_posts: must be >= 0, got {self.warm_posts}")
        if self.popular_max_results < 0 or self.max_age_hours <= 0:
            raise UserError("recommender.popular_max_results must be >= 0 and max_age_hours > 0")
        if not 0.0 < self.diversity_decay <= 1.0 or not 0.0 <= self.diversity_floor <= 1.0:
            raise UserError("recommender.diversity_decay must be in (0, 1] and diversity_floor in [0, 1]")
        if not 0.0 <= self.oon_factor <= 1.0:
            raise UserError(f"recommender.oon_factor: must be in [0, 1], got {self.oon_factor}")
        if not (self.explore_temperature >= 0 and math.isfinite(self.explore_temperature)):
            raise UserError(f"recommender.explore_temperature: must be >= 0 (0 = off), got {self.explore_temperature}")
        if self.explore_samples < 1:
            raise UserError(f"recommender.explore_samples: must be >= 1, got {self.explore_samples}")
        if self.explore_slots < 0:
            raise UserError(f"recommender.explore_slots: must be >= 0 (0 = off), got {self.explore_slots}")
        if self.explore_slots and self.explore_temperature > 0:
            raise UserError("recommender.explore_slots: give either explore_slots or explore_temperature, not both")
        if not 0.0 <= self.log_candidate_features <= 1.0:
            raise UserError(
                f"recommender.log_candidate_features: must be in [0, 1] (a share of requests), got "
                f"{self.log_candidate_features}"
            )
        if self.as_of == AS_OF_DATA:
            if self.features is None:
                raise UserError(f"recommender.as_of: {AS_OF_DATA!r} needs recommender.features (the snapshot it reads)")
        elif self.as_of is not None:
            self.now_at()  # a bad time is a load error, not a request error
        if self.weights is not None:
            ScoringWeights(dict(self.weights))  # checks names and signs at load

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RecommenderConfig:
        """From a parsed JSON/YAML mapping; an unknown key or a wrong type is a UserError naming it."""
        from models.config_overrides import coerce

        known = {f.name for f in fields(cls)}
        missing = [n for n in ("retrieval_model", "index", "ranker") if n not in values]
        if missing:
            raise UserError(f"recommender: missing {', '.join(missing)}")
        unknown = sorted(set(values) - known)
        if unknown:
            raise UserError(f"recommender.{unknown[0]}: unknown config key (known: {', '.join(sorted(known))})")
        return cls(**coerce(cls, values, prefix="recommender"))

    @classmethod
    def from_file(cls, path: Path) -> RecommenderConfig:
        body = read_yaml(Path(path), "the recommender config")
        if not isinstance(body, dict):
            raise UserError(f"{path}: the recommender config must be a mapping")
        return cls.from_dict(body)

    def now_at(self) -> datetime | None:
        if self.as_of is None:
            return None
        if self.as_of == AS_OF_DATA:
            assert self.features is not None  # __post_init__
            return features_end(self.features)
        return parse_iso(self.as_of, "recommender.as_of")

    @property
    def max_age(self) -> timedelta:
        return timedelta(hours=self.max_age_hours)
