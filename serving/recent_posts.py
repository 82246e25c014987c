"""An in-memory store of recent posts per author (the role of x-algorithm's Thunder), newest first, trimmed to a
retention window."""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass, field

RETENTION_MS = 2 * 24 * 3600 * 1000  # two days, as Thunder's default post retention


@dataclass(frozen=True, order=True)
class RecentPost:
    created_at_ms: int
    post_id: int
    author_id: int


@dataclass
class RecentPostStore:
    """Posts per author, kept sorted by creation time; `trim` drops what is older than the retention window."""

    retention_ms: int = RETENTION_MS
    _by_author: dict[int, list[RecentPost]] = field(default_factory=dict)

    def add(self, post: RecentPost) -> None:
        bisect.insort(self._by_author.setdefault(post.author_id, []), post)

    def extend(self, posts: Iterable[RecentPost]) -> None:
        for post in posts:
            self.add(post)

    def trim(self, now_ms: int) -> int:
        """Drops posts older than the retention window; returns how many were dropped."""
        cutoff, dropped = now_ms - self.retention_ms, 0
        for author in list(self._by_author):
            posts = self._by_author[author]
            keep = bisect.bisect_left(posts, RecentPost(cutoff, -1, -1))
            dropped += keep
            if keep == len(posts):
                del self._by_author[author]
            elif keep:
                del posts[:keep]
        return dropped

    def newest(self, author_id: int, since_ms: int, until_ms: int, limit: int) -> list[RecentPost]:
        """An author's posts created in [since_ms, until_ms], newest first, at most `limit`."""
        posts = self._by_author.get(author_id, [])
        lo = bisect.bisect_left(posts, RecentPost(since_ms, -1, -1))
        hi = bisect.bisect_right(posts, RecentPost(until_ms, 2**62, 2**62))
        return posts[max(lo, hi - limit) : hi][::-1]

    def __len__(self) -> int:
        return sum(len(p) for p in self._by_author.values())
