"""Drops posts the user has seen: the client's `seen_ids`, to which the service adds what it served the user within
the fresh-feed TTL (`features.served`, read in serving/service.py before the pipeline runs)."""

from __future__ import annotations

from dataclasses import dataclass

from serving.component import Component
from serving.filters import FilterResult
from serving.types import Candidate, Query


@dataclass
class PreviouslySeenFilter(Component):
    def filter(self, query: Query, candidates: list[Candidate]) -> FilterResult:
        seen = query.seen_ids
        return FilterResult(
            [c for c in candidates if c.post_id not in seen], [c for c in candidates if c.post_id in seen]
        )
