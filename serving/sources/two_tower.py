"""Out-of-network source (x-algorithm's Phoenix retrieval): the two-tower user tower embeds the viewer, the ANN
index returns the nearest `max_results` posts. With a `PostCatalog` the source knows each post's author and creation
time: a post already older than `max_age` (or dated after the request) is dropped here, before the post hydrator
reads its features only for the age filter to drop it (on the small world most of an index's posts are past 48 h:
of 1,000 fetched, ~470 survive), and the rest carry their author and time; posts the catalogue lacks carry the
post id only and the post hydrator adds the rest."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import pandas as pd

from models.retrieval.index import AnnIndex
from models.retrieval.model import TwoTower
from serving.component import Component
from serving.inputs import user_inputs
from serving.types import Candidate, Query


@dataclass(frozen=True)
class PostCatalog:
    """Author and creation time of the posts a corpus knows, as sorted arrays: one vectorised lookup per request."""

    post_ids: np.ndarray  # (N,) int64, sorted
    author_ids: np.ndarray  # (N,) int64
    created_ms: np.ndarray  # (N,) int64

    @classmethod
    def of_corpus(cls, corpus: pd.DataFrame) -> PostCatalog:
        """From `models.retrieval.job.post_corpus` (post_id, author_id, post_created_at_ms); posts without a known
        creation time are left out."""
        known = corpus[corpus["post_created_at_ms"].notna()]
        post_ids = known["post_id"].to_numpy(np.int64)
        order = np.argsort(post_ids, kind="stable")
        authors, created = (known[c].to_numpy(np.int64)[order] for c in ("author_id", "post_created_at_ms"))
        return cls(post_ids[order], authors, created)

    def lookup(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(found, author_id, created_ms) for each id; author and time are 0 where not found."""
        if len(self.post_ids) == 0:
            zeros = np.zeros(len(ids), dtype=np.int64)
            return np.zeros(len(ids), dtype=bool), zeros, zeros
        at = np.minimum(np.searchsorted(self.post_ids, ids), len(self.post_ids) - 1)
        found = self.post_ids[at] == ids
        return found, np.where(found, self.author_ids[at], 0), np.where(found, self.created_ms[at], 0)


@dataclass
class TwoTowerSource(Component):
    """Attributes:
    model: the loaded two-tower (eval mode).
    index: the ANN index over its candidate-tower embeddings.
    max_results: posts fetched per request (x-algorithm PhoenixMaxResults: 1000).
    catalog: author and creation time of the indexed posts; None = candidates carry the post id only.
    max_age: with `catalog`, posts older than this at request time are dropped (the age filter's rule).
    """

    model: TwoTower
    index: AnnIndex
    max_results: int = 500
    catalog: PostCatalog | None = None
    max_age: timedelta | None = None

    def enabled(self, query: Query) -> bool:
        # An unknown user has nothing to embed but hashed ids: the popular source serves them instead.
        return query.hydrated and not query.cold_start

    def embed(self, query: Query) -> np.ndarray:
        """(1, D) the viewer's unit-norm embedding (what the index is searched with): `TwoTower.embed_users`, the
        inference path of `user_embedding` (the same embedding up to float rounding)."""
        user = user_inputs(query, self.model.cfg)
        return self.model.embed_users(user).float().cpu().numpy()

    def fetch(self, query: Query) -> list[Candidate]:
        found, _ = self.index.search(self.embed(query), self.max_results)
        ids = found[0][found[0] >= 0].astype(np.int64, copy=False)
        source = self.name
        if self.catalog is None:
            return [Candidate(post_id=p, author_id=0, created_at_ms=0, source=source) for p in ids.tolist()]
        known, authors, created = self.catalog.lookup(ids)
        if self.max_age is not None:  # the age filter's rule, on the posts whose time is known
            now_ms = int(query.now.timestamp() * 1000)
            oldest = now_ms - int(self.max_age.total_seconds() * 1000)
            keep = ~known | ((created >= oldest) & (created <= now_ms))
            ids, authors, created = ids[keep], authors[keep], created[keep]
        return [
            Candidate(post_id=p, author_id=a, created_at_ms=t, source=source)
            for p, a, t in zip(ids.tolist(), authors.tolist(), created.tolist(), strict=True)
        ]
