"""Candidate hydrator: post and author features of every candidate from the online store; fills the author and the
creation time of candidates whose source does not know them (ANN results carry a post id only) and marks candidates
by followed authors as in-network (x-algorithm's CoreData + InNetwork candidate hydrators)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np

from features.online import OnlineFeatures
from serving.component import Component
from serving.types import Candidate, Query


class FeatureTable:
    """The post and author feature columns of one hydration call (C candidates), with which rows the store held."""

    def __init__(
        self,
        post: dict[str, np.ndarray],
        author: dict[str, np.ndarray],
        post_missing: np.ndarray,
        author_missing: np.ndarray,
    ) -> None:
        self.columns = {**post, **author}
        self.present = {name: ~post_missing for name in post} | {name: ~author_missing for name in author}

    @classmethod
    def of_columns(cls, columns: dict[str, np.ndarray], present: dict[str, np.ndarray]) -> FeatureTable:
        """A table of given columns, each with its own (C,) bool mask of the rows that hold a value."""
        table = cls.__new__(cls)
        table.columns, table.present = dict(columns), dict(present)
        return table

    def has(self, name: str, row: int) -> bool:
        return name in self.columns and bool(self.present[name][row])

    def column(self, name: str) -> tuple[np.ndarray, np.ndarray] | None:
        """(values (C,), present (C,) bool) of one feature; None when the store has no such feature."""
        if name not in self.columns:
            return None
        return self.columns[name], self.present[name]


class FeatureRow(Mapping[str, object]):
    """One candidate's features: a read-only view of its row of a `FeatureTable` (features the store did not hold
    for it are absent), over any features the candidate had before hydration. Building a dict per candidate cost
    more than the ranker itself; scorers read the shared columns instead (`serving.scorers.ranker`)."""

    __slots__ = ("table", "row", "extra")

    def __init__(self, table: FeatureTable, row: int, extra: Mapping[str, object] | None = None) -> None:
        self.table, self.row, self.extra = table, row, dict(extra or {})

    def __getitem__(self, name: str) -> object:
        if self.table.has(name, self.row):
            return _plain(self.table.columns[name][self.row])
        return self.extra[name]

    def __iter__(self) -> Iterator[str]:
        yield from (n for n in self.table.columns if self.table.has(n, self.row))
        yield from (n for n in self.extra if not self.table.has(n, self.row))

    def __len__(self) -> int:
        return sum(1 for _ in self)


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
        table = FeatureTable(feats.post, feats.author, feats.post_missing, feats.author_missing)
        created = feats.post.get("post_created_at_ms")
        for i, c in enumerate(candidates):
            if not feats.post_missing[i] and c.created_at_ms == 0 and created is not None:
                c.created_at_ms = int(created[i])
            c.author_id = authors[i]
            c.features = FeatureRow(table, i, c.features)
            c.in_network = c.in_network or c.author_id in query.followee_ids
        return candidates


def _plain(value: object) -> object:
    return value.item() if isinstance(value, np.generic) else value
