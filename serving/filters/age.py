"""Drops posts older than `max_age` at request time (and posts dated after it: a clock or data error)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from serving.component import Component
from serving.filters import FilterResult
from serving.types import Candidate, Query


@dataclass
class AgeFilter(Component):
    max_age: timedelta = timedelta(hours=48)  # x-algorithm MAX_POST_AGE

    def filter(self, query: Query, candidates: list[Candidate]) -> FilterResult:
        now_ms = int(query.now.timestamp() * 1000)
        oldest = now_ms - int(self.max_age.total_seconds() * 1000)
        kept = [c for c in candidates if oldest <= c.created_at_ms <= now_ms]
        kept_ids = {id(c) for c in kept}
        return FilterResult(kept, [c for c in candidates if id(c) not in kept_ids])
