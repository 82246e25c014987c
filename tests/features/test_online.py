"""The direct reader's user defaults (features.online), with a hand-written backend: the one place a user view's
missing values are filled, for `OnlineFeatures.user` and for the serving hydrators alike."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from features.catalog import DEFAULTS, USER_GRAPH, USER_HISTORY, USER_STATS, Dtype, View
from features.online import OnlineFeatures, with_defaults

KNOWN = 1  # the store holds this user's stats (one value null) and graph, but no history


class _Backend:
    def read(self, view: View, ids: Sequence[int]) -> list[dict[str, Any] | None]:
        rows = {
            USER_STATS.name: {"user_country": None, "user_language": "pt", "user_follower_count": 3},
            USER_GRAPH.name: {"followee_ids": (7, 8)},
        }
        return [rows.get(view.name) if i == KNOWN else None for i in ids]

    def check(self, view: View) -> None: ...

    def materialized_at(self) -> str | None:
        return None

    def mark_materialized(self, stamp: str) -> None: ...


def test_with_defaults_fills_each_missing_or_null_feature_by_dtype() -> None:
    full = with_defaults(USER_STATS, {"user_country": None, "user_language": "pt", "user_follower_count": 3})
    assert list(full) == list(USER_STATS.names)
    assert (full["user_country"], full["user_language"], full["user_follower_count"]) == ("unknown", "pt", 3)
    assert full["user_account_age_days"] == DEFAULTS[Dtype.FLOAT32] == 0.0
    assert with_defaults(USER_HISTORY, None) == {name: DEFAULTS[dtype] for name, dtype in USER_HISTORY.features}
    assert with_defaults(USER_GRAPH, {}) == with_defaults(USER_GRAPH, None)


def test_user_view_says_whether_the_store_had_a_row() -> None:
    online = OnlineFeatures(_Backend())
    stats, found = online.user_view(USER_STATS, KNOWN)
    assert found and stats["user_language"] == "pt" and stats["user_country"] == "unknown"
    history, found = online.user_view(USER_HISTORY, KNOWN)
    assert not found and history["hist_post_ids"] == ()
    assert online.user_view(USER_GRAPH, 99) == (with_defaults(USER_GRAPH, None), False)


def test_user_is_its_three_views() -> None:
    online = OnlineFeatures(_Backend())
    for user_id, missing in ((KNOWN, ("user_history",)), (99, ("user_stats", "user_history", "user_graph"))):
        user = online.user(user_id)
        assert user.stats == online.user_view(USER_STATS, user_id)[0]
        assert user.history == online.user_view(USER_HISTORY, user_id)[0]
        assert user.graph == online.user_view(USER_GRAPH, user_id)[0]
        assert user.missing == missing
