"""Embedding drift: PCA on the reference, per-component drift; same-distribution passes, a shift fails."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from monitoring.config import MonitorConfig, parse_config
from monitoring.embedding_drift import embedding_drift, pca_basis

D = 16


def embeddings(seed: int, n: int, shift: float = 0.0) -> np.ndarray:
    """Unit-norm rows around a fixed low-rank structure (like tower outputs); `shift` moves them along one axis."""
    rng = np.random.default_rng(seed)
    mix = np.random.default_rng(99).normal(size=(4, D))  # the same structure for every seed
    x = rng.normal(size=(n, 4)) @ mix + 0.1 * rng.normal(size=(n, D))
    x[:, 0] += shift
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def cfg() -> MonitorConfig:
    return parse_config({"min_rows": 100, "embedding_drift": {"n_components": 4}})


def test_pca_basis_is_orthonormal_and_ordered() -> None:
    mean, basis, ratio = pca_basis(embeddings(0, 500), 4)
    assert basis.shape == (4, D) and mean.shape == (D,)
    assert np.allclose(basis @ basis.T, np.eye(4), atol=1e-8)
    assert np.all(np.diff(ratio) <= 0) and 0.5 < ratio.sum() <= 1.0


def test_same_distribution_passes(cfg: MonitorConfig) -> None:
    ref = {"user": embeddings(0, 1500), "post": embeddings(1, 1500)}
    cur = {"user": embeddings(2, 1200), "post": embeddings(3, 1200)}
    res, snaps = embedding_drift(ref, cur, cfg)
    assert res.status == "pass", res.reasons
    assert res.share_drifted == 0.0
    assert set(res.per_feature) == {f"{t}_pc{i}" for t in ("user", "post") for i in range(4)}
    assert set(snaps) == {"user", "post"}


def test_shifted_users_fail_naming_user_components(cfg: MonitorConfig) -> None:
    ref = {"user": embeddings(0, 1500), "post": embeddings(1, 1500)}
    cur = {"user": embeddings(2, 1200, shift=3.0), "post": embeddings(3, 1200)}
    res, _ = embedding_drift(ref, cur, cfg)
    assert res.status == "fail"
    assert res.drifted() and all(c.startswith("user_pc") for c in res.drifted())
    assert "embedding components drifted" in res.reasons[0]


def test_bad_input_is_insufficient(cfg: MonitorConfig) -> None:
    ref = {"user": embeddings(0, 1500)}
    empty, _ = embedding_drift(ref, {"user": np.zeros((0, D))}, cfg)
    assert empty.status == "insufficient_data" and "current user embeddings are empty" in empty.reasons
    nan = embeddings(2, 1200)
    nan[:] = np.nan
    all_nan, _ = embedding_drift(ref, {"user": nan}, cfg)
    assert all_nan.status == "insufficient_data" and "0 finite rows" in all_nan.reasons[0]
    dims, _ = embedding_drift(ref, {"user": embeddings(2, 1200)[:, :8]}, cfg)
    assert dims.status == "insufficient_data" and "dimensions" in dims.reasons[0]
    none, _ = embedding_drift({}, {}, cfg)
    assert none.status == "insufficient_data" and none.share_drifted is None
    missing_post, _ = embedding_drift({"user": embeddings(0, 1500), "post": embeddings(1, 1500)}, ref, cfg)
    assert missing_post.status == "insufficient_data"  # the user tower was measured, but no verdict without posts
    assert missing_post.share_drifted == 0.0


def test_tower_embeddings_encode_users_and_posts_point_in_time(tmp_path: Path) -> None:
    """A nano two-tower (untrained, seeded) over tiny offline tables: the encoding path the monitor runs."""
    import pandas as pd
    import torch

    from models.retrieval.model import TwoTower, TwoTowerConfig, save
    from monitoring.embedding_drift import tower_embeddings
    from monitoring.skew import TIME

    torch.manual_seed(0)
    cfg = TwoTowerConfig.preset("nano")
    save(TwoTower(cfg), tmp_path / "model")
    t0 = pd.Timestamp("2026-01-02", tz="UTC")
    users = np.arange(1, 41)
    rng = np.random.default_rng(0)
    stats = pd.DataFrame(
        {
            "user_id": np.concatenate([users, users]),
            "event_timestamp": [t0] * 40 + [t0 + pd.Timedelta(days=1)] * 40,
            "user_country": rng.choice(["US", "BR"], 80),
            "user_language": "en",
            "user_age_bucket": "25-34",
            "user_activity": rng.choice(["low", "high"], 80),
        }
    )
    stats.loc[40:, "user_country"] = "JP"  # every user moved country on day 1
    stats.to_parquet(tmp_path / "user_stats.parquet")
    history = pd.DataFrame(
        {
            "user_id": users,
            "event_timestamp": t0,
            **{c: [[int(u), int(u) + 1] for u in users] for c in ("hist_post_ids", "hist_author_ids", "hist_actions",
                                                                  "hist_surfaces", "hist_timestamps")},
        }
    )  # fmt: skip
    history.to_parquet(tmp_path / "user_history.parquet")
    posts = np.arange(1, 61)
    pd.DataFrame(
        {
            "post_id": posts,
            "event_timestamp": t0,
            "post_author_id": posts % 7 + 1,
            "post_created_at_ms": int(t0.timestamp() * 1000) - 3_600_000,
            "post_topic": posts % 16,
            "post_media_type": "text",
            "post_impressions": posts * 3,
            "post_click_count": posts,
            "post_like_count": posts // 2,
        }
    ).to_parquet(tmp_path / "post_stats.parquet")

    at = lambda day: int((t0 + pd.Timedelta(days=day, hours=1)).timestamp() * 1000)  # noqa: E731
    requests = pd.DataFrame({"user_id": [1, 2, 2, 3], TIME: [at(0), at(0), at(1), at(1)]})
    post_ids = np.array([5, 5, 6, 999])  # a repeat keeps its weight; a post the table lacks is left out
    emb = tower_embeddings(tmp_path / "model", tmp_path, requests, post_ids, at(1))
    assert emb["user"].shape == (4, cfg.d_model) and emb["post"].shape == (3, cfg.d_model)
    assert np.allclose(np.linalg.norm(emb["user"], axis=1), 1.0, atol=1e-4)
    assert np.allclose(emb["post"][0], emb["post"][1])
    # User 2 at day 0 and at day 1 reads different user_stats rows (point in time): different embeddings.
    assert not np.allclose(emb["user"][1], emb["user"][2])
    again = tower_embeddings(tmp_path / "model", tmp_path, requests, post_ids, at(1))
    assert np.array_equal(again["user"], emb["user"])
