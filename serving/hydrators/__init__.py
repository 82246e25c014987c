"""Hydrators: query hydrators (user features, history, graph) and candidate hydrators (post and author features),
all reading the online store through `features.online.OnlineFeatures`."""

from __future__ import annotations

from typing import Any

from features.catalog import DEFAULTS, View
from features.online import OnlineFeatures


def read_user_view(online: OnlineFeatures, view: View, user_id: int) -> tuple[dict[str, Any], bool]:
    """One user view's values (catalog defaults where the store has none) and whether the store had a row.

    Raises:
        FeatureStoreUnavailable: the store cannot be reached.
    """
    row = online.backend.read(view, [user_id])[0]
    values = {
        name: (DEFAULTS[dtype] if row is None or row.get(name) is None else row[name]) for name, dtype in view.features
    }
    return values, row is not None
