"""Full-ranking retrieval metrics shared by the two-tower and the baselines.

One query has one relevant item (its target). Every corpus item is scored; the query's seen items are removed,
except the target itself (a re-engagement stays retrievable); ties rank the target LAST, so a model that scores
everything the same cannot score well; a target missing from the corpus counts as a miss (rank N). Recall@k is
P(rank < k) and NDCG@k is the mean of 1 / log2(rank + 2) over ranks < k (one relevant item, so IDCG = 1): the
definitions of models.retrieval.train.evaluate.
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


def target_ranks(
    scores: torch.Tensor,
    target_cols: torch.Tensor,
    seen_cols: Sequence[np.ndarray],
    created_ms: np.ndarray | None = None,
    request_ms: np.ndarray | None = None,
) -> torch.Tensor:
    """0-based rank of each query's target among all corpus items, seen items removed (and, with `created_ms`,
    items created after the query's request time: what `mask_unborn` then `mask_seen` would score -inf).

    Args:
        scores: (Q, N) float scores of every corpus item (not modified).
        target_cols: (Q,) int64 corpus column of each target, -1 = not in the corpus.
        seen_cols: Q arrays of corpus columns the query has already seen (its history; -1 entries are ignored).
            They are scored -inf, except the target's own column.
        created_ms: (N,) creation time of each corpus item (NaN = unknown, kept); None = none is masked.
        request_ms: (Q,) request time of each query; needed with `created_ms`.

    Returns:
        (Q,) int64 on scores' device: the number of other items scored >= the target (ties rank the target last);
        N for a target missing from the corpus. Exactly the ranks of `scores` with the masked items at -inf, counted
        without building that masked copy: one comparison pass over (Q, N), then a correction for the few seen items.
    """
    Q, N = scores.shape
    target, created, request = _rank_inputs(Q, target_cols, seen_cols, created_ms, request_ms, scores.device)
    rows, cols = _seen_pairs(seen_cols, target.cpu().numpy(), N)
    return _block_ranks(scores.float(), target, rows, cols, created, request)


def embedding_ranks(
    users: torch.Tensor,
    items: torch.Tensor,
    target_cols: torch.Tensor,
    seen_cols: Sequence[np.ndarray],
    created_ms: np.ndarray | None = None,
    request_ms: np.ndarray | None = None,
    block: int = 128,
) -> torch.Tensor:
    """`target_ranks` of the scores users @ items.T ((Q, D) and (N, D) float32), computed `block` queries at a time
    into one reused buffer: the (Q, N) score matrix is never held whole, and each block is counted while it is still
    in cache (on 2 cores, ~2.5x faster than scoring then counting a 1024-query batch). Same ranks, ties included:
    each target's own score is read from the same matrix product as the items it is compared with."""
    Q, N = users.shape[0], items.shape[0]
    target, created, request = _rank_inputs(Q, target_cols, seen_cols, created_ms, request_ms, users.device)
    rows, cols = _seen_pairs(seen_cols, target.cpu().numpy(), N)
    items_t = items.float().T.contiguous()  # (D, N)
    buffer = torch.empty(min(block, Q), N, dtype=torch.float32, device=users.device)
    out = torch.empty(Q, dtype=torch.int64, device=users.device)
    bounds = np.searchsorted(rows, np.arange(0, Q + block, block))  # seen pairs are sorted by query
    for b, lo in enumerate(range(0, Q, block)):
        hi = min(lo + block, Q)
        scores = torch.mm(users[lo:hi].float(), items_t, out=buffer[: hi - lo])
        pairs = slice(bounds[b], bounds[b + 1])
        out[lo:hi] = _block_ranks(
            scores, target[lo:hi], rows[pairs] - lo, cols[pairs], created, None if request is None else request[lo:hi]
        )
    return out


def _rank_inputs(
    Q: int,
    target_cols: torch.Tensor,
    seen_cols: Sequence[np.ndarray],
    created_ms: np.ndarray | None,
    request_ms: np.ndarray | None,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    if len(seen_cols) != Q or target_cols.shape != (Q,):
        raise ValueError(f"target_ranks: {Q} queries, {tuple(target_cols.shape)} targets, {len(seen_cols)} seen lists")
    target = target_cols.to(device=device, dtype=torch.int64)
    if created_ms is None:
        return target, None, None
    if request_ms is None or len(request_ms) != Q:
        raise ValueError("target_ranks: created_ms needs one request_ms per query")
    created = torch.as_tensor(np.asarray(created_ms, dtype=np.float64), device=device)
    return target, created, torch.as_tensor(np.asarray(request_ms, dtype=np.float64), device=device)


def _seen_pairs(seen_cols: Sequence[np.ndarray], keep: np.ndarray, N: int) -> tuple[np.ndarray, np.ndarray]:
    """The distinct (query, column) pairs scored -inf as seen, sorted by query: -1, out-of-range and each query's
    own target column (keep[q]) left out."""
    lengths = np.fromiter((len(c) for c in seen_cols), dtype=np.int64, count=len(seen_cols))
    if lengths.sum() == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    cols = np.concatenate([np.asarray(c, dtype=np.int64).ravel() for c in seen_cols])
    rows = np.repeat(np.arange(len(seen_cols), dtype=np.int64), lengths)
    ok = (cols >= 0) & (cols < N) & (cols != keep[rows])
    pair = np.unique(rows[ok] * N + cols[ok])
    return pair // N, pair % N


def _block_ranks(
    scores: torch.Tensor,
    target: torch.Tensor,
    rows: np.ndarray,
    cols: np.ndarray,
    created: torch.Tensor | None,
    request: torch.Tensor | None,
) -> torch.Tensor:
    """Ranks of one (q, N) float32 block (`target_ranks`): seen pairs (rows, cols) local to the block."""
    q, N = scores.shape
    col = target.clamp(min=0)
    t = scores.gather(1, col[:, None])  # (q, 1) the target's own score
    ge = scores >= t  # (q, N)
    if created is not None:
        assert request is not None
        unborn = created[None, :] > request[:, None]  # (q, N); NaN compares False: kept
        t = torch.where(unborn.gather(1, col[:, None]), float("-inf"), t)
        ge &= ~unborn
    count = ge.sum(1, dtype=torch.int32).to(torch.int64)  # born items >= the target's own score, itself included
    if len(rows):  # seen items (other than the target) are -inf: take back those counted above
        r = torch.as_tensor(rows, device=scores.device)
        c = torch.as_tensor(cols, device=scores.device)
        counted = scores[r, c] >= t[r, 0]
        if created is not None:
            assert request is not None
            counted &= ~(created[c] > request[r])
        count = count - torch.zeros(q, dtype=torch.int64, device=scores.device).index_add_(0, r, counted.long())
    # A target at -inf (masked as created after its request, or so scored) ties with every masked item: last of N.
    rank = torch.where(torch.isneginf(t[:, 0]), torch.full_like(count, N), count) - 1
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
