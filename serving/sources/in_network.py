"""In-network source: recent posts of the authors the viewer follows, newest first, capped per author."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from serving.component import Component
from serving.recent_posts import RecentPostStore
from serving.types import Candidate, Query


@dataclass
class InNetworkSource(Component):
    """x-algorithm's Thunder source: followees' posts of the last `max_age`, newest first.

    Attributes:
        max_age: posts older than this are not fetched (Thunder keeps two days).
        per_author_cap: at most this many posts per followed author, so one prolific author cannot fill the source.
        max_results: total cap (Thunder: 1200).
        max_followees: followees scanned per request (Thunder caps the following list at 10,000).
    """

    posts: RecentPostStore
    max_age: timedelta = timedelta(hours=48)
    per_author_cap: int = 50
    max_results: int = 1200
    max_followees: int = 10_000

    def enabled(self, query: Query) -> bool:
        return bool(query.followee_ids)

    def fetch(self, query: Query) -> list[Candidate]:
        now_ms = int(query.now.timestamp() * 1000)
        since_ms = now_ms - int(self.max_age.total_seconds() * 1000)
        found = []
        for author in sorted(query.followee_ids)[: self.max_followees]:
            found += self.posts.newest(author, since_ms, now_ms, self.per_author_cap)
        found.sort(key=lambda p: (p.created_at_ms, p.post_id), reverse=True)
        return [
            Candidate(
                post_id=p.post_id,
                author_id=p.author_id,
                created_at_ms=p.created_at_ms,
                source=self.name,
                in_network=True,
            )
            for p in found[: self.max_results]
        ]
