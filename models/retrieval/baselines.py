"""Sequential-retrieval baselines under the models.retrieval.sequences protocol: MostPopular, ItemKNN and SASRec.

All three share one interface over a fixed corpus (a sorted array of unique post ids, N = len(corpus)):

    model.fit(train_events)            # an events frame (models.retrieval.sequences)
    model.score(histories)             # Q arrays of history post ids, oldest first -> (Q, N) float32 scores

and are evaluated by full ranking with models.retrieval.metrics (seen items removed, ties rank the target last).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, Self

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

from core.errors import UserError
from models.layers import Block, RMSNorm, Rotary
from models.model_config import config_dataclass
from models.retrieval.metrics import corpus_columns, ranking_metrics, target_ranks
from models.retrieval.sequences import user_histories


class Retriever(Protocol):
    """What evaluate_baselines needs of a baseline."""

    corpus: np.ndarray

    def score(self, histories: Sequence[np.ndarray]) -> torch.Tensor: ...


def make_corpus(*frames: pd.DataFrame) -> np.ndarray:
    """(N,) int64 sorted unique post ids of events frames: the items every baseline ranks."""
    return np.unique(np.concatenate([f["post_id"].to_numpy(dtype=np.int64) for f in frames]))


def _check_corpus(corpus: np.ndarray) -> np.ndarray:
    corpus = np.asarray(corpus, dtype=np.int64)
    if len(corpus) == 0 or (len(corpus) > 1 and not (np.diff(corpus) > 0).all()):
        raise UserError(f"corpus: need a non-empty, sorted array of unique post ids (got {len(corpus)} ids)")
    return corpus


class MostPopular:
    """Scores every item by its number of train positives; the same ranking for every query."""

    def __init__(self, corpus: np.ndarray) -> None:
        self.corpus = _check_corpus(corpus)
        self.counts = np.zeros(len(self.corpus), dtype=np.float32)  # (N,)

    def fit(self, train_events: pd.DataFrame) -> Self:
        cols = corpus_columns(self.corpus, train_events["post_id"].to_numpy())
        self.counts = np.bincount(cols[cols >= 0], minlength=len(self.corpus)).astype(np.float32)
        return self

    def score(self, histories: Sequence[np.ndarray]) -> torch.Tensor:
        """(Q, N): the popularity of each item, for each query."""
        return torch.from_numpy(self.counts).expand(len(histories), -1)


class ItemKNN:
    """Item-item collaborative filtering: cosine similarity of items' user sets, score = summed similarity to the
    history items.

    sim(i, j) = |U_i & U_j| / (sqrt(|U_i| |U_j|) + shrink), diagonal 0, each item keeping its `neighbors` most similar
    items (sparse throughout, so it scales to 100k items).

    Args:
        last_k: score from only the newest k history items (None = all).
        neighbors: similar items kept per item (None = all).
        shrink: added to the cosine denominator, damping similarities of rare items.
    """

    def __init__(
        self, corpus: np.ndarray, last_k: int | None = None, neighbors: int | None = 200, shrink: float = 0.0
    ) -> None:
        self.corpus = _check_corpus(corpus)
        self.last_k, self.neighbors, self.shrink = last_k, neighbors, shrink
        self.sim: sp.csr_matrix = sp.csr_matrix((len(self.corpus), len(self.corpus)), dtype=np.float32)

    def fit(self, train_events: pd.DataFrame) -> Self:
        N = len(self.corpus)
        cols = corpus_columns(self.corpus, train_events["post_id"].to_numpy())
        users = train_events["user_id"].to_numpy(dtype=np.int64)[cols >= 0]
        cols = cols[cols >= 0]
        _, rows = np.unique(users, return_inverse=True)
        x = sp.csr_matrix((np.ones(len(cols), np.float32), (rows, cols)), shape=(int(rows.max(initial=-1)) + 1, N))
        x.data[:] = 1.0  # repeated (user, item) pairs count once
        co = (x.T @ x).tocsr()  # (N, N) co-occurrence counts
        co.setdiag(0.0)
        co.eliminate_zeros()
        norm = np.sqrt(np.asarray(x.sum(0)).ravel())  # (N,) sqrt |U_i|
        co = co.tocoo()
        data = co.data / (norm[co.row] * norm[co.col] + self.shrink)
        sim = sp.csr_matrix((data.astype(np.float32), (co.row, co.col)), shape=(N, N))
        self.sim = _top_per_row(sim, self.neighbors) if self.neighbors is not None else sim
        return self

    def score(self, histories: Sequence[np.ndarray]) -> torch.Tensor:
        """(Q, N): for each query, the sum over its history items h of sim(h, item)."""
        rows, cols = [], []
        for q, h in enumerate(histories):
            c = corpus_columns(self.corpus, np.asarray(h)[-self.last_k :] if self.last_k else np.asarray(h))
            c = np.unique(c[c >= 0])
            rows.append(np.full(len(c), q))
            cols.append(c)
        r, c = (np.concatenate(rows), np.concatenate(cols)) if rows else (np.zeros(0, int), np.zeros(0, int))
        query = sp.csr_matrix((np.ones(len(c), np.float32), (r, c)), shape=(len(histories), len(self.corpus)))
        return torch.from_numpy(np.asarray((query @ self.sim).todense(), dtype=np.float32))


def _top_per_row(m: sp.csr_matrix, k: int) -> sp.csr_matrix:
    """The k largest entries of each row of a CSR matrix (ties: lower column first)."""
    m.sort_indices()
    keep = np.zeros(m.nnz, dtype=bool)
    for i in range(m.shape[0]):
        lo, hi = m.indptr[i], m.indptr[i + 1]
        if hi - lo <= k:
            keep[lo:hi] = True
        else:
            keep[lo + np.argsort(-m.data[lo:hi], kind="stable")[:k]] = True
    row = np.repeat(np.arange(m.shape[0]), np.diff(m.indptr))
    return sp.csr_matrix((m.data[keep], (row[keep], m.indices[keep])), shape=m.shape)


# SASRec


@config_dataclass
class SASRecConfig:
    """SASRec (Kang & McAuley 2018) with the losses of Klenitskiy & Vasilev 2023 (full-softmax cross-entropy)."""

    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 2
    ffn_mult: float = 2.0
    gate: str = "geglu"
    max_len: int = 50  # L: the newest L items of a sequence are read
    dropout: float = 0.2  # on the input embeddings and the final hidden states
    full_softmax_max_items: int = 20_000  # above this, sampled softmax with n_negatives uniform negatives
    n_negatives: int = 256
    lr: float = 2e-3
    weight_decay: float = 0.01
    batch_size: int = 128
    epochs: int = 200
    patience: int = 5  # evaluations without a better validation NDCG@10 before stopping
    eval_every: int = 2  # epochs between validation evaluations
    budget_seconds: float = 300.0  # training stops after the first evaluation past this wall time
    seed: int = 0

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "nano": dict(d_model=32, n_layers=1, n_heads=2, max_len=32, dropout=0.0, lr=3e-3, epochs=60, eval_every=5),
        "small": {},
    }

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> Self:
        """A named preset (nano | small) with optional field overrides."""
        if name not in cls.PRESETS:
            raise UserError(f"SASRecConfig: unknown preset {name!r} (choose from {', '.join(cls.PRESETS)})")
        return cls(**{**cls.PRESETS[name], **overrides})


class SASRecModel(nn.Module):
    """Causal transformer over item sequences; the hidden state at position t predicts the item at t + 1.

    Items are corpus columns + 1 (0 = padding). Sequences are LEFT-padded, so the newest item is always the last
    position and the learned position embedding counts from the end.
    """

    def __init__(self, n_items: int, cfg: SASRecConfig) -> None:
        super().__init__()
        self.cfg = cfg
        D = cfg.d_model
        self.item_emb = nn.Embedding(n_items + 1, D, padding_idx=0)
        self.pos_emb = nn.Embedding(cfg.max_len, D)
        self.rotary = Rotary(D // cfg.n_heads, cfg.max_len)
        self.blocks = nn.ModuleList(
            Block(D, cfg.n_heads, cfg.n_heads, cfg.ffn_mult, cfg.gate) for _ in range(cfg.n_layers)
        )
        self.norm = RMSNorm(D)
        self.drop = nn.Dropout(cfg.dropout)
        nn.init.normal_(self.item_emb.weight, std=D**-0.5)
        nn.init.normal_(self.pos_emb.weight, std=0.02)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        """items (B, L) int64 left-padded -> (B, L, D) hidden states (garbage at padding positions)."""
        B, L = items.shape
        valid = items != 0  # (B, L)
        h = self.item_emb(items) * math.sqrt(self.cfg.d_model) + self.pos_emb.weight[-L:]  # (B, L, D)
        h = self.drop(h * valid.unsqueeze(-1))
        causal = torch.ones(L, L, dtype=torch.bool, device=items.device).tril()  # (L, L)
        # Keys: valid earlier items; a padding query may see itself so no row is fully masked (no NaN).
        mask = (causal & valid[:, None, :]) | torch.eye(L, dtype=torch.bool, device=items.device)  # (B, L, L)
        cos, sin = self.rotary(L)
        for block in self.blocks:
            h = block(h, cos, sin, mask[:, None])
        return self.drop(self.norm(h))

    def item_weights(self) -> torch.Tensor:
        """(N, D) output embeddings of the corpus (tied with the input table, padding row dropped)."""
        return self.item_emb.weight[1:]


def _left_pad(seqs: Sequence[np.ndarray], length: int) -> torch.Tensor:
    """(B, length) int64: the newest `length` items of each sequence, left-padded with 0."""
    out = np.zeros((len(seqs), length), dtype=np.int64)
    for i, s in enumerate(seqs):
        s = s[-length:]
        if len(s):
            out[i, -len(s) :] = s
    return torch.from_numpy(out)


@dataclass
class SASRecResult:
    best_epoch: int
    best_ndcg10: float
    seconds: float
    history: list[dict[str, float]]  # one entry per evaluation: epoch, train_loss, seconds, validation metrics


class SASRec:
    """SASRec behind the baseline interface; `fit` trains with early stopping when validation targets are given."""

    def __init__(self, corpus: np.ndarray, cfg: SASRecConfig | None = None, device: str | None = None) -> None:
        self.corpus = _check_corpus(corpus)
        self.cfg = cfg or SASRecConfig()
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        torch.manual_seed(self.cfg.seed)
        self.model = SASRecModel(len(self.corpus), self.cfg).to(self.device)
        self.result: SASRecResult | None = None

    def _tokens(self, post_ids: np.ndarray) -> np.ndarray:
        cols = corpus_columns(self.corpus, post_ids)
        return cols[cols >= 0] + 1

    def fit(
        self,
        train_events: pd.DataFrame,
        valid: pd.DataFrame | None = None,
        log: Callable[[str], None] | None = None,
    ) -> Self:
        """Trains on each user's train sequence (one pass per sequence per epoch, loss at every position) and keeps
        the weights of the best validation NDCG@10 (the last epoch's without `valid`).

        Args:
            train_events: events frame; also the history of the validation targets.
            valid: validation targets (events rows), scored by full ranking with seen items removed.
        """
        self.result = train_sasrec(self, train_events, valid, log)
        return self

    @torch.no_grad()
    def score(self, histories: Sequence[np.ndarray], batch_size: int = 512) -> torch.Tensor:
        """(Q, N) float32 on CPU: last-position hidden state . item embeddings (an empty history scores from
        padding only, i.e. a learned constant ranking)."""
        self.model.eval()
        out = []
        for start in range(0, len(histories), batch_size):
            seqs = [self._tokens(np.asarray(h)) for h in histories[start : start + batch_size]]
            h = self.model(_left_pad(seqs, self.cfg.max_len).to(self.device))[:, -1]  # (b, D)
            out.append((h @ self.model.item_weights().T).float().cpu())  # (b, N)
        return torch.cat(out) if out else torch.zeros(0, len(self.corpus))


def _sequence_loss(model: SASRecModel, batch: torch.Tensor, cfg: SASRecConfig, gen: torch.Generator) -> torch.Tensor:
    """() mean next-item cross-entropy over every non-padding position of batch (B, L + 1)."""
    inputs, targets = batch[:, :-1], batch[:, 1:]  # (B, L) each
    h = model(inputs)  # (B, L, D)
    valid = (targets != 0) & (inputs != 0)
    h, targets = h[valid], targets[valid]  # (P, D), (P,)
    weights = model.item_weights()  # (N, D)
    if weights.shape[0] <= cfg.full_softmax_max_items:
        return F.cross_entropy(h @ weights.T, targets - 1)
    # Sampled softmax: the positive against M uniform negatives shared by the batch (a negative equal to the
    # positive is masked out).
    neg = torch.randint(1, weights.shape[0] + 1, (cfg.n_negatives,), generator=gen).to(h.device)  # (M,)
    pos_logit = (h * model.item_emb(targets)).sum(-1, keepdim=True)  # (P, 1)
    neg_logit = (h @ model.item_emb(neg).T).masked_fill(targets[:, None] == neg[None, :], float("-inf"))  # (P, M)
    logits = torch.cat([pos_logit, neg_logit], 1)
    return F.cross_entropy(logits, torch.zeros(len(targets), dtype=torch.long, device=h.device))


def evaluate_retriever(
    model: Retriever, history_events: pd.DataFrame, targets: pd.DataFrame, created_ms: np.ndarray | None = None
) -> dict[str, float]:
    """Full-ranking metrics of one baseline: each target ranked among the corpus, its history's items removed, and
    with created_ms ((N,) per corpus item) the items created after the target's time too (`mask_unborn`)."""
    histories = user_histories(history_events, targets)
    target_cols = torch.as_tensor(corpus_columns(model.corpus, targets["post_id"].to_numpy()))
    request_ms = targets["ts_ms"].to_numpy()
    ranks, step = [], max(1, min(1024, 2**24 // len(model.corpus)))  # at most ~16M scores (64 MB) at a time
    for start in range(0, len(targets), step):
        chunk = histories[start : start + step]
        seen = [corpus_columns(model.corpus, h) for h in chunk]
        cols, request = target_cols[start : start + len(chunk)], request_ms[start : start + len(chunk)]
        ranks.append(target_ranks(model.score(chunk), cols, seen, created_ms, request).cpu())
    return ranking_metrics(torch.cat(ranks), len(model.corpus))


def train_sasrec(
    sasrec: SASRec,
    train_events: pd.DataFrame,
    valid: pd.DataFrame | None = None,
    log: Callable[[str], None] | None = None,
) -> SASRecResult:
    """AdamW over shuffled user sequences; evaluates every cfg.eval_every epochs and stops after cfg.patience
    evaluations without a better validation NDCG@10, after cfg.epochs, or past cfg.budget_seconds; restores the
    best weights."""
    cfg, model, device = sasrec.cfg, sasrec.model, sasrec.device
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    seqs = [
        s[-(cfg.max_len + 1) :]
        for s in (sasrec._tokens(g.to_numpy()) for _, g in train_events.groupby("user_id", sort=True)["post_id"])
        if len(s) >= 2
    ]
    if not seqs:
        raise UserError("SASRec: no user has 2 or more train events in the corpus")
    data = _left_pad(seqs, cfg.max_len + 1)  # (U, L + 1)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "emb" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "emb" not in n)]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0.0}], lr=cfg.lr
    )
    t0 = time.perf_counter()
    best_epoch, best, bad, history = 0, -math.inf, 0, []
    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    losses: list[float] = []
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        for idx in torch.randperm(len(data), generator=gen).split(cfg.batch_size):
            loss = _sequence_loss(model, data[idx].to(device), cfg, gen)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            losses.append(loss.item())
        over_budget = time.perf_counter() - t0 > cfg.budget_seconds
        if epoch % cfg.eval_every and epoch != cfg.epochs and not over_budget:
            continue
        entry: dict[str, float] = {"epoch": epoch, "train_loss": float(np.mean(losses)), "seconds": 0.0}
        losses = []
        if valid is not None and len(valid):
            entry |= evaluate_retriever(sasrec, train_events, valid)
        metric = entry.get("ndcg@10", float(epoch))  # without validation: the newest epoch is the best
        entry["seconds"] = time.perf_counter() - t0
        history.append(entry)
        if log is not None:
            log(" ".join(f"{k}={v:.4f}" for k, v in entry.items()))
        if metric > best:
            best_epoch, best, bad = epoch, metric, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            bad += 1
        if bad >= cfg.patience or over_budget:
            break
    model.load_state_dict(best_state)
    model.eval()
    return SASRecResult(best_epoch, best if valid is not None else math.nan, time.perf_counter() - t0, history)


BASELINES = ("most_popular", "item_knn", "sasrec")


def evaluate_baselines(
    train_events: pd.DataFrame,
    valid: pd.DataFrame,
    test: pd.DataFrame,
    corpus: np.ndarray,
    test_history: pd.DataFrame | None = None,
    sasrec: SASRecConfig | None = None,
    item_knn: dict[str, Any] | None = None,
    names: Sequence[str] = BASELINES,
    log: Callable[[str], None] | None = None,
    created_ms: np.ndarray | None = None,
) -> dict[str, dict[str, float]]:
    """Fits each baseline on train_events and reports its full-ranking test metrics (plus "valid_ndcg@10", and for
    SASRec "seconds" of training and "best_epoch").

    Args:
        valid, test: target events (models.retrieval.sequences.Split); SASRec early-stops on valid.
        corpus: (N,) sorted unique post ids ranked for every query (make_corpus).
        test_history: the events test targets' histories come from (Split.test_history); None = train + valid.
        sasrec: its config (default SASRecConfig()); item_knn: ItemKNN keyword arguments.
        created_ms: (N,) creation time of each corpus item: items created after a target's time are not ranked
            (evaluate_retriever); None = every item is.
    """
    unknown = set(names) - set(BASELINES)
    if unknown:
        raise UserError(f"baselines: unknown {sorted(unknown)} (choose from {', '.join(BASELINES)})")
    if test_history is None:
        test_history = pd.concat([train_events, valid], ignore_index=True)
    out: dict[str, dict[str, float]] = {}
    for name in names:
        extra: dict[str, float] = {}
        model: MostPopular | ItemKNN | SASRec
        if name == "most_popular":
            model = MostPopular(corpus).fit(train_events)
        elif name == "item_knn":
            model = ItemKNN(corpus, **(item_knn or {})).fit(train_events)
        else:
            model = SASRec(corpus, sasrec).fit(train_events, valid, log)
            assert model.result is not None
            extra = {"seconds": model.result.seconds, "best_epoch": float(model.result.best_epoch)}
        valid_metrics = evaluate_retriever(model, train_events, valid, created_ms) if len(valid) else {}
        out[name] = {**evaluate_retriever(model, test_history, test, created_ms), **extra}
        if valid_metrics:
            out[name]["valid_ndcg@10"] = valid_metrics["ndcg@10"]
    return out
