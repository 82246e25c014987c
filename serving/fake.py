"""`fake_recommender()`: a real `PipelineRecommender` over a tiny generated catalogue, for wiring tests with no DVC run.

Every stage is the production one (serving/recommender_pipeline.py): seeded, untrained nano two-tower and ranker, an
exact ANN index of the candidate tower's embeddings, the in-network, fresh and popular sources, every filter and
scorer, read through `OnlineFeatures` from an in-process store (`features.online.MemoryBackend`) that holds the same
views, names and types the Feast online store holds. Slates are arbitrary (nothing is trained); the wiring is not:
stage order, filters, fallbacks, exploration and the response fields are those of a deployment.

    users 1..n_users        known, each following `follows` of the authors, with a short engagement history
    authors 1..n_authors    also users, so the self-post filter has work to do
    posts 1..n_posts        created within the last 40 hours, topics and media types drawn at random
    user n_users + 1 ...    unknown: a cold start
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from core.actions import ACTION_NAMES
from features.catalog import AUTHOR_STATS, POST_STATS, USER_GRAPH, USER_HISTORY, USER_STATS, WINDOWS, View
from features.online import MemoryBackend, OnlineFeatures
from models.ranker.model import Ranker, RankerConfig
from models.retrieval.data import candidate_features
from models.retrieval.index import IndexConfig, build_index
from models.retrieval.model import TwoTower, TwoTowerConfig
from models.retrieval.train import embed_corpus
from serving.recommender_config import RecommenderConfig
from serving.recommender_pipeline import PipelineRecommender, recent_post_store
from serving.sources.popular import popular_posts
from serving.sources.two_tower import PostCatalog

NOW = datetime(2026, 1, 1, 12, tzinfo=UTC)
HOUR_MS = 3_600_000
TOPICS = 8
MEDIA = ("text", "image", "video")


@dataclass(frozen=True)
class FakeCatalogue:
    """Sizes of the generated catalogue; `seed` fixes it and the models' initial weights."""

    n_users: int = 40
    n_authors: int = 10
    n_posts: int = 300
    follows: int = 3
    history: int = 8
    seed: int = 0


def fake_recommender(
    catalogue: FakeCatalogue | None = None, **config: Any
) -> tuple[PipelineRecommender, MemoryBackend]:
    """A loaded pipeline over a generated catalogue served at the fixed time `NOW`, and its store (a test can edit
    rows, e.g. block an author). `config`: RecommenderConfig fields (top_k, author_cap, explore_slots, ...)."""
    cat = catalogue or FakeCatalogue()
    rng = np.random.default_rng(cat.seed)
    now_ms = int(NOW.timestamp() * 1000)
    posts = _posts(cat, rng, now_ms)
    store = MemoryBackend(
        {
            POST_STATS.name: {int(r["post_id"]): _row(POST_STATS, r) for r in posts.to_dict("records")},
            AUTHOR_STATS.name: {a: _author(rng) for a in range(1, cat.n_authors + 1)},
            USER_STATS.name: {u: _user(rng) for u in range(1, cat.n_users + 1)},
            USER_HISTORY.name: {u: _history(cat, rng, posts, now_ms) for u in range(1, cat.n_users + 1)},
            USER_GRAPH.name: {u: _graph(cat, rng, u) for u in range(1, cat.n_users + 1)},
        },
        stamp=NOW.isoformat(),
    )
    with torch.random.fork_rng():
        torch.manual_seed(cat.seed)
        two_tower = TwoTower(TwoTowerConfig.preset("nano")).eval()
        ranker = Ranker(RankerConfig.preset("nano")).eval()
    corpus = posts.rename(columns={"post_author_id": "author_id"})
    with torch.inference_mode():
        emb = embed_corpus(two_tower, candidate_features(corpus, two_tower.cfg, now_ms=now_ms)).numpy()
    index = build_index(corpus["post_id"].to_numpy(np.int64), emb, IndexConfig())
    recent = recent_post_store(corpus, NOW)
    cfg = RecommenderConfig(
        retrieval_model=Path("fake/retrieval"), index=Path("fake/index"), ranker=Path("fake/ranker"), **config
    )
    attributes = {
        int(r["post_id"]): {"post_topic": r["post_topic"], "post_media_type": r["post_media_type"]}
        for r in posts.to_dict("records")
    }
    rec = PipelineRecommender(
        cfg,
        two_tower,
        index,
        ranker,
        OnlineFeatures(store),
        popular_posts(corpus),
        recent,
        version=f"fake:{cat.seed}",
        clock=lambda: NOW,
        post_attributes=attributes,
        catalog=PostCatalog.of_corpus(corpus),
    )
    return rec, store


def _posts(cat: FakeCatalogue, rng: np.random.Generator, now_ms: int) -> pd.DataFrame:
    n = cat.n_posts
    frame: dict[str, Any] = {
        "post_id": np.arange(1, n + 1, dtype=np.int64),
        "post_created_at_ms": now_ms - rng.integers(1, 40 * HOUR_MS, n),
        "post_author_id": rng.integers(1, cat.n_authors + 1, n),
        "post_topic": rng.integers(0, TOPICS, n).astype(np.int32),
        "post_media_type": rng.choice(MEDIA, n),
        "post_impressions": rng.integers(10, 1000, n).astype(np.int32),
    }
    for a in ACTION_NAMES:
        count = rng.binomial(frame["post_impressions"], 0.05).astype(np.int32)
        frame[f"post_{a}_count"] = count
        frame[f"post_{a}_rate"] = (count / frame["post_impressions"]).astype(np.float32)
    return pd.DataFrame(frame).sort_values("post_created_at_ms").reset_index(drop=True)


def _row(view: View, values: dict[str, Any]) -> dict[str, Any]:
    """The view's features of `values` as the store decodes them (Python scalars)."""
    return {name: values[name].item() if isinstance(values[name], np.generic) else values[name] for name in view.names}


def _author(rng: np.random.Generator) -> dict[str, Any]:
    row: dict[str, Any] = {
        "author_follower_count": int(rng.integers(0, 500)),
        "author_posts_per_day": float(rng.uniform(0.5, 5)),
        "author_impressions_28d": int(rng.integers(100, 10_000)),
        "author_negative_rate": float(rng.uniform(0, 0.05)),
    }
    return row | {f"author_{a}_rate": float(rng.uniform(0, 0.1)) for a in ACTION_NAMES}


def _user(rng: np.random.Generator) -> dict[str, Any]:
    row: dict[str, Any] = {
        "user_account_age_days": float(rng.uniform(1, 1000)),
        "user_follower_count": int(rng.integers(0, 300)),
        "user_followee_count": int(rng.integers(1, 50)),
        "user_country": str(rng.choice(["us", "de", "jp"])),
        "user_language": str(rng.choice(["en", "de", "ja"])),
        "user_age_bucket": str(rng.choice(["18-24", "25-34", "35+"])),
        "user_activity": str(rng.choice(["low", "mid", "high"])),
    }
    for w in WINDOWS:
        shown = int(rng.integers(0, 50 * w))
        row[f"user_impressions_{w}d"] = shown
        for a in ACTION_NAMES:
            count = int(rng.binomial(shown, 0.05))
            row[f"user_{a}_{w}d"] = count
            row[f"user_{a}_rate_{w}d"] = count / shown if shown else 0.0
    return row


def _history(cat: FakeCatalogue, rng: np.random.Generator, posts: pd.DataFrame, now_ms: int) -> dict[str, Any]:
    """`cat.history` engagements with posts older than 2 hours, oldest first; the action bitmask has the click bit
    and sometimes a like."""
    older = posts[posts["post_created_at_ms"] < now_ms - 2 * HOUR_MS]
    picked = older.sample(min(cat.history, len(older)), random_state=int(rng.integers(1 << 31)))
    picked = picked.sort_values("post_created_at_ms")
    click, like = 1 << ACTION_NAMES.index("click"), 1 << ACTION_NAMES.index("like")
    return {
        "hist_post_ids": tuple(int(p) for p in picked["post_id"]),
        "hist_author_ids": tuple(int(a) for a in picked["post_author_id"]),
        "hist_actions": tuple(click | (like if rng.random() < 0.3 else 0) for _ in range(len(picked))),
        "hist_surfaces": tuple(0 for _ in range(len(picked))),
        "hist_timestamps": tuple(int(t) + HOUR_MS for t in picked["post_created_at_ms"]),
        "hist_length": len(picked),
    }


def _graph(cat: FakeCatalogue, rng: np.random.Generator, user: int) -> dict[str, Any]:
    authors = [a for a in range(1, cat.n_authors + 1) if a != user]
    followed = rng.choice(authors, size=min(cat.follows, len(authors)), replace=False)
    return {"followee_ids": tuple(sorted(int(a) for a in followed)), "blocked_author_ids": (), "muted_author_ids": ()}
