"""Top-K selector: highest score first; a missing or non-finite score ranks last so it cannot take a slot."""

from __future__ import annotations

import math
from dataclasses import dataclass

from serving.component import Component
from serving.types import Candidate, Query


@dataclass
class TopKSelector(Component):
    k: int = 50  # x-algorithm TOP_K_CANDIDATES_TO_SELECT; the response is cut to query.k afterwards

    def select(self, query: Query, candidates: list[Candidate]) -> list[Candidate]:
        def key(c: Candidate) -> tuple[float, int]:
            s = c.score if c.score is not None and math.isfinite(c.score) else -math.inf
            return (-s, c.post_id)  # ties broken by id: the same request gives the same slate

        return sorted(candidates, key=key)[: self.k]
