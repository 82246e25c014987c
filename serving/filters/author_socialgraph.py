"""Drops posts by authors the viewer blocked or muted."""

from __future__ import annotations

from serving.component import Component
from serving.filters import FilterResult
from serving.types import Candidate, Query


class AuthorSocialgraphFilter(Component):
    def enabled(self, query: Query) -> bool:
        return bool(query.blocked_author_ids or query.muted_author_ids)

    def filter(self, query: Query, candidates: list[Candidate]) -> FilterResult:
        banned = query.blocked_author_ids | query.muted_author_ids
        return FilterResult(
            [c for c in candidates if c.author_id not in banned], [c for c in candidates if c.author_id in banned]
        )
