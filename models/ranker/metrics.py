"""Offline metrics of the multi-task ranker: per-action AUC, GAUC, log loss and calibration, and request NDCG.

Every function is vectorised numpy (sorting and bincount, no Python loop over users or requests).

- `auc`: ROC AUC by the rank-sum (Mann-Whitney) formula; tied scores get their average rank, so a tie between a
  positive and a negative counts 1/2 (the value sklearn.metrics.roc_auc_score gives). nan with one class.
- `gauc`: impression-weighted mean of per-user AUC over the users with both a positive and a negative; a user's
  weight is their number of impressions (evaluation.md, Multi-task ranking). Users with one class are left out,
  not counted as 0.5. nan when no user has both classes.
- `logloss`: mean binary cross-entropy, probabilities clipped to [eps, 1 - eps].
- `calibration`: mean predicted probability / observed positive rate (1 = calibrated on average; > 1 over-predicts).
- `request_ndcg`: NDCG@k of a score within each request (one feed request = one ranked list), averaged over
  requests; see its docstring for gains, ties and which requests count.
- `ranking_report`: all of the above per action, plus the NDCG of the blended score.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from core.actions import BY_NAME, Polarity

EPS = 1e-7
# Below this many positives (or negatives) in the evaluation set an action's AUC is too noisy to rank models on.
MIN_POSITIVES = 100


def _as_1d(x: Any, dtype: Any = np.float64) -> np.ndarray:
    return np.asarray(x, dtype=dtype).reshape(-1)


def _codes(ids: Any) -> tuple[np.ndarray, int]:
    """Dense 0..G-1 codes of group ids (any hashable dtype) and the number of groups G."""
    codes, uniques = pd.factorize(np.asarray(ids).reshape(-1), sort=False)
    return codes.astype(np.int64), len(uniques)


def _check_lengths(name: str, *arrays: np.ndarray) -> None:
    lengths = {len(a) for a in arrays}
    if len(lengths) > 1:
        raise ValueError(f"{name}: arrays of different lengths {[len(a) for a in arrays]}")


def _grouped_average_ranks(group: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """1-based rank of each row's score within its group, ties averaged; rows in (group, score) order.

    Returns:
        order: the permutation sorting rows by (group, score).
        ranks: (N,) float64 rank of row order[i] within its group.
    """
    n = len(score)
    order = np.lexsort((score, group))
    g, s = group[order], score[order]
    # A new tie run starts where the group or the score changes.
    new_run = np.ones(n, dtype=bool)
    new_run[1:] = (g[1:] != g[:-1]) | (s[1:] != s[:-1])
    run_id = np.cumsum(new_run) - 1
    run_start = np.flatnonzero(new_run)
    run_end = np.append(run_start[1:], n) - 1  # inclusive
    pos = np.arange(n, dtype=np.float64)
    avg_pos = (run_start + run_end)[run_id] / 2.0  # 0-based global average position of the tie run
    new_group = np.ones(n, dtype=bool)
    new_group[1:] = g[1:] != g[:-1]
    group_start = pos[new_group][np.cumsum(new_group) - 1]
    return order, avg_pos - group_start + 1.0


def _per_group_auc(y: np.ndarray, p: np.ndarray, codes: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """(G,) AUC of each group (nan when it lacks a class) and (G,) its number of rows."""
    order, ranks = _grouped_average_ranks(codes, p)
    g, yy = codes[order], y[order]
    n = np.bincount(g, minlength=n_groups).astype(np.float64)
    n_pos = np.bincount(g, weights=yy, minlength=n_groups)
    rank_sum_pos = np.bincount(g, weights=ranks * yy, minlength=n_groups)
    n_neg = n - n_pos
    with np.errstate(divide="ignore", invalid="ignore"):
        aucs = (rank_sum_pos - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)
    aucs[(n_pos == 0) | (n_neg == 0)] = np.nan
    return aucs, n


def _binary(y: Any, name: str) -> np.ndarray:
    yy = _as_1d(y)
    if not np.isin(yy, (0.0, 1.0)).all():
        raise ValueError(f"{name}: labels must be 0/1 (drop masked rows first)")
    return yy


def auc(y: Any, p: Any) -> float:
    """ROC AUC of scores p for 0/1 labels y; ties get the average rank; nan when y has one class."""
    yy, pp = _binary(y, "auc"), _as_1d(p)
    _check_lengths("auc", yy, pp)
    if len(yy) == 0:
        return float("nan")
    aucs, _ = _per_group_auc(yy, pp, np.zeros(len(yy), dtype=np.int64), 1)
    return float(aucs[0])


def gauc_users(y: Any, p: Any, user_ids: Any) -> tuple[float, int]:
    """(GAUC, number of users it averages over); see gauc."""
    yy, pp = _binary(y, "gauc"), _as_1d(p)
    uu = np.asarray(user_ids).reshape(-1)
    _check_lengths("gauc", yy, pp, uu)
    if len(yy) == 0:
        return float("nan"), 0
    codes, n_users = _codes(uu)
    aucs, n = _per_group_auc(yy, pp, codes, n_users)
    ok = ~np.isnan(aucs)
    if not ok.any():
        return float("nan"), 0
    return float(np.sum(aucs[ok] * n[ok]) / np.sum(n[ok])), int(ok.sum())


def gauc(y: Any, p: Any, user_ids: Any) -> float:
    """Impression-weighted mean of per-user AUC over users having both classes; nan when there are none.

    GAUC = sum_u n_u * AUC_u / sum_u n_u, where n_u is user u's number of rows (impressions) and u ranges over the
    users with at least one positive and one negative.
    """
    return gauc_users(y, p, user_ids)[0]


def logloss(y: Any, p: Any, eps: float = EPS) -> float:
    """Mean binary cross-entropy of probabilities p (clipped to [eps, 1 - eps]) for 0/1 labels y."""
    yy, pp = _binary(y, "logloss"), np.clip(_as_1d(p), eps, 1.0 - eps)
    _check_lengths("logloss", yy, pp)
    if len(yy) == 0:
        return float("nan")
    return float(-np.mean(yy * np.log(pp) + (1.0 - yy) * np.log1p(-pp)))


def calibration(y: Any, p: Any) -> float:
    """Mean predicted probability / observed positive rate: 1 when calibrated on average; nan with no positive."""
    yy, pp = _binary(y, "calibration"), _as_1d(p)
    _check_lengths("calibration", yy, pp)
    rate = float(yy.mean()) if len(yy) else 0.0
    return float(pp.mean() / rate) if rate > 0 else float("nan")


def request_ndcg(score: Any, gain: Any, request_ids: Any, k: int = 10) -> float:
    """Mean over requests of NDCG@k of `score` within each request.

    Args:
        score: (N,) the model's ranking score of each impression (e.g. the blended score sum_a w_a * p_a).
        gain: (N,) the relevance of each impression, e.g. the same signed blend of its observed actions
            (sum_a w_a * y_a, so a negative action lowers it) or of the true probabilities p_<action> on synthetic
            data. Gains may be negative: a negative item ranked high lowers DCG, so NDCG can be < 0, never > 1.
        request_ids: (N,) the request (ranked list) of each impression.
        k: cut-off.

    DCG@k = sum over the top k by score of gain / log2(rank + 2) (rank 0-based); IDCG@k is the DCG of the same
    gains sorted best first. Tied scores are ordered worst gain first, so a constant score does not earn credit.
    Requests whose IDCG@k <= 0 (no positive gain) are left out of the mean; nan when none is left.
    """
    return request_ndcg_requests(score, gain, request_ids, k)[0]


def request_ndcg_requests(score: Any, gain: Any, request_ids: Any, k: int = 10) -> tuple[float, int]:
    """(request NDCG@k, number of requests it averages over); see request_ndcg."""
    ss, gg = _as_1d(score), _as_1d(gain)
    rr = np.asarray(request_ids).reshape(-1)
    _check_lengths("request_ndcg", ss, gg, rr)
    if k < 1:
        raise ValueError(f"request_ndcg: k must be >= 1, got {k}")
    if len(ss) == 0:
        return float("nan"), 0
    codes, n_req = _codes(rr)

    def dcg(order: np.ndarray) -> np.ndarray:
        g = codes[order]
        new_group = np.ones(len(g), dtype=bool)
        new_group[1:] = g[1:] != g[:-1]
        pos = np.arange(len(g))
        rank = pos - pos[new_group][np.cumsum(new_group) - 1]
        disc = np.where(rank < k, 1.0 / np.log2(rank + 2.0), 0.0)
        return np.bincount(g, weights=gg[order] * disc, minlength=n_req)

    actual = dcg(np.lexsort((gg, -ss, codes)))
    ideal = dcg(np.lexsort((-gg, codes)))
    ok = ideal > 0
    if not ok.any():
        return float("nan"), 0
    return float(np.mean(actual[ok] / ideal[ok])), int(ok.sum())


def blend_weights(tasks: Sequence[str]) -> dict[str, float]:
    """Default blend: +1 for each positive action, -1 for each negative one (core.actions polarity)."""
    return {t: (1.0 if BY_NAME[t].polarity is Polarity.POSITIVE else -1.0) for t in tasks}


def _action_metrics(
    y_all: np.ndarray, p_all: np.ndarray, users: np.ndarray, min_positives: int
) -> dict[str, Any] | str:
    """One action's metrics over its available rows (label not NaN), or why it is skipped (one class only)."""
    avail = ~np.isnan(y_all)
    y, p = y_all[avail], p_all[avail]
    positives = int(y.sum())
    negatives = int(len(y) - positives)
    if positives == 0 or negatives == 0:
        return f"one class among {len(y)} available rows ({positives} positives)"
    g, g_users = gauc_users(y, p, users[avail])
    return {
        "auc": auc(y, p),
        "gauc": g,
        "gauc_users": g_users,
        "logloss": logloss(y, p),
        "calibration": calibration(y, p),
        "positives": positives,
        "impressions": len(y),
        "rate": positives / len(y),
        "noisy": min(positives, negatives) < min_positives,
    }


def ranking_report(
    labels: pd.DataFrame,
    probs: Mapping[str, Any],
    user_ids: Any,
    request_ids: Any,
    tasks: Sequence[str],
    *,
    weights: Mapping[str, float] | None = None,
    k: int = 10,
    min_positives: int = MIN_POSITIVES,
) -> dict[str, Any]:
    """Per-action metrics of predicted probabilities, and NDCG@k of their blend within each request.

    Args:
        labels: one row per impression with a 0/1 column per task; NaN = task not available for that row (masked:
            the row is left out of that action's metrics).
        probs: action -> (N,) predicted probabilities, rows aligned with labels.
        user_ids, request_ids: (N,) the user and the request of each row.
        tasks: the actions to report (each must be a labels column and a probs key).
        weights: blend weights for the NDCG (default blend_weights: +1 positive, -1 negative actions).
        k: NDCG cut-off.
        min_positives: an action with fewer positives (or negatives) is flagged "noisy": too few to rank models.

    Returns:
        {"actions": {action: {"auc", "gauc", "gauc_users", "logloss", "calibration", "positives", "impressions",
                              "rate", "noisy"}},
         "skipped": {action: reason}   # fewer than 2 classes among its available rows
         "ndcg": {"k": k, "requests": number of requests with a positive ideal DCG, "value": NDCG@k of
                  sum_a w_a * p_a against the gain sum_a w_a * y_a (masked labels count 0)}}
    """
    n = len(labels)
    uu = np.asarray(user_ids).reshape(-1)
    rr = np.asarray(request_ids).reshape(-1)
    if len(uu) != n or len(rr) != n:
        raise ValueError(f"ranking_report: {n} label rows, {len(uu)} user ids, {len(rr)} request ids")
    per_action: dict[str, dict[str, Any]] = {}
    skipped: dict[str, str] = {}
    for task in tasks:
        p_all = _as_1d(probs[task])
        if len(p_all) != n:
            raise ValueError(f"ranking_report: {task}: {len(p_all)} probabilities for {n} rows")
        row = _action_metrics(labels[task].to_numpy(dtype=np.float64), p_all, uu, min_positives)
        if isinstance(row, str):
            skipped[task] = row
        else:
            per_action[task] = row
    w = dict(weights) if weights is not None else blend_weights(tasks)
    score = np.zeros(n)
    gain = np.zeros(n)
    for task, wt in w.items():
        score += wt * _as_1d(probs[task])
        gain += wt * np.nan_to_num(labels[task].to_numpy(dtype=np.float64), nan=0.0)
    ndcg_value, n_requests = request_ndcg_requests(score, gain, rr, k=k)
    return {
        "actions": per_action,
        "skipped": skipped,
        "ndcg": {"k": k, "requests": n_requests, "value": ndcg_value},
    }
