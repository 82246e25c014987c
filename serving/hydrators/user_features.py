"""Query hydrator: the viewer's user_stats and user_history from the online store, and the attributes of the
posts in the history (what the ranker's history tokens embed)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import numpy as np

from features.catalog import USER_HISTORY, USER_STATS
from features.online import OnlineFeatures
from serving.component import Component
from serving.types import Query

HISTORY_ARRAYS = ("hist_post_ids", "hist_author_ids", "hist_actions", "hist_surfaces", "hist_timestamps")


@dataclass
class UserFeaturesHydrator(Component):
    """Sets `query.user_stats`, `query.history` and the views it found no row for (`missing_views`).

    Attributes:
        online: the online-store reader.
        post_attributes: post_stats columns looked up for each history post, stored as `history["hist_<name>"]`
            aligned with hist_post_ids (None for posts the store does not hold).
        max_history: only the newest this many events get their attributes looked up (the models read no more).
        known_attributes: post_id -> {attribute: value} loaded with the models (the offline store's posts): a post's
            topic and media never change, and the online store holds only the posts of the materialization window,
            so an older history post is looked up here (training reads every post's attributes).
    """

    online: OnlineFeatures
    post_attributes: tuple[str, ...] = ("post_topic", "post_media_type")
    max_history: int = 128
    known_attributes: Mapping[int, Mapping[str, object]] = field(default_factory=dict)

    def hydrate(self, query: Query) -> Query:
        stats, has_stats = self.online.user_view(USER_STATS, query.user_id)
        hist, has_hist = self.online.user_view(USER_HISTORY, query.user_id)
        history: dict[str, tuple[object, ...]] = {name: tuple(hist[name]) for name in HISTORY_ARRAYS}
        history |= self._history_attributes(history["hist_post_ids"])
        missing = {v for v, ok in ((USER_STATS.name, has_stats), (USER_HISTORY.name, has_hist)) if not ok}
        return replace(
            query,
            user_stats=stats,
            history=history,
            missing_views=(query.missing_views - {USER_STATS.name, USER_HISTORY.name}) | missing,
        )

    def _history_attributes(self, post_ids: tuple[object, ...]) -> dict[str, tuple[object, ...]]:
        """`hist_<attribute>` tuples aligned with post_ids; only the newest max_history posts are looked up."""
        if not self.post_attributes:
            return {}
        n = min(len(post_ids), max(self.max_history, 0))
        newest = [int(p) for p in post_ids[len(post_ids) - n :]]  # type: ignore[call-overload]
        pad: tuple[object, ...] = (None,) * (len(post_ids) - n)
        if not newest:
            return {f"hist_{a}": pad for a in self.post_attributes}
        feats = self.online.candidates(newest)
        out: dict[str, tuple[object, ...]] = {}
        for a in self.post_attributes:
            column = feats.post.get(a)
            values = []
            for i, post in enumerate(newest):
                if column is not None and not feats.post_missing[i]:
                    values.append(_plain(column[i]))
                else:
                    values.append(_plain(self.known_attributes.get(post, {}).get(a)))
            out[f"hist_{a}"] = pad + tuple(values)
        return out


def _plain(value: object) -> object:
    """numpy scalars as Python values (string ids then match training's, and the values are JSON-serialisable)."""
    return value.item() if isinstance(value, np.generic) else value
