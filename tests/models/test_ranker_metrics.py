"""Ranker metrics: AUC against sklearn, GAUC by hand, calibration, request NDCG, the per-action report."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from models.ranker.metrics import auc, calibration, gauc, gauc_users, logloss, ranking_report, request_ndcg


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_matches_sklearn_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 500)
    p = rng.integers(0, 7, 500) / 6.0  # 7 distinct scores: many ties across classes
    assert auc(y, p) == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    q = rng.random(500)
    assert auc(y, q) == pytest.approx(roc_auc_score(y, q), abs=1e-12)


def test_auc_edge_cases() -> None:
    assert math.isnan(auc([1, 1, 1], [0.1, 0.2, 0.3]))
    assert math.isnan(auc([], []))
    assert auc([0, 1], [0.5, 0.5]) == 0.5
    assert auc([0, 0, 1], [0.1, 0.2, 0.9]) == 1.0
    with pytest.raises(ValueError):
        auc([0, 2], [0.1, 0.2])


def test_gauc_by_hand() -> None:
    # user 10: 4 rows, pairs (pos 0.8 vs 0.1, 0.9), (pos 0.4 vs 0.1, 0.9) -> 2 of 4 right -> AUC 0.5
    # user 20: 2 rows, positive above negative -> AUC 1.0
    # user 30: 3 rows, all negatives -> left out
    user = [10, 10, 10, 10, 20, 20, 30, 30, 30]
    y = [1, 0, 1, 0, 1, 0, 0, 0, 0]
    p = [0.8, 0.1, 0.4, 0.9, 0.7, 0.2, 0.5, 0.6, 0.9]
    expected = (4 * 0.5 + 2 * 1.0) / (4 + 2)
    assert gauc(y, p, user) == pytest.approx(expected)
    assert gauc_users(y, p, user) == (pytest.approx(expected), 2)
    # string user ids and shuffled rows give the same value
    perm = np.random.default_rng(0).permutation(len(y))
    assert gauc(np.array(y)[perm], np.array(p)[perm], np.array([f"u{u}" for u in user])[perm]) == pytest.approx(
        expected
    )
    assert math.isnan(gauc([0, 1], [0.3, 0.4], [1, 2]))  # nobody has both classes


def test_gauc_matches_per_user_sklearn() -> None:
    rng = np.random.default_rng(3)
    n = 2000
    user = rng.integers(0, 60, n)
    y = rng.integers(0, 2, n)
    p = rng.integers(0, 5, n) / 4.0
    num = den = 0.0
    for u in np.unique(user):
        sel = user == u
        if 0 < y[sel].sum() < sel.sum():
            num += sel.sum() * roc_auc_score(y[sel], p[sel])
            den += sel.sum()
    assert gauc(y, p, user) == pytest.approx(num / den, abs=1e-12)


def test_calibration_and_logloss() -> None:
    rng = np.random.default_rng(4)
    p = rng.uniform(0.05, 0.5, 100_000)
    y = (rng.random(len(p)) < p).astype(np.int8)
    assert calibration(y, p) == pytest.approx(1.0, abs=0.02)
    assert calibration(y, 2 * p) == pytest.approx(2.0, abs=0.04)
    assert math.isnan(calibration(np.zeros(5), np.full(5, 0.1)))
    assert logloss([1, 0], [0.5, 0.5]) == pytest.approx(math.log(2))
    assert logloss(y, p) < logloss(y, np.full(len(y), y.mean()))


def test_request_ndcg() -> None:
    req = np.array([1, 1, 1, 1, 2, 2, 2, 3, 3])
    gain = np.array([3.0, 0.0, 1.0, -1.0, 0.0, 2.0, 1.0, 0.0, 0.0])
    assert request_ndcg(gain, gain, req, k=10) == pytest.approx(1.0)
    assert request_ndcg(2 * gain + 5, gain, req, k=2) == pytest.approx(1.0)  # any order-preserving score
    # request 3 has no positive gain: left out; the reversed order is worse than perfect
    assert request_ndcg(-gain, gain, req, k=10) < 0.6
    # a constant score gets no credit from ties: it ranks the worst gains first
    assert request_ndcg(np.zeros(len(gain)), gain, req) == pytest.approx(request_ndcg(-gain, gain, req))
    # by hand, request 2 alone at k=1: the top score holds gain 1 of an ideal 2
    sel = req == 2
    assert request_ndcg(np.array([0.1, 0.2, 0.9]), gain[sel], req[sel], k=1) == pytest.approx(0.5)


def test_ranking_report_masks_and_skips() -> None:
    rng = np.random.default_rng(5)
    n = 400
    p_click = rng.uniform(0.1, 0.9, n)
    labels = pd.DataFrame(
        {
            "click": (rng.random(n) < p_click).astype(float),
            "like": np.zeros(n),  # one class: skipped
            "report": np.where(np.arange(n) < 200, np.nan, (np.arange(n) % 50 == 0).astype(float)),
        }
    )
    probs = {"click": p_click, "like": np.full(n, 0.1), "report": rng.random(n)}
    user = rng.integers(0, 20, n)
    request = np.arange(n) // 10
    rep = ranking_report(labels, probs, user, request, ["click", "like", "report"])
    assert set(rep["actions"]) == {"click", "report"}
    assert "like" in rep["skipped"]
    click = rep["actions"]["click"]
    assert click["auc"] == pytest.approx(auc(labels["click"], p_click))
    assert click["gauc"] == pytest.approx(gauc(labels["click"], p_click, user))
    assert click["positives"] == int(labels["click"].sum()) and click["impressions"] == n
    report = rep["actions"]["report"]
    assert report["impressions"] == 200 and report["positives"] == 4 and report["noisy"]
    assert click["noisy"] == (min(click["positives"], n - click["positives"]) < 100)
    assert rep["ndcg"]["k"] == 10 and 0 < rep["ndcg"]["requests"] <= n // 10
    assert -1.0 <= rep["ndcg"]["value"] <= 1.0
