"""The request and candidate types every pipeline component shares."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Query:
    """One recommendation request after query hydration.

    Attributes:
        user_id: the viewer.
        now: request time (UTC); ages are measured from it.
        followee_ids: authors the viewer follows (from the user_graph feature view).
        seen_ids: posts the client says it has shown already.
        surface: where the slate will be shown (core.schema surfaces); the ranker's candidate surface.
        user_stats: the user_stats feature values (catalog names); None until a query hydrator has read them.
        history: the user_history arrays (hist_post_ids, ..., oldest first) plus `hist_<attribute>` tuples aligned
            with hist_post_ids (the history posts' topic/media, None where unknown); None until hydrated.
        missing_views: feature views the store had no row for (their values are defaults).
    """

    user_id: int
    now: datetime
    followee_ids: frozenset[int] = frozenset()
    blocked_author_ids: frozenset[int] = frozenset()
    muted_author_ids: frozenset[int] = frozenset()
    seen_ids: frozenset[int] = frozenset()
    k: int = 20
    surface: int = 0
    user_stats: dict[str, Any] | None = field(default=None, hash=False, compare=False)
    history: dict[str, tuple[Any, ...]] | None = field(default=None, hash=False, compare=False)
    missing_views: frozenset[str] = frozenset()

    @property
    def hydrated(self) -> bool:
        """The user's features were read (a failed or skipped hydration leaves user_stats None)."""
        return self.user_stats is not None

    @property
    def cold_start(self) -> bool:
        """A user the stores do not know: no stats and no history (the popular source answers)."""
        return self.hydrated and {"user_stats", "user_history"} <= self.missing_views


@dataclass
class Candidate:
    """A post on its way through the pipeline; scorers fill `score` and `actions`."""

    post_id: int
    author_id: int
    created_at_ms: int
    source: str
    in_network: bool = False
    score: float | None = None
    actions: Mapping[str, float] = field(default_factory=dict)
    # post_* / author_* feature values from the candidate hydrator; a feature of a post or author the store does not
    # hold is absent (the ranker then reads it as training reads a null: 0, attribute id 0).
    features: Mapping[str, Any] = field(default_factory=dict)
    # Set by an explorer (serving/selectors/explore.py): P(this post in this slot) and P(this post in the slate)
    # under the randomised policy that drew the slate; None for a deterministic slate.
    propensity: float | None = None
    inclusion: float | None = None
    rank: int | None = None  # its place in the ranked order the explorer drew from (0 = best)


class ActionTable:
    """The ranker's predictions for one scoring call: (C, K) values, one row per candidate, columns `names`.

    Scorers downstream blend whole columns (serving.scorers.weighted) instead of one dict per candidate."""

    def __init__(
        self, names: tuple[str, ...], values: np.ndarray, weight_scales: Mapping[str, float] | None = None
    ) -> None:
        """`weight_scales`: the ranker's learned per-user blend multipliers (RankerConfig.learn_blend), by action:
        the weighted scorer blends with weight x scale, the blend the ranker was trained with; None = all 1."""
        self.names, self.values = names, values
        self.column = {name: j for j, name in enumerate(names)}
        self.weight_scales = dict(weight_scales) if weight_scales is not None else None


class ActionRow(Mapping[str, float]):
    """One candidate's predictions {action: value}: a read-only view of its row of an `ActionTable`."""

    __slots__ = ("table", "row")

    def __init__(self, table: ActionTable, row: int) -> None:
        self.table, self.row = table, row

    def __getitem__(self, name: str) -> float:
        return float(self.table.values[self.row, self.table.column[name]])

    def __iter__(self) -> Iterator[str]:
        return iter(self.table.names)

    def __len__(self) -> int:
        return len(self.table.names)
