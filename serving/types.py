"""The request and candidate types every pipeline component shares."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True)
class Query:
    """One recommendation request after query hydration.

    Attributes:
        user_id: the viewer.
        now: request time (UTC); ages are measured from it.
        followee_ids: authors the viewer follows (from the user_graph feature view).
        seen_ids: posts the client says it has shown already.
    """

    user_id: int
    now: datetime
    followee_ids: frozenset[int] = frozenset()
    blocked_author_ids: frozenset[int] = frozenset()
    muted_author_ids: frozenset[int] = frozenset()
    seen_ids: frozenset[int] = frozenset()
    k: int = 20


@dataclass
class Candidate:
    """A post on its way through the pipeline; scorers fill `score` and `actions`."""

    post_id: int
    author_id: int
    created_at_ms: int
    source: str
    in_network: bool = False
    score: float | None = None
    actions: dict[str, float] = field(default_factory=dict)
