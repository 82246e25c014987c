"""Query hydrator: the viewer's followees and blocked/muted authors (user_graph view)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from features.catalog import USER_GRAPH
from features.online import OnlineFeatures
from serving.component import Component
from serving.types import Query


@dataclass
class UserGraphHydrator(Component):
    online: OnlineFeatures

    def hydrate(self, query: Query) -> Query:
        graph, found = self.online.user_view(USER_GRAPH, query.user_id)
        missing = query.missing_views - {USER_GRAPH.name} | ({USER_GRAPH.name} if not found else set())
        return replace(
            query,
            followee_ids=query.followee_ids | frozenset(int(a) for a in graph["followee_ids"]),
            blocked_author_ids=query.blocked_author_ids | frozenset(int(a) for a in graph["blocked_author_ids"]),
            muted_author_ids=query.muted_author_ids | frozenset(int(a) for a in graph["muted_author_ids"]),
            missing_views=frozenset(missing),
        )
