"""Slate quality metrics against hand-computed values, Evidently's agreement, and the verdicts."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from monitoring.config import QualityConfig
from monitoring.quality import (
    NO_REFERENCE,
    beyond_accuracy,
    evidently_report,
    ranking_metrics,
    save_snapshot,
    slate_quality,
)


def slates(rows: list[tuple[str, int, int, int, int]]) -> pd.DataFrame:
    """(request_id, user_id, post_id, position, click) rows."""
    return pd.DataFrame(rows, columns=["request_id", "user_id", "post_id", "position", "click"])


# Slate a: clicks at ranks 1 and 3 of 3; slate b: a click at rank 3; slate c: no click. Positions are deliberately out
# of row order in slate a: the rank comes from the position, not the row order.
TINY = slates(
    [
        ("a", 1, 10, 2, 1),
        ("a", 1, 11, 0, 1),
        ("a", 1, 12, 1, 0),
        ("b", 2, 10, 0, 0),
        ("b", 2, 13, 1, 0),
        ("b", 2, 14, 2, 1),
        ("c", 3, 15, 0, 0),
        ("c", 3, 16, 1, 0),
    ]
).assign(relevant=lambda f: f["click"])


def test_ranking_metrics_match_hand_computation() -> None:
    # k = 2. a: ranks (11, 12, 10) -> rel (1, 0, 1): DCG@2 = 1, IDCG@2 = 1 + 1/log2(3).
    #        b: rel (0, 0, 1): DCG@2 = 0. c: no feedback, 0 everywhere.
    got = ranking_metrics(TINY, k=2)
    idcg_a = 1 + 1 / math.log2(3)
    assert got["ndcg@2"] == pytest.approx((1 / idcg_a + 0 + 0) / 3)
    assert got["precision@2"] == pytest.approx((1 / 2 + 0 + 0) / 3)
    assert got["recall@2"] == pytest.approx((1 / 2 + 0 + 0) / 3)
    # k = 3: a DCG = 1 + 1/2, IDCG = 1 + 1/log2(3); b DCG = 1/2, IDCG = 1.
    got3 = ranking_metrics(TINY, k=3)
    assert got3["ndcg@3"] == pytest.approx((1.5 / idcg_a + 0.5 + 0) / 3)
    assert got3["precision@3"] == pytest.approx((2 / 3 + 1 / 3 + 0) / 3)  # c has 2 items: 0 / 2
    assert got3["recall@3"] == pytest.approx((1 + 1 + 0) / 3)


def test_perfect_order_has_ndcg_one() -> None:
    perfect = slates([("a", 1, 1, 0, 1), ("a", 1, 2, 1, 1), ("a", 1, 3, 2, 0)]).assign(relevant=lambda f: f["click"])
    assert ranking_metrics(perfect, k=3)["ndcg@3"] == pytest.approx(1.0)
    worst = perfect.assign(position=[2, 1, 0])
    assert ranking_metrics(worst, k=3)["ndcg@3"] < 0.7


def test_evidently_agrees_on_the_tiny_slates() -> None:
    cfg = QualityConfig(k=2)
    snap = evidently_report(TINY, None, cfg)
    values = {m["config"]["type"].split(":")[-1]: m["value"]["value"] for m in snap.dict()["metrics"]}
    # Evidently returns the whole curve k = 1..3: ours at each k is the same number.
    for k in (1, 2, 3):
        ours = ranking_metrics(TINY, k=k)
        assert ours[f"ndcg@{k}"] == pytest.approx(list(values["NDCG"].values())[k - 1])
        assert ours[f"precision@{k}"] == pytest.approx(list(values["PrecisionTopK"].values())[k - 1])
        assert ours[f"recall@{k}"] == pytest.approx(list(values["RecallTopK"].values())[k - 1])


def test_beyond_accuracy_hand_computed() -> None:
    # U = 4 reference users; item 10 liked by 3 of them, 11 by 1, others by none.
    popularity = pd.Series({10: 3, 11: 1})
    topics = pd.Series({10: 0, 11: 0, 12: 1, 13: 1, 14: 2})  # 15, 16 unknown
    got = beyond_accuracy(TINY, k=2, popularity=popularity, n_users=4, topics=topics, catalogue_size=10)
    # Top-2 items: a (11, 12), b (10, 13), c (15, 16).
    u = np.array([1, 0, 3, 0, 0, 0], dtype=float)
    assert got["novelty"] == pytest.approx(float(np.mean(-np.log2((u + 1) / 5))))
    assert got["popularity_bias"] == pytest.approx(((1 / 4 + 0) / 2 + (3 / 4 + 0) / 2 + 0) / 3)
    assert got["coverage"] == pytest.approx(6 / 10)
    assert got["diversity"] == pytest.approx(1.0)  # a: topics 0/1, b: 0/1; c has no known topic
    # k = 3: a has topics (0, 1, 0): 1 of 3 pairs alike; b has (0, 1, 2): none alike.
    top3 = beyond_accuracy(TINY, k=3, popularity=popularity, n_users=4, topics=topics, catalogue_size=10)
    assert top3["diversity"] == pytest.approx((2 / 3 + 1) / 2)
    same_topic = beyond_accuracy(TINY.assign(post_id=[10, 11, 10, 10, 11, 10, 11, 10]), 2, popularity, 4, topics, 10)
    assert same_topic["diversity"] == pytest.approx(0.0)


def random_slates(seed: int, n: int, p_click_top: float, k: int = 5) -> pd.DataFrame:
    """n slates of k items; the click probability falls with position from p_click_top."""
    rng = np.random.default_rng(seed)
    request = np.repeat([f"r{seed}-{i}" for i in range(n)], k)
    position = np.tile(np.arange(k), n)
    p = p_click_top * 0.7**position
    return pd.DataFrame(
        {
            "request_id": request,
            "user_id": rng.integers(1, 50, n).repeat(k),
            "post_id": rng.integers(1, 300, n * k),
            "position": position,
            "click": (rng.random(n * k) < p).astype("int8"),
        }
    )


def test_same_policy_passes_and_worse_ranking_fails() -> None:
    cfg = QualityConfig(k=5, min_slates=20, max_ndcg_drop=0.05)
    ref = random_slates(0, 400, 0.6)
    same = slate_quality(random_slates(1, 300, 0.6), ref, cfg)
    assert same.status == "pass", same.reasons
    assert set(same.metrics) == {"ndcg@5", "precision@5", "recall@5", "novelty", "diversity", "popularity_bias",
                                 "coverage"}  # fmt: skip
    # Reversed slates: the clicks sit at the bottom, NDCG drops far below the reference's.
    reversed_ = random_slates(1, 300, 0.6).assign(position=lambda f: 4 - f["position"])
    bad = slate_quality(reversed_, ref, cfg)
    assert bad.status == "fail" and "ndcg@5" in bad.reasons[0]
    assert bad.metrics["ndcg@5"] < same.metrics["ndcg@5"]  # type: ignore[operator]
    assert bad.metrics["precision@5"] == pytest.approx(same.metrics["precision@5"])  # same items, same clicks


def test_floors_and_ceilings() -> None:
    cfg = QualityConfig(k=5, min_slates=20, max_ndcg_drop=None, min_coverage=0.99, max_popularity_bias=0.0001)
    res = slate_quality(random_slates(1, 300, 0.6), random_slates(0, 400, 0.6), cfg, catalogue_size=10_000)
    assert res.status == "fail"
    assert any("coverage" in r for r in res.reasons) and any("popularity_bias" in r for r in res.reasons)


def test_no_reference_reports_the_metrics_without_a_verdict() -> None:
    cfg = QualityConfig(k=5, min_slates=20, min_ndcg=0.99)  # a floor it would fail: no verdict all the same
    cur = random_slates(1, 300, 0.6)
    res = slate_quality(cur, None, cfg, popularity_from=random_slates(0, 400, 0.6))
    assert res.status == "insufficient_data" and res.reasons == [NO_REFERENCE]
    assert res.metrics["ndcg@5"] == pytest.approx(slate_quality(cur, random_slates(0, 400, 0.6), cfg).metrics["ndcg@5"])
    assert all(res.metrics[m] is not None for m in ("precision@5", "recall@5", "novelty", "coverage"))
    assert res.reference_metrics == {}
    assert res.n_reference_slates == 0


@pytest.mark.parametrize(
    "current, reason",
    [
        (None, "current window is empty"),
        (random_slates(1, 0, 0.5), "current window is empty"),
        (random_slates(1, 300, 0.5).drop(columns=["click"]), "'click' is missing from the current"),
        (random_slates(1, 5, 0.5), "5 slates"),
    ],
)
def test_bad_input_is_insufficient(current: pd.DataFrame | None, reason: str) -> None:
    res = slate_quality(current, random_slates(0, 400, 0.5), QualityConfig(k=5))
    assert res.status == "insufficient_data"
    assert any(reason in r for r in res.reasons), res.reasons


def test_report_files_are_written(tmp_path: Path) -> None:
    snap = evidently_report(random_slates(1, 50, 0.6), random_slates(0, 50, 0.6), QualityConfig(k=5))
    paths = save_snapshot(snap, tmp_path / "out", "quality")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["quality.html", "quality.json"]
    assert all(p.stat().st_size > 0 for p in paths)


def test_popularity_is_counted_on_the_given_rows() -> None:
    cfg = QualityConfig(k=5, min_slates=20)
    cur, ref = random_slates(1, 300, 0.6), random_slates(0, 400, 0.6)
    own = slate_quality(cur, ref, cfg)
    # Every served post clicked by every one of 10 users: the served slates are as popular as can be.
    posts = cur["post_id"].unique()
    everyone = pd.DataFrame(
        {"user_id": np.repeat(np.arange(10), len(posts)), "post_id": np.tile(posts, 10), "click": 1}
    )
    res = slate_quality(cur, ref, cfg, popularity_from=everyone)
    assert res.metrics["popularity_bias"] == pytest.approx(1.0)
    assert res.metrics["novelty"] == pytest.approx(0.0)
    assert own.metrics["popularity_bias"] < 0.5  # type: ignore[operator]
