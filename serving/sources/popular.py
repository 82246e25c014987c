"""Popular/fresh source: the most-engaged recent posts, for users the system knows nothing about (cold start) and
as the fallback slate when the feature store is unreachable (it needs no store: the list is loaded up front).

The list is the post corpus as of a time (the offline post_stats, `models.retrieval.job.post_corpus`) ranked by
engagement, or a list given at load. At request time only posts of the last `max_age` count; newer posts win ties.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

import numpy as np
import pandas as pd

from core.actions import POSITIVE_ACTIONS
from serving.component import Component
from serving.types import Candidate, Query


@dataclass(frozen=True)
class PopularPost:
    post_id: int
    author_id: int
    created_at_ms: int
    engagement: float  # positive engagements so far (the popularity score)


def popular_posts(corpus: pd.DataFrame, limit: int = 5_000) -> list[PopularPost]:
    """The `limit` most-engaged posts of a post corpus (post_id, author_id, post_created_at_ms, post_<action>_count),
    most engaged first, newer first on ties."""
    counts = [f"post_{a}_count" for a in POSITIVE_ACTIONS if f"post_{a}_count" in corpus.columns]
    engagement = corpus[counts].fillna(0).to_numpy(dtype=np.float64).sum(1) if counts else np.zeros(len(corpus))
    created = corpus["post_created_at_ms"].fillna(0).to_numpy(dtype=np.int64)
    order = np.lexsort((-created, -engagement))[:limit]
    post_ids, authors = corpus["post_id"].to_numpy(np.int64), corpus["author_id"].to_numpy(np.int64)
    return [PopularPost(int(post_ids[i]), int(authors[i]), int(created[i]), float(engagement[i])) for i in order]


@dataclass
class PopularSource(Component):
    """Attributes:
    posts: candidates, most engaged first (`popular_posts`, or a list given at load; created_at_ms 0 = unknown,
        never skipped for age here).
    max_results: posts returned per request.
    max_age: posts older than this at request time are skipped (fresh first).
    always: enabled for every query (the fallback pipeline); otherwise only for cold-start users.
    """

    posts: list[PopularPost] = field(default_factory=list)
    max_results: int = 200
    max_age: timedelta = timedelta(hours=48)
    always: bool = False

    def enabled(self, query: Query) -> bool:
        return self.always or query.cold_start

    def fetch(self, query: Query) -> list[Candidate]:
        now_ms = int(query.now.timestamp() * 1000)
        oldest = now_ms - int(self.max_age.total_seconds() * 1000)
        out: list[Candidate] = []
        for p in self.posts:
            if p.created_at_ms == 0 or oldest <= p.created_at_ms <= now_ms:  # 0: unknown (a list given at load)
                # The popularity is the candidate's score until a scorer replaces it (the fallback has no ranker).
                out.append(Candidate(p.post_id, p.author_id, p.created_at_ms, self.name, score=p.engagement))
                if len(out) >= self.max_results:
                    break
        return out
