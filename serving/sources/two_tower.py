"""Out-of-network source (x-algorithm's Phoenix retrieval): the two-tower user tower embeds the viewer, the ANN
index returns the nearest `max_results` posts. Candidates carry the post id only; the post hydrator adds the rest."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.retrieval.index import AnnIndex
from models.retrieval.model import TwoTower
from serving.component import Component
from serving.inputs import user_inputs
from serving.types import Candidate, Query


@dataclass
class TwoTowerSource(Component):
    """Attributes:
    model: the loaded two-tower (eval mode).
    index: the ANN index over its candidate-tower embeddings.
    max_results: posts fetched per request (x-algorithm PhoenixMaxResults: 1000).
    """

    model: TwoTower
    index: AnnIndex
    max_results: int = 500

    def enabled(self, query: Query) -> bool:
        # An unknown user has nothing to embed but hashed ids: the popular source serves them instead.
        return query.hydrated and not query.cold_start

    def embed(self, query: Query) -> np.ndarray:
        """(1, D) the viewer's unit-norm embedding (what the index is searched with): `TwoTower.embed_users`, the
        inference path of `user_embedding` (the same embedding up to float rounding)."""
        user = user_inputs(query, self.model.cfg)
        return self.model.embed_users(user).float().cpu().numpy()

    def fetch(self, query: Query) -> list[Candidate]:
        ids, _ = self.index.search(self.embed(query), self.max_results)
        source = self.name
        return [Candidate(post_id=p, author_id=0, created_at_ms=0, source=source) for p in ids[0].tolist() if p >= 0]
