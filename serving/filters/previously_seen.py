"""Drops posts the client reports as seen (`seen_ids`) or the service has already served to this user."""

from __future__ import annotations

from dataclasses import dataclass, field

from serving.component import Component
from serving.filters import FilterResult
from serving.types import Candidate, Query


@dataclass
class PreviouslySeenFilter(Component):
    served: dict[int, set[int]] = field(default_factory=dict)  # user -> post ids served (from the exposure log)

    def filter(self, query: Query, candidates: list[Candidate]) -> FilterResult:
        seen = query.seen_ids | self.served.get(query.user_id, set())
        return FilterResult(
            [c for c in candidates if c.post_id not in seen], [c for c in candidates if c.post_id in seen]
        )
