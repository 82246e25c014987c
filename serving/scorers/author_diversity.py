"""Author diversity: the k-th post of an author down the ranking keeps (1 - floor) * decay^k + floor of its score."""

from __future__ import annotations

from dataclasses import dataclass

from serving.component import Component
from serving.types import Candidate, Query


@dataclass
class AuthorDiversityScorer(Component):
    decay: float = 0.5  # x-algorithm AuthorDiversityDecay
    floor: float = 0.25  # x-algorithm AuthorDiversityFloor: multipliers 1, 0.625, 0.4375, ... -> 0.25

    def multiplier(self, k: int) -> float:
        return (1.0 - self.floor) * self.decay**k + self.floor

    def score(self, query: Query, candidates: list[Candidate]) -> list[Candidate]:
        ranked = sorted(
            (c for c in candidates if c.score is not None),
            key=lambda c: (-c.score, c.post_id),  # type: ignore[operator]
        )
        seen: dict[int, int] = {}
        for c in ranked:
            k = seen.get(c.author_id, 0)
            c.score = c.score * self.multiplier(k)  # type: ignore[operator]
            seen[c.author_id] = k + 1
        return candidates
