"""Drops the viewer's own posts."""

from __future__ import annotations

from serving.component import Component
from serving.filters import FilterResult
from serving.types import Candidate, Query


class SelfPostFilter(Component):
    def filter(self, query: Query, candidates: list[Candidate]) -> FilterResult:
        kept = [c for c in candidates if c.author_id != query.user_id]
        removed = [c for c in candidates if c.author_id == query.user_id]
        return FilterResult(kept, removed)
