"""Replayed traffic: requests drawn the way the logging policy's users asked, for measurements and tests of the monitor.

A window of served traffic weighs each user by how often they ask: an active user sends many requests, a dormant one
few. Drawing users uniformly (bench/serving.py's `user_ids`, fine for latency) gives a request population the
training window never had, so the monitor's data drift on it measures the sampler, not the world. `request_sample`
draws requests uniformly from the reference window's distinct requests, i.e. each user in proportion to their
activity there (with their surface), seeded; `replay` sends them through any recommender and returns exposure-log
records of the format serving/service.py writes (items with per-action predictions under "actions").
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from core.errors import UserError


class _Item(Protocol):
    post_id: int
    score: float
    source: str
    actions: Mapping[str, float]


class _Recommendation(Protocol):
    items: list[Any]
    degraded: bool
    fallback: str
    features: dict[str, Any]


class Replayable(Protocol):
    """What `replay` needs of a recommender (serving.recommender.Recommender has it)."""

    @property
    def version(self) -> str: ...

    def recommend(
        self, user_id: int, k: int, seen_ids: frozenset[int] = ..., surface: int = ...
    ) -> _Recommendation: ...


def request_sample(reference: pd.DataFrame, n: int, seed: int = 0) -> pd.DataFrame:
    """n requests (user_id, surface) drawn with replacement from the reference window's distinct requests, seeded:
    each user comes back in proportion to their number of requests in the window.

    Args:
        reference: rows with user_id and request_id (one row per impression or per request; surface optional).

    Raises:
        UserError: the reference has no user_id / request_id column or no request.
    """
    missing = [c for c in ("user_id", "request_id") if c not in reference.columns]
    if missing:
        raise UserError(f"reference: no {', '.join(missing)} column to draw requests from")
    cols = ["user_id", "surface"] if "surface" in reference.columns else ["user_id"]
    requests = reference.drop_duplicates("request_id")[cols].dropna(subset=["user_id"])
    if len(requests) == 0:
        raise UserError("reference: no request to draw from")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 31]))
    drawn = requests.iloc[rng.integers(0, len(requests), n)].reset_index(drop=True)
    out = pd.DataFrame({"user_id": drawn["user_id"].astype("int64")})
    out["surface"] = drawn["surface"].astype("int64") if "surface" in drawn.columns else 0
    return out


def _number(value: Any) -> float | None:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def replay(
    recommender: Replayable,
    requests: pd.DataFrame,
    k: int = 20,
    *,
    variant: str = "replay",
    ts: float = 0.0,
    request_prefix: str = "replay",
) -> list[dict[str, Any]]:
    """One exposure record per request (user_id, surface), as serving/service.py logs it, plus each item's
    per-action predictions under "actions". Records are numbered `<request_prefix>-<i>`; ts is `ts + i` seconds."""
    records: list[dict[str, Any]] = []
    surfaces = requests["surface"] if "surface" in requests.columns else pd.Series(0, index=requests.index)
    for i, (user, surface) in enumerate(zip(requests["user_id"], surfaces, strict=True)):
        rec = recommender.recommend(int(user), k, frozenset(), int(surface))
        as_of = getattr(rec, "as_of", None)  # serving.recommender.Recommendation.as_of; absent elsewhere
        items = [
            {
                "post_id": int(item.post_id),
                "position": n,
                "score": float(item.score),
                "source": str(item.source),
                "actions": {str(a): _number(p) for a, p in dict(item.actions or {}).items()},
                # a sampled request's candidate inputs (RecommenderConfig.log_candidate_features), as the service
                **({"features": dict(item.features)} if getattr(item, "features", None) else {}),
            }
            for n, item in enumerate(rec.items[:k])
        ]
        records.append(
            {
                "kind": "exposure",
                "endpoint": "recommend",
                "request_id": f"{request_prefix}-{i}",
                "ts": ts + i,
                "user_id": int(user),
                "surface": int(surface),
                "variant": variant,
                "version": recommender.version,
                "degraded": bool(rec.degraded),
                "fallback": rec.fallback,
                "items": items,
                "features": dict(rec.features),
                **({"as_of": as_of.timestamp()} if as_of is not None else {}),  # a fixed-time world's now
            }  # fmt: skip
        )
    return records


def write_records(records: Iterable[Mapping[str, Any]], path: Path) -> Path:
    """Writes records as an exposure log file (JSONL), creating the directory; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        for record in records:
            handle.write(json.dumps(record, default=_json_default) + "\n")
    return path


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray | set | frozenset | tuple):
        return list(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
