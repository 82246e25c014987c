"""`PopularRecommender`: the same most-popular slate for everyone; a baseline A/B variant and the service's last resort.

It needs nothing but a popularity table held in memory, so it cannot fail on a store or a model: the service answers
with it (degraded) when a variant raises.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from core.errors import UserError
from serving.recommender import Item, Recommendation


class PopularRecommender:
    """Ranks posts by a fixed popularity score.

    Args:
        table: post_id -> (author_id, score); higher scores first, lower post ids first on ties (stable slates).
        version: reported in responses and the exposure log.
    """

    source = "popular"

    def __init__(self, table: Mapping[int, tuple[int, float]], version: str = "popular") -> None:
        self._table = {int(p): (int(a), float(s)) for p, (a, s) in table.items()}
        self._ranked = sorted(self._table, key=lambda p: (-self._table[p][1], p))
        self._version = version

    @classmethod
    def from_parquet(cls, path: Path, limit: int = 5_000) -> PopularRecommender:
        """Loads the `limit` most popular posts from a parquet file.

        Two layouts are read: (post_id, author_id, score), or the offline `post_stats` view (snapshots per post:
        the newest snapshot's sum of positive-action counts is the score, its post_author_id the author).
        """
        import duckdb

        from serving.sources.popular import popular_posts

        path = Path(path)
        if not path.is_file():
            raise UserError(f"{path}: no such parquet file (popular recommender stats)")
        con = duckdb.connect()
        try:
            columns = {row[0] for row in con.execute("DESCRIBE SELECT * FROM read_parquet(?)", [str(path)]).fetchall()}
            if {"post_id", "author_id", "score"} <= columns:
                query = "SELECT post_id, author_id, score FROM read_parquet(?) ORDER BY score DESC, post_id LIMIT ?"
                rows = con.execute(query, [str(path), limit]).fetchall()
                table = {int(p): (int(a or 0), float(s or 0.0)) for p, a, s in rows}
            elif {"post_id", "post_author_id", "event_timestamp"} <= columns:
                newest = con.execute(  # each post's newest snapshot: its author and counts
                    "SELECT * EXCLUDE (rn) FROM (SELECT post_id, post_author_id, COLUMNS('^post_.*_count$'), "
                    "row_number() OVER (PARTITION BY post_id ORDER BY event_timestamp DESC) AS rn "
                    "FROM read_parquet(?)) WHERE rn = 1 ORDER BY post_id",
                    [str(path)],
                ).df()
                # Ranked by the popular source's own rule. Without creation times (this slate has no notion of
                # freshness), ties keep the post-id order, as the table's own order does.
                corpus = newest.rename(columns={"post_author_id": "author_id"}).fillna({"author_id": 0})
                ranked = popular_posts(corpus.assign(post_created_at_ms=0), limit)
                table = {p.post_id: (p.author_id, p.engagement) for p in ranked}
            else:
                raise UserError(
                    f"{path}: expected columns (post_id, author_id, score) or the post_stats view "
                    f"(post_id, post_author_id, event_timestamp, post_<action>_count)"
                )
        finally:
            con.close()
        return cls(table, version=f"popular:{path.name}")

    @property
    def version(self) -> str:
        return self._version

    def ready(self) -> bool:
        return True

    def recommend(
        self, user_id: int, k: int, seen_ids: frozenset[int] = frozenset(), surface: int = 0
    ) -> Recommendation:
        items: list[Item] = []
        for post_id in self._ranked:
            if len(items) == k:
                break
            if post_id in seen_ids:
                continue
            author_id, score = self._table[post_id]
            if author_id == user_id:  # never recommend users their own posts
                continue
            items.append(Item(post_id, author_id, score, source=self.source, actions={}))
        return Recommendation(items=items)

    def rank(self, user_id: int, post_ids: list[int], surface: int = 0) -> Recommendation:
        """Posts the table does not know score 0 and have author 0 (unknown)."""
        items = []
        for post_id in post_ids:
            author_id, score = self._table.get(post_id, (0, 0.0))
            items.append(Item(post_id, author_id, score, source=self.source, actions={}))
        return Recommendation(items=items)
