"""`PopularRecommender`: the same most-popular slate for everyone; a baseline A/B variant and the service's last resort.

It needs nothing but a popularity table held in memory, so it cannot fail on a store or a model: the service answers
with it (degraded) when a variant raises.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from core.actions import POSITIVE_ACTIONS
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

        path = Path(path)
        if not path.is_file():
            raise UserError(f"{path}: no such parquet file (popular recommender stats)")
        con = duckdb.connect()
        try:
            columns = {row[0] for row in con.execute("DESCRIBE SELECT * FROM read_parquet(?)", [str(path)]).fetchall()}
            if {"post_id", "author_id", "score"} <= columns:
                query = "SELECT post_id, author_id, score FROM read_parquet(?) ORDER BY score DESC, post_id LIMIT ?"
            elif {"post_id", "post_author_id", "event_timestamp"} <= columns:
                counts = [f"post_{a}_count" for a in POSITIVE_ACTIONS if f"post_{a}_count" in columns]
                total = " + ".join(f"coalesce({c}, 0)" for c in counts) or "0"
                query = (
                    f"SELECT post_id, arg_max(post_author_id, event_timestamp) AS author_id, "
                    f"arg_max({total}, event_timestamp) AS score FROM read_parquet(?) GROUP BY post_id "
                    f"ORDER BY score DESC, post_id LIMIT ?"
                )
            else:
                raise UserError(
                    f"{path}: expected columns (post_id, author_id, score) or the post_stats view "
                    f"(post_id, post_author_id, event_timestamp, post_<action>_count)"
                )
            rows = con.execute(query, [str(path), limit]).fetchall()
        finally:
            con.close()
        return cls({int(p): (int(a or 0), float(s or 0.0)) for p, a, s in rows}, version=f"popular:{path.name}")

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
