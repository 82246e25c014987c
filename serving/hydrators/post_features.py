"""Candidate hydrator: post and author features of every candidate from the online store; fills the author and the
creation time of candidates whose source does not know them (ANN results carry a post id only) and marks candidates
by followed authors as in-network (x-algorithm's CoreData + InNetwork candidate hydrators)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from features.online import OnlineFeatures
from serving.component import Component
from serving.types import Candidate, Query


@dataclass
class PostFeaturesHydrator(Component):
    online: OnlineFeatures

    def hydrate(self, query: Query, candidates: list[Candidate]) -> list[Candidate]:
        if not candidates:
            return candidates
        post_ids = [c.post_id for c in candidates]
        feats = self.online.candidates(post_ids)  # authors as post_stats says
        authors = [c.author_id or int(a) for c, a in zip(candidates, feats.author_ids, strict=True)]
        if authors != feats.author_ids.tolist():  # a source knew an author the store does not (cached: cheap)
            feats = self.online.candidates(post_ids, authors)
        post_cols, author_cols = list(feats.post.items()), list(feats.author.items())
        created = feats.post.get("post_created_at_ms")
        for i, c in enumerate(candidates):
            values: dict[str, object] = {}
            if not feats.post_missing[i]:
                values.update((name, _plain(col[i])) for name, col in post_cols)
                if c.created_at_ms == 0 and created is not None:
                    c.created_at_ms = int(created[i])
            c.author_id = authors[i]
            if not feats.author_missing[i]:
                values.update((name, _plain(col[i])) for name, col in author_cols)
            c.features = {**c.features, **values}
            c.in_network = c.in_network or c.author_id in query.followee_ids
        return candidates


def _plain(value: object) -> object:
    return value.item() if isinstance(value, np.generic) else value
