"""Fresh-post source: posts created after the ANN index was built (arriving through POST /events), for every viewer.

The two-tower index is rebuilt by the daily pipeline, so a post newer than the index is not retrievable out of
network until then; this source offers the newest such posts (within `max_age`, at most `max_results`) to every
request, and the ranker decides. A post reaches it the moment it is added and leaves it when it is older than
`max_age` (or when `capacity` newer posts have arrived).
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import timedelta

from serving.component import Component
from serving.recent_posts import RecentPost
from serving.types import Candidate, Query


@dataclass
class FreshSource(Component):
    max_age: timedelta = timedelta(hours=48)
    max_results: int = 100
    capacity: int = 100_000
    _posts: list[RecentPost] = field(default_factory=list)  # oldest first
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, posts: Iterable[RecentPost]) -> None:
        with self._lock:
            for post in posts:
                bisect.insort(self._posts, post)
            if len(self._posts) > self.capacity:
                del self._posts[: len(self._posts) - self.capacity]

    def enabled(self, query: Query) -> bool:
        return bool(self._posts)

    def fetch(self, query: Query) -> list[Candidate]:
        now_ms = int(query.now.timestamp() * 1000)
        since_ms = now_ms - int(self.max_age.total_seconds() * 1000)
        with self._lock:
            lo = bisect.bisect_left(self._posts, RecentPost(since_ms, -1, -1))
            hi = bisect.bisect_right(self._posts, RecentPost(now_ms, 2**62, 2**62))
            found = self._posts[max(lo, hi - self.max_results) : hi][::-1]
        return [
            Candidate(
                post_id=p.post_id,
                author_id=p.author_id,
                created_at_ms=p.created_at_ms,
                source=self.name,
                in_network=p.author_id in query.followee_ids,
            )
            for p in found
        ]

    def __len__(self) -> int:
        return len(self._posts)
