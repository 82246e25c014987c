"""`RecommenderConfig`: one served variant's configuration (model directories, stores, blend weights and pipeline
parameters), checked at load so a bad value is one line naming `recommender.<field>` and never a request error.
serving/recommender_pipeline.py assembles and runs the pipeline it describes."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, ValidationError, ValidationInfo, field_validator

from core.config import FilePath, Items, StrictConfig
from core.errors import UserError, config_error
from core.io import parse_iso, read_yaml
from core.online_store import REDIS_ADDRESS, check_store
from features.windows import AS_OF_DATA, features_end
from serving.scorers.weighted import ScoringWeights

WHERE = "recommender"  # every message names recommender.<field>
Positive = Annotated[int, Field(ge=1)]
Share = Annotated[float, Field(ge=0.0, le=1.0)]


class RecommenderConfig(StrictConfig):
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

    retrieval_model: FilePath
    index: FilePath
    ranker: FilePath
    features: FilePath | None = None
    online_store: str = "sqlite"
    sqlite_path: FilePath | None = None
    redis: str = REDIS_ADDRESS
    as_of: str | None = None
    weights: dict[str, float] | None = None
    retrieval_max_results: Positive = 500
    in_network: bool = True
    in_network_max_results: Positive = 1200
    in_network_per_author: Positive = 50
    popular_max_results: Annotated[int, Field(ge=0)] = 200
    popular_posts: Items[int] = ()
    fresh_max_results: Positive = 100
    max_age_hours: Annotated[float, Field(gt=0)] = 48.0
    top_k: Positive = 50
    author_cap: Positive = 2
    diversity_decay: Annotated[float, Field(gt=0.0, le=1.0)] = 0.5
    diversity_floor: Share = 0.25
    oon_factor: Share = 0.75
    warm_posts: Annotated[int, Field(ge=0)] = (
        200_000  # ~20 s and ~250 MB per million posts: the small world's 100k in ~1 s
    )
    device: str = "cpu"
    explore_temperature: Annotated[float, Field(ge=0.0, allow_inf_nan=False)] = 0.0
    explore_samples: Positive = 2000
    explore_seed: int | None = None
    explore_slots: Annotated[int, Field(ge=0)] = 0
    log_candidate_features: Share = 0.0  # a share of requests
    log_seed: int | None = None

    def __init__(self, **values: Any) -> None:
        """Checks every value; the first bad one is a one-line UserError "recommender.<field>: <why>"."""
        try:
            super().__init__(**values)
        except ValidationError as err:
            raise config_error(WHERE, err, nested=True) from None

    @field_validator("online_store")
    @classmethod
    def _store(cls, value: str) -> str:
        try:
            check_store(value, f"{WHERE}.online_store")
        except UserError as err:
            raise ValueError(str(err).removeprefix(f"{WHERE}.online_store: ")) from None
        return value

    @field_validator("as_of")
    @classmethod
    def _as_of(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value == AS_OF_DATA:
            if info.data.get("features") is None:
                raise ValueError(f"{AS_OF_DATA!r} needs recommender.features (the snapshot it reads)")
        elif value is not None:
            try:
                parse_iso(value, f"{WHERE}.as_of")  # a bad time is a load error, not a request error
            except UserError as err:
                raise ValueError(str(err).removeprefix(f"{WHERE}.as_of: ")) from None
        return value

    @field_validator("weights")
    @classmethod
    def _weights(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        if value is not None:
            try:
                ScoringWeights(dict(value))  # names and signs, by the task table's rule
            except UserError as err:
                raise ValueError(str(err)) from None
        return value

    @field_validator("explore_slots")
    @classmethod
    def _one_explorer(cls, value: int, info: ValidationInfo) -> int:
        if value and info.data.get("explore_temperature", 0.0) > 0:
            raise ValueError("give either explore_slots or explore_temperature, not both")
        return value

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RecommenderConfig:
        """From a parsed JSON/YAML mapping; an unknown key or a wrong type is a UserError naming it."""
        return cls(**values)

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
            assert self.features is not None  # checked by _as_of
            return features_end(self.features)
        return parse_iso(self.as_of, "recommender.as_of")

    @property
    def max_age(self) -> timedelta:
        return timedelta(hours=self.max_age_hours)
