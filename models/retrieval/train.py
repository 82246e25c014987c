"""Training the two-tower: in-batch sampled softmax with logQ correction (plus optional uniform corpus negatives),
AdamW, early stopping on full-corpus validation Recall@K, resumable checkpoints.

Positives are the rows of a retrieval training set (clicked impressions). The other positives of a batch are its
negatives; since popular posts show up in batches more often, each in-batch logit is corrected by subtracting the
log of the post's expected count in the batch (Yi et al. 2019, "Sampling-bias-corrected neural modeling").

Launched by torchrun (WORLD_SIZE > 1), `train` runs data-parallel (DistributedDataParallel): see `distributed_context`
and `models.training.rank_batches` for how the work is split and which rank writes what.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from core.errors import UserError
from models.model_config import config_dataclass
from models.retrieval.data import RetrievalBatch, RetrievalDataset, candidate_features, epoch_ms
from models.retrieval.model import CandidateFeatures, TwoTower, TwoTowerConfig, load_two_tower, save
from models.training import (
    TRAIN_THREADS,
    DistContext,
    Loop,
    ModelFiles,
    TrainResult,
    adamw,
    autocast,
    device_for,
    distributed_context,
    intra_op_threads,
    rank_batches,
    run_epochs,
    settings_json,
)

RECALL_KS = (10, 50, 200, 1000)
NDCG_KS = (10, 50)


@config_dataclass
class TrainConfig:
    """Optimisation and evaluation settings (the model's own settings are in TwoTowerConfig)."""

    epochs: int = 10
    batch_size: int = 256
    lr: float = 3e-3
    weight_decay: float = 0.01  # on Linear weights only: decaying hash tables shrinks rows that are rarely seen
    grad_clip: float = 1.0
    logq_correction: bool = True
    # Uniform corpus negatives per batch (shared by its rows). In-batch negatives are all clicked posts seen at their
    # own request time; only corpus negatives show never-clicked and stale posts (nano: Recall@10 0.005 -> 0.11).
    n_negatives: int = 128
    patience: int = 2  # epochs without a better validation metric before stopping
    select_k: int = 50  # early stopping and the best checkpoint follow Recall@select_k
    max_eval_rows: int = 20_000  # validation queries (a seeded sample beyond this)
    eval_batch_size: int = 512
    seed: int = 0
    threads: int = TRAIN_THREADS  # torch intra-op threads while training (models.training.TRAIN_THREADS); 0 = torch's

    def __post_init__(self) -> None:
        if self.threads < 0:
            raise UserError(f"train.threads: must be >= 0, got {self.threads}")
        if self.select_k not in RECALL_KS:
            raise UserError(f"select_k: {self.select_k} is not one of the reported cut-offs {RECALL_KS}")


def item_log_q(post_ids: np.ndarray) -> np.ndarray:
    """(N,) log frequency of each row's post among the training positives: log q(item) of in-batch sampling."""
    ids, inverse, counts = np.unique(post_ids, return_inverse=True, return_counts=True)
    return np.log(counts / len(post_ids))[inverse].astype(np.float32)


def sampled_softmax_loss(
    user_emb: torch.Tensor,
    cand_emb: torch.Tensor,
    item_ids: torch.Tensor,
    temperature: torch.Tensor | float,
    log_q: torch.Tensor | None = None,
    neg_emb: torch.Tensor | None = None,
    neg_ids: torch.Tensor | None = None,
    neg_log_q: float = 0.0,
) -> torch.Tensor:
    """Softmax over the batch's positives (+ uniform negatives); the positive of row i is column i.

    Each column's logit is cos / T - log(expected draws of that item): log(B q_j) for in-batch columns,
    log(M / corpus size) for the M uniform ones. Other rows' copies of row i's item and negatives equal to it are
    masked out (they are not negatives).

    Args:
        user_emb: (B, D) unit-norm.
        cand_emb: (B, D) unit-norm embeddings of each row's positive.
        item_ids: (B,) int64 post ids of the positives.
        temperature: T.
        log_q: (B,) log probability that one in-batch draw is the row's post; None = no correction.
        neg_emb: (M, D) uniform negatives; neg_ids (M,) their post ids; neg_log_q: log(1 / corpus size).

    Returns:
        () mean cross-entropy.
    """
    B = user_emb.shape[0]
    logits = user_emb.float() @ cand_emb.float().T / temperature  # (B, B)
    if log_q is not None:
        logits = logits - (log_q.float() + math.log(B))[None, :]
    same = (item_ids[:, None] == item_ids[None, :]) & ~torch.eye(B, dtype=torch.bool, device=logits.device)
    logits = logits.masked_fill(same, float("-inf"))
    if neg_emb is not None and neg_ids is not None:
        M = neg_emb.shape[0]
        neg = user_emb.float() @ neg_emb.float().T / temperature  # (B, M)
        if log_q is not None:
            neg = neg - (neg_log_q + math.log(M))
        neg = neg.masked_fill(item_ids[:, None] == neg_ids[None, :], float("-inf"))
        logits = torch.cat([logits, neg], 1)  # (B, B + M)
    return F.cross_entropy(logits, torch.arange(B, device=logits.device))


class TwoTowerTrainTask(nn.Module):
    """The model plus its training loss; `forward` returns the loss of a batch (the model itself never does).

    Args:
        model: the two-tower.
        corpus: the posts uniform negatives are drawn from (None, or n_negatives = 0: in-batch only).
        n_negatives: M, uniform negatives per batch.
        logq_correction: subtract log q from every logit.
    """

    def __init__(
        self, model: TwoTower, corpus: CandidateFeatures | None, n_negatives: int = 0, logq_correction: bool = True
    ) -> None:
        super().__init__()
        self.model, self.corpus, self.n_negatives, self.logq_correction = model, corpus, n_negatives, logq_correction

    def forward(self, batch: RetrievalBatch, generator: torch.Generator | None = None) -> torch.Tensor:
        """() loss; `generator` (CPU) draws the uniform negatives."""
        user_emb, cand_emb = self.model(batch.user, batch.candidate)  # (B, D), (B, D)
        neg_emb = neg_ids = None
        if self.corpus is not None and self.n_negatives > 0:
            pick = torch.randint(len(self.corpus), (self.n_negatives,), generator=generator)
            negatives = self.corpus.rows(pick).to(user_emb.device)
            neg_emb, neg_ids = self.model.candidate_embedding(negatives), negatives.post_ids  # (M, D), (M,)
        return sampled_softmax_loss(
            user_emb,
            cand_emb,
            batch.candidate.post_ids,
            self.model.temperature,
            log_q=batch.log_q if self.logq_correction else None,
            neg_emb=neg_emb,
            neg_ids=neg_ids,
            neg_log_q=-math.log(len(self.corpus)) if self.corpus is not None else 0.0,
        )


@torch.no_grad()
def embed_corpus(model: TwoTower, corpus: CandidateFeatures, batch_size: int = 4096) -> torch.Tensor:
    """(N, D) float32 candidate embeddings of the corpus, on the model's device."""
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(corpus), batch_size):
        with autocast(device):
            out.append(model.candidate_embedding(corpus.rows(slice(start, start + batch_size)).to(device)).float())
    return torch.cat(out)


@torch.no_grad()
def evaluate(
    model: TwoTower, queries: RetrievalDataset, corpus: CandidateFeatures, batch_size: int = 512
) -> dict[str, float]:
    """Full-corpus retrieval metrics: Recall@{10,50,200,1000} and NDCG@{10,50}, averaged over queries.

    Every corpus post is scored; the query's seen posts (its whole history) are removed, except the target itself
    (a re-engagement stays retrievable). Ties rank the target last, so a collapsed model cannot score well. A target
    missing from the corpus counts as a miss.

    Args:
        queries: one query per row; its post is the single relevant item.
        corpus: the N posts to retrieve from (unique post ids).
    """
    model.eval()
    device = next(model.parameters()).device
    item_emb = embed_corpus(model, corpus)  # (N, D)
    corpus_ids = corpus.post_ids.numpy()
    order = np.argsort(corpus_ids)
    sorted_ids = corpus_ids[order]

    def column(ids: np.ndarray) -> np.ndarray:
        """Corpus column of each id, -1 when absent."""
        pos = np.clip(np.searchsorted(sorted_ids, ids), 0, len(sorted_ids) - 1)
        return np.where(sorted_ids[pos] == ids, order[pos], -1)

    ranks = []
    for start in range(0, len(queries), batch_size):
        rows = torch.arange(start, min(start + batch_size, len(queries)))
        batch = queries[rows].to(device)
        with autocast(device):
            scores = (model.user_embedding(batch.user).float() @ item_emb.T).float()  # (b, N)
        target = torch.as_tensor(column(batch.candidate.post_ids.cpu().numpy()), device=device)  # (b,)
        seen_r, seen_c = [], []
        for r, i in enumerate(rows.tolist()):
            cols = column(queries.seen[i])
            cols = cols[(cols >= 0) & (cols != int(target[r]))]
            seen_r.append(np.full(len(cols), r))
            seen_c.append(cols)
        if seen_r:
            r_idx, c_idx = torch.as_tensor(np.concatenate(seen_r)), torch.as_tensor(np.concatenate(seen_c))
            scores[r_idx.to(device), c_idx.to(device)] = float("-inf")
        target_score = scores.gather(1, target.clamp(min=0)[:, None])  # (b, 1)
        rank = (scores >= target_score).sum(1) - 1  # (b,) 0 = first
        ranks.append(torch.where(target >= 0, rank, len(corpus_ids)).cpu())
    rank = torch.cat(ranks).double()
    metrics = {f"recall@{k}": float((rank < k).double().mean()) for k in RECALL_KS}
    metrics |= {f"ndcg@{k}": float(torch.where(rank < k, 1 / torch.log2(rank + 2), 0.0).mean()) for k in NDCG_KS}
    return metrics


def train(
    config: TwoTowerConfig,
    train_df: pd.DataFrame,
    valid_df: pd.DataFrame,
    corpus_df: pd.DataFrame,
    train_cfg: TrainConfig | None = None,
    out: Path | None = None,
    resume: bool = False,
    evaluate_fn: Callable[[TwoTower, RetrievalDataset, CandidateFeatures], dict[str, float]] | None = None,
    log: Callable[[str], None] | None = None,
) -> TrainResult[TwoTower]:
    """Trains the two-tower with early stopping on validation Recall@select_k.

    Args:
        config: the model.
        train_df, valid_df: retrieval training sets (models.retrieval.data.temporal_split of one).
        corpus_df: one row per post to retrieve from (models.retrieval.data.corpus_from_rows); post age is measured
            at the newest validation time, as an index built then would see it.
        out: where `checkpoint.pt` (model + optimizer + progress, every epoch), `config.json` and `best/`
            (models.retrieval.model.save of the best epoch) go; None keeps everything in memory.
        resume: continue from `out/checkpoint.pt` at the epoch after the saved one.
        evaluate_fn: replaces `evaluate` (tests).
        log: receives one line per epoch.

    Data-parallel (launched by torchrun, see `distributed_context`): every rank builds the same seeded model, loads
    the checkpoint when resuming and trains its share of each epoch's batches (`rank_batches`) with gradients
    averaged by DistributedDataParallel; all ranks draw the same uniform negatives at each step (the same seeded
    generator). Rank 0 alone evaluates, logs and writes `out`; it broadcasts each epoch's history entry, from which
    every rank makes the same best-epoch and early-stopping decision. `train_loss` is the mean over all ranks' steps;
    `step_losses` are this rank's own.

    Returns:
        the best epoch's model, its metrics and the per-epoch history (the same on every rank).
    """
    tc = train_cfg or TrainConfig()
    if len(train_df) == 0 or len(valid_df) == 0 or len(corpus_df) == 0:
        raise UserError(f"train: empty input (train {len(train_df)}, valid {len(valid_df)}, corpus {len(corpus_df)})")
    ctx = distributed_context()
    try:
        with intra_op_threads(tc.threads):
            result = _train(ctx, config, train_df, valid_df, corpus_df, tc, out, resume, evaluate_fn, log)
        if ctx.distributed:
            dist.barrier()  # rank 0's last writes are done before any rank returns
        return result
    finally:
        if ctx.owns_group:
            dist.destroy_process_group()


def _train(
    ctx: DistContext,
    config: TwoTowerConfig,
    train_df: pd.DataFrame,
    valid_df: pd.DataFrame,
    corpus_df: pd.DataFrame,
    tc: TrainConfig,
    out: Path | None,
    resume: bool,
    evaluate_fn: Callable[[TwoTower, RetrievalDataset, CandidateFeatures], dict[str, float]] | None,
    log: Callable[[str], None] | None,
) -> TrainResult[TwoTower]:
    torch.manual_seed(tc.seed)
    device = device_for(ctx)
    model = TwoTower(config).to(device)
    optimizer = adamw(model, tc.lr, tc.weight_decay)

    train_ds = RetrievalDataset(train_df, config, item_log_q(train_df["post_id"].to_numpy()))
    if len(valid_df) > tc.max_eval_rows:
        valid_df = valid_df.sample(tc.max_eval_rows, random_state=tc.seed).sort_index()
    valid_ds = RetrievalDataset(valid_df, config)
    corpus = candidate_features(corpus_df, config, now_ms=int(epoch_ms(valid_df["event_timestamp"]).max()))
    task: nn.Module = TwoTowerTrainTask(model, corpus, tc.n_negatives, tc.logq_correction)
    evaluate_fn = evaluate_fn or (lambda m, q, c: evaluate(m, q, c, tc.eval_batch_size))

    def batches(generator: torch.Generator) -> Iterable[RetrievalBatch]:
        if ctx.distributed:
            return (train_ds[rows] for rows in rank_batches(len(train_ds), tc.batch_size, generator, ctx))
        return train_ds.loader(tc.batch_size, shuffle=True, generator=generator)

    loop = Loop(tc.epochs, tc.patience, tc.grad_clip, tc.seed, f"recall@{tc.select_k}", settings_json(tc))
    files = ModelFiles(
        config,
        save_best=lambda path: save(model, path),
        load_best=lambda path: load_two_tower(path).state_dict(),
        same_config=lambda text: TwoTowerConfig.from_json(text) == config,
    )
    done = run_epochs(
        ctx, model, task, optimizer, loop, files, batches, lambda: evaluate_fn(model, valid_ds, corpus),
        out=out, resume=resume, log=log,
    )  # fmt: skip
    best = next(h for h in done.history if h["epoch"] == done.best_epoch)
    metrics = {k: v for k, v in best.items() if "@" in k}
    return TrainResult[TwoTower](model.eval(), done.best_epoch, metrics, done.history, done.step_losses)
