"""The contract between the recommendation pipeline and the HTTP service: what a variant of the recommender answers.

A `Recommender` is one loaded variant (model versions + blend weights + pipeline parameters). The service
(`serving/service.py`) holds one per A/B variant, swaps them atomically, and never reaches inside: it calls
`recommend` / `rank` and turns the results into JSON, exposure records and metrics.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol


@dataclass(frozen=True)
class Item:
    """One post of a response, with the per-action probabilities the ranker gave it (empty when unranked)."""

    post_id: int
    author_id: int
    score: float
    source: str = ""
    in_network: bool = False
    actions: dict[str, float] = field(default_factory=dict)
    # A randomised slate's P(this post in this slot) and P(in the slate) (serving/selectors/explore.py); None when
    # the slate is deterministic.
    propensity: float | None = None
    inclusion: float | None = None
    rank: int | None = None  # with a propensity: the post's place in the ranked order it was drawn from
    # On a sampled request (RecommenderConfig.log_candidate_features): the candidate inputs the ranker read.
    features: dict[str, Any] | None = None


@dataclass(frozen=True)
class Recommendation:
    """A response plus what the service logs about it.

    Attributes:
        items: the slate, best first (at most k).
        degraded: the answer came from a fallback (feature store unreachable, model failure) rather than the full
            pipeline; the response says so and the service counts it.
        fallback: which fallback answered ("" for the full pipeline): "cold_start", "popular", "previous_model".
        stages: per-stage timing and counts, e.g. [{"stage": "filter", "name": "AgeFilter", "ms": 0.1, "in": 500,
            "out": 480}] (the pipeline runner's StageStat as dicts), for /metrics.
        features: the feature values used for the user (for the exposure log and train/serve skew checks).
        as_of: the time the recommender took as "now" when that is not the wall clock (a fixed-time or simulated
            world: RecommenderConfig.as_of, a simulation's clock); None when it served at the wall clock. The
            exposure log records it, so what was served becomes impressions at the time it was served for.
    """

    items: list[Item]
    degraded: bool = False
    fallback: str = ""
    stages: list[dict[str, Any]] = field(default_factory=list)
    features: dict[str, Any] = field(default_factory=dict)
    as_of: datetime | None = None


class Recommender(Protocol):
    """One loaded variant of the recommender."""

    @property
    def version(self) -> str:
        """Identifies the models and parameters (e.g. "retrieval:<hash>+ranker:<hash>"), for logs and lineage."""
        ...

    def ready(self) -> bool:
        """Models and stores loaded (GET /readyz)."""
        ...

    def recommend(
        self, user_id: int, k: int, seen_ids: frozenset[int] = frozenset(), surface: int = 0
    ) -> Recommendation:
        """The top-k slate for a user. Never raises for an unknown user or an unreachable store: it falls back."""
        ...

    def rank(self, user_id: int, post_ids: list[int], surface: int = 0) -> Recommendation:
        """Scores the given posts for the user; items in the order given (post ids unknown to the stores are scored
        with default features)."""
        ...
