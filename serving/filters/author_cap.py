"""Post-selection filter: at most `max_per_author` posts of one author in the slate (the best-ranked ones), the
x-algorithm SlateDiversity rule (<= 2 posts per author)."""

from __future__ import annotations

from dataclasses import dataclass

from serving.component import Component
from serving.filters import FilterResult
from serving.types import Candidate, Query


@dataclass
class AuthorCapFilter(Component):
    max_per_author: int = 2

    def filter(self, query: Query, candidates: list[Candidate]) -> FilterResult:
        count: dict[int, int] = {}
        kept: list[Candidate] = []
        removed: list[Candidate] = []
        for c in candidates:  # in slate order: an author's best posts come first
            n = count.get(c.author_id, 0)
            (kept if n < self.max_per_author else removed).append(c)
            count[c.author_id] = n + 1
        return FilterResult(kept, removed)
