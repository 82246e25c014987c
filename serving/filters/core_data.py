"""Drops candidates the post hydrator could not resolve: no author (x-algorithm's CoreDataHydrationFilter), i.e. an
ANN result the online store holds no post row for."""

from __future__ import annotations

from serving.component import Component
from serving.filters import FilterResult
from serving.types import Candidate, Query


class CoreDataFilter(Component):
    def filter(self, query: Query, candidates: list[Candidate]) -> FilterResult:
        return FilterResult([c for c in candidates if c.author_id > 0], [c for c in candidates if c.author_id <= 0])
