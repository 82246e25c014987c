"""Keeps the first occurrence of each post (sources may return the same post)."""

from __future__ import annotations

from serving.component import Component
from serving.filters import FilterResult
from serving.types import Candidate, Query


class DropDuplicatesFilter(Component):
    def filter(self, query: Query, candidates: list[Candidate]) -> FilterResult:
        seen: set[int] = set()
        kept: list[Candidate] = []
        removed: list[Candidate] = []
        for c in candidates:
            (removed if c.post_id in seen else kept).append(c)
            seen.add(c.post_id)
        return FilterResult(kept, removed)
