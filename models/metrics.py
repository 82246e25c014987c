"""Full-ranking retrieval metrics shared by the two-tower and the baselines.

One query has one relevant item (its target). Every corpus item is scored; the query's seen items are removed,
except the target itself (a re-engagement stays retrievable); ties rank the target LAST, so a model that scores
everything the same cannot score well; a target missing from the corpus counts as a miss (rank N). Recall@k is
P(rank < k) and NDCG@k is the mean of 1 / log2(rank + 2) over ranks < k (one relevant item, so IDCG = 1): the
definitions of models.train_retrieval.evaluate.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

RECALL_KS = (10, 50, 200, 1000)
NDCG_KS = (10, 50)


def corpus_columns(corpus: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Column of each id in a sorted, unique corpus of item ids: ids (...) int64 -> (...) int64, -1 when absent."""
    ids = np.asarray(ids, dtype=np.int64)
    if len(corpus) == 0:
        return np.full(ids.shape, -1, dtype=np.int64)
    pos = np.clip(np.searchsorted(corpus, ids), 0, len(corpus) - 1)
    return np.where(corpus[pos] == ids, pos, -1).astype(np.int64)


def mask_unborn(scores: torch.Tensor, created_ms: np.ndarray | None, request_ms: np.ndarray) -> torch.Tensor:
    """Scores with every item created after its query's request time at -inf (a new tensor): no index built by
    then could hold it, and the synthetic oracle (features.oracle) ranks only posts that exist at the request.

    Args:
        scores: (Q, N) float.
        created_ms: (N,) float creation time of each corpus item, NaN = unknown (kept); None = mask nothing.
        request_ms: (Q,) int request time of each query.
    """
    if created_ms is None:
        return scores
    created = torch.as_tensor(np.asarray(created_ms, dtype=np.float64), device=scores.device)  # (N,)
    request = torch.as_tensor(np.asarray(request_ms, dtype=np.float64), device=scores.device)  # (Q,)
    return scores.masked_fill(created[None, :] > request[:, None], float("-inf"))  # NaN compares False: kept


def mask_seen(scores: torch.Tensor, seen_cols: Sequence[np.ndarray], keep: np.ndarray | None = None) -> torch.Tensor:
    """A float copy of scores (Q, N) with each query's seen columns (seen_cols[q]; -1 and out-of-range entries
    ignored) at -inf, except column keep[q] ((Q,) int, e.g. the query's target) when given."""
    N = scores.shape[1]
    scores = scores.float().clone()
    rows, cols = [], []
    for q, seen in enumerate(seen_cols):
        c = np.asarray(seen, dtype=np.int64)
        c = c[(c >= 0) & (c < N) & ((c != keep[q]) if keep is not None else True)]
        rows.append(np.full(len(c), q, dtype=np.int64))
        cols.append(c)
    if rows:
        r_idx = torch.as_tensor(np.concatenate(rows), device=scores.device)
        c_idx = torch.as_tensor(np.concatenate(cols), device=scores.device)
        scores[r_idx, c_idx] = float("-inf")
    return scores


def target_ranks(scores: torch.Tensor, target_cols: torch.Tensor, seen_cols: Sequence[np.ndarray]) -> torch.Tensor:
    """0-based rank of each query's target among all corpus items, seen items removed.

    Args:
        scores: (Q, N) float scores of every corpus item (not modified).
        target_cols: (Q,) int64 corpus column of each target, -1 = not in the corpus.
        seen_cols: Q arrays of corpus columns the query has already seen (its history; -1 entries are ignored).
            They are scored -inf, except the target's own column.

    Returns:
        (Q,) int64 on scores' device: the number of other items scored >= the target (ties rank the target last);
        N for a target missing from the corpus.
    """
    Q, N = scores.shape
    if len(seen_cols) != Q or target_cols.shape != (Q,):
        raise ValueError(f"target_ranks: {Q} queries, {tuple(target_cols.shape)} targets, {len(seen_cols)} seen lists")
    target = target_cols.to(device=scores.device, dtype=torch.int64)  # (Q,)
    scores = mask_seen(scores, seen_cols, keep=target.cpu().numpy())  # (Q, N)
    target_score = scores.gather(1, target.clamp(min=0)[:, None])  # (Q, 1)
    rank = (scores >= target_score).sum(1) - 1  # (Q,): the target itself is one of the >= items
    return torch.where(target >= 0, rank, torch.full_like(rank, N))


def ranking_metrics(ranks: torch.Tensor | np.ndarray, n_items: int) -> dict[str, float]:
    """Recall@{10,50,200,1000} and NDCG@{10,50} averaged over queries.

    Args:
        ranks: (Q,) 0-based target ranks (`target_ranks`); n_items (or more) = a miss.
        n_items: N, the corpus size the ranks are out of (a cut-off k >= N still counts only ranks < k).

    Returns:
        {"recall@10", "recall@50", "recall@200", "recall@1000", "ndcg@10", "ndcg@50"} -> float.
    """
    rank = torch.as_tensor(ranks).double().cpu()  # (Q,)
    if rank.numel() == 0:
        raise ValueError("ranking_metrics: no queries")
    if (rank < 0).any() or (rank > n_items).any():
        raise ValueError(f"ranking_metrics: ranks outside [0, {n_items}]")
    metrics = {f"recall@{k}": float((rank < k).double().mean()) for k in RECALL_KS}
    gain = 1.0 / torch.log2(rank + 2.0)  # (Q,)
    metrics |= {f"ndcg@{k}": float(torch.where(rank < k, gain, 0.0).mean()) for k in NDCG_KS}
    return metrics
