"""Out-of-network factor: posts from authors the viewer does not follow keep a fraction of their score."""

from __future__ import annotations

from dataclasses import dataclass

from serving.component import Component
from serving.types import Candidate, Query


@dataclass
class OutOfNetworkScorer(Component):
    factor: float = 0.75  # x-algorithm OonWeightFactor

    def score(self, query: Query, candidates: list[Candidate]) -> list[Candidate]:
        for c in candidates:
            if c.score is not None and not c.in_network:
                c.score *= self.factor
        return candidates
