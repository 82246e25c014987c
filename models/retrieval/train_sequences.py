"""One-pass sequence training of the two-tower (SASRec-style): each user sequence is encoded once by the causal user
tower and the user embedding after every position i (`TwoTower.prefix_user_embeddings`) is trained to retrieve
event i + 1, so a sequence of length L costs one pass instead of L (models.retrieval.train re-encodes every prefix).

Sequences. A user's train events (models.retrieval.sequences order) are cut into windows of at most max_history + 1
events, newest first: the newest window ends at the last event, each older one ends where the next starts, so every
event but the user's first is the target of exactly one prefix (`SequenceTrainConfig.max_windows` keeps only the newest
few). Inputs are a window's first S = max_history events, targets its events 1..S.

Time gaps. UserFeatures.hist_gap_ms is normally "request time - event time" (models.retrieval.data.user_features), which
differs for every prefix of a sequence, so one pass cannot reproduce it. Sequence mode therefore uses *predecessor
gaps*: the gap of an event is the time since the user's previous event (unknown for the first). An event's gap is
fixed when it happens and reads nothing after it, so prefix i sees exactly what a request after event i would, and
no gap reads the request time. Under leave-one-out the request time IS the held-out target's timestamp: the
successor gaps used before (the newest event's gap = request time - its time) told the tower when the target
happened (ML-100K test NDCG@10 0.0943 with them, nano, 60 s; tests/models/test_train_sequences.py checks that
moving the target's time or labels changes no user-side input). A model trained this way must be served with
`predecessor_gaps`, not with models.retrieval.data.user_features.
context="items" instead passes unknown gaps (-1, the zero padding bucket), no user id, attributes, actions or
surface: the tower reads post and author ids only, the same input the baselines get through the `Retriever`
protocol (`SequenceRetriever.score`).

Candidates. Every corpus post gets one static feature row: its author (posts table, else its events), its counts
among the train events (post_impressions = positive events, post_click_count / post_like_count = those with the
action bit, the definitions of models.retrieval.sequences.retrieval_rows at the end of training) and its age at the
newest train event (created_at from the posts table; unknown without a dataset). The loss is a full softmax over the
corpus when it has <= full_softmax_max_items posts (the candidate tower embeds the whole corpus every step), else a
sampled softmax over the batch's targets and n_negatives uniform corpus posts with logQ correction."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from core.actions import BY_NAME
from core.errors import UserError
from core.schema import read_table
from models.layers import string_ids
from models.model_config import config_dataclass
from models.retrieval.baselines import evaluate_retriever
from models.retrieval.data import GAP_UNKNOWN, epoch_ms, predecessor_gaps
from models.retrieval.metrics import (
    NDCG_KS,
    RECALL_KS,
    corpus_columns,
    embedding_ranks,
    mask_unborn,
    ranking_metrics,
)
from models.retrieval.model import CandidateFeatures, TwoTower, TwoTowerConfig, UserFeatures
from models.retrieval.sequences import _before, sort_events
from models.training import TRAIN_THREADS, SparseTableAdam, adamw, clip_grad_norm, intra_op_threads, sparse_tables

CONTEXTS = ("items", "full")
SELECT_METRICS = tuple(f"recall@{k}" for k in RECALL_KS) + tuple(f"ndcg@{k}" for k in NDCG_KS)


@config_dataclass
class SequenceTrainConfig:
    """Optimisation, loss and early-stopping settings of `train_sequences`."""

    epochs: int = 200
    batch_size: int = 64  # sequences (windows) per step
    lr: float = 3e-3
    weight_decay: float = 0.01  # on Linear weights only (as models.retrieval.train)
    grad_clip: float = 1.0
    n_negatives: int = 1024  # uniform corpus negatives per step (sampled softmax only)
    logq_correction: bool = True  # sampled softmax only; a full softmax needs none
    full_softmax_max_items: int = 20_000  # corpora up to this size get a full softmax
    max_windows: int | None = None  # windows per user, newest first; None = all
    context: str = "items"  # items | full (see the module doc)
    budget_seconds: float = 300.0  # wall-clock limit: training stops and evaluates once past it (unless within a
    # quarter epoch of the last evaluation: those steps are dropped)
    patience: int = 5  # evaluations without a better validation select_metric before stopping
    # The learning rate is multiplied by this after every evaluation without a better validation select_metric
    # (reduce-on-plateau; 1 = constant rate).
    plateau_decay: float = 1.0
    eval_every: int = 1  # epochs between validation evaluations
    # > 0: targets score candidates as of snapshots this far apart (Snapshots); 0: one table at the end of training
    snapshot_hours: float = 0.0
    # Evaluation ranks only posts created at or before each target's time (models.retrieval.metrics.mask_unborn), as the
    # synthetic oracle does: an index built by then cannot hold a later post. Off: every corpus post is ranked.
    mask_unborn: bool = False
    # The validation metric early stopping keeps the best of (models.retrieval.metrics.ranking_metrics names): a
    # candidate generator is judged by what reaches the ranker (recall at the retrieval depth), a next-item model by
    # NDCG@10.
    select_metric: str = "ndcg@10"
    # torch intra-op threads while training (restored after; models.training.TRAIN_THREADS); 0 = torch's default,
    # one per core. A nano tower's matrices are small: on 2 cores shared with other jobs (load ~6) 1 thread ran 141
    # steps in a 60 s budget where the default ran 48.
    threads: int = TRAIN_THREADS
    # Embedding tables get sparse gradients and a lazy Adam (models.training.SparseTableAdam): a step moves only the
    # rows it read. Off: one AdamW over every parameter, every row every step.
    sparse_tables: bool = False
    table_lr_scale: float = 1.0  # with sparse_tables: the tables' learning rate over `lr`
    seed: int = 0

    def __post_init__(self) -> None:
        if self.context not in CONTEXTS:
            raise UserError(f"context: {self.context!r} is not one of {', '.join(CONTEXTS)}")
        if self.select_metric not in SELECT_METRICS:
            raise UserError(f"select_metric: {self.select_metric!r} is not one of {', '.join(SELECT_METRICS)}")
        if self.snapshot_hours < 0:
            raise UserError(f"snapshot_hours: {self.snapshot_hours} is negative")
        if self.threads < 0:
            raise UserError(f"threads: {self.threads} is negative")
        if self.table_lr_scale <= 0:
            raise UserError(f"table_lr_scale: {self.table_lr_scale} is not > 0")
        if not 0.0 < self.plateau_decay <= 1.0:
            raise UserError(f"plateau_decay: {self.plateau_decay} is not in (0, 1]")
        if self.batch_size < 1 or self.epochs < 1 or self.eval_every < 1:
            raise UserError("SequenceTrainConfig: batch_size, epochs and eval_every must be >= 1")


@dataclass(frozen=True)
class PostTable:
    """Static per-post features of a corpus (column j = corpus[j]) and the author lookup histories use."""

    corpus: np.ndarray  # (N,) sorted unique post ids
    features: CandidateFeatures  # N rows, as of the newest event the table was built from
    created_ms: np.ndarray  # (N,) float64 creation time, NaN = unknown
    events: pd.DataFrame  # the events the counts come from (snapshots count those before their time)

    def authors(self, post_ids: np.ndarray) -> np.ndarray:
        """Author id of each post id (0 = unknown, i.e. not in the corpus)."""
        cols = corpus_columns(self.corpus, post_ids)
        authors = self.features.author_ids.numpy()
        return np.where(cols >= 0, authors[np.maximum(cols, 0)], 0)

    def attributes(self, post_ids: np.ndarray) -> np.ndarray:
        """(..., P) attribute ids of each post id (..., ), as the candidate tower reads them (0 = unknown)."""
        cols = corpus_columns(self.corpus, post_ids)
        values = self.features.attributes.numpy()[np.maximum(cols, 0)]  # (..., P)
        return np.where((cols >= 0)[..., None], values, 0)


def post_table(
    cfg: TwoTowerConfig, corpus: np.ndarray, train_events: pd.DataFrame, dataset: Path | None = None
) -> PostTable:
    """The static candidate features of every corpus post (see the module doc)."""
    corpus = np.asarray(corpus, dtype=np.int64)
    N = len(corpus)
    cols = corpus_columns(corpus, train_events["post_id"].to_numpy())
    ok = cols >= 0
    authors = np.zeros(N, dtype=np.int64)
    authors[cols[ok]] = train_events["author_id"].to_numpy(dtype=np.int64)[ok]
    created = np.full(N, np.nan)
    attributes = np.zeros((N, len(cfg.post_attributes)), dtype=np.int64)
    if dataset is not None:
        posts = read_table(dataset, "posts").to_pandas()
        posts["created_at"] = epoch_ms(posts["created_at"])
        pc = corpus_columns(corpus, posts["post_id"].to_numpy())
        known = pc >= 0
        authors[pc[known]] = posts["author_id"].to_numpy(dtype=np.int64)[known]
        created[pc[known]] = posts["created_at"].to_numpy(dtype=np.float64)[known]
        for k, a in enumerate(cfg.post_attributes):  # post_topic <- the posts table's topic (as features.build does)
            column = a.removeprefix("post_")
            if column in posts.columns:
                attributes[pc[known], k] = string_ids(posts[column].to_numpy()[known])
    features = CandidateFeatures(
        post_ids=torch.from_numpy(corpus.copy()),
        author_ids=torch.from_numpy(authors),
        dense=torch.zeros(N, len(cfg.post_features)),
        age_ms=torch.full((N,), -1, dtype=torch.int64),
        attributes=torch.from_numpy(attributes),
    )
    table = PostTable(corpus, features, created, train_events)
    now_ms = int(train_events["ts_ms"].max()) if len(train_events) else 0
    return replace(table, features=snapshot(cfg, table, now_ms, inclusive=True))


def snapshot(cfg: TwoTowerConfig, table: PostTable, at_ms: int, inclusive: bool = False) -> CandidateFeatures:
    """The corpus' candidate features as of `at_ms`: counts over the table's events before it (at or before it with
    `inclusive`) and post ages at it (0 for a post created later: the age a post created after an index build
    gets at serving time)."""
    ev = table.events
    ts = ev["ts_ms"].to_numpy(dtype=np.int64)
    cols = corpus_columns(table.corpus, ev["post_id"].to_numpy())
    ok = (cols >= 0) & ((ts <= at_ms) if inclusive else (ts < at_ms))
    N, mask = len(table.corpus), ev["actions"].to_numpy(dtype=np.int64)[ok]
    counts = {
        "post_impressions": np.bincount(cols[ok], minlength=N),
        "post_click_count": np.bincount(cols[ok], weights=(mask >> BY_NAME["click"].bit) & 1, minlength=N),
        "post_like_count": np.bincount(cols[ok], weights=(mask >> BY_NAME["like"].bit) & 1, minlength=N),
    }
    dense = np.zeros((N, len(cfg.post_features)), np.float32)
    for k, f in enumerate(cfg.post_features):
        dense[:, k] = counts.get(f, 0.0)
    age = np.full(N, -1, dtype=np.int64)
    if cfg.use_post_age:
        known = ~np.isnan(table.created_ms)
        age[known] = np.maximum(at_ms - table.created_ms[known].astype(np.int64), 0)
    return replace(table.features, dense=torch.from_numpy(dense), age_ms=torch.from_numpy(age))


@dataclass(frozen=True)
class Snapshots:
    """Point-in-time candidate features for training: the corpus as of K times, every `snapshot_hours` from the
    first train event. A target at time t is scored against snapshot k = the newest at or before t (counts of
    events strictly before it, ages at it), so training targets look as a fresh post looks in an index built at
    the end of training; with one static table at the end instead, every training target has been engaged with
    (count >= 1) and looks old, and a never-engaged post (count 0, newest) is one the model learnt never to
    retrieve."""

    times_ms: np.ndarray  # (K,) ascending
    features: list[CandidateFeatures]  # K corpus tables
    created_ms: torch.Tensor  # (N,) float64, NaN = unknown

    def index(self, ts_ms: torch.Tensor) -> torch.Tensor:
        """(...) snapshot index of each time (...)."""
        k = np.searchsorted(self.times_ms, ts_ms.cpu().numpy(), side="right") - 1
        return torch.as_tensor(np.maximum(k, 0), device=ts_ms.device)


def snapshots(cfg: TwoTowerConfig, table: PostTable, hours: float, max_snapshots: int = 500) -> Snapshots:
    """The Snapshots of a post table's events (see Snapshots)."""
    ts = table.events["ts_ms"].to_numpy(dtype=np.int64)
    step = int(hours * 3_600_000)
    times = np.arange(int(ts.min()), int(ts.max()) + 1, step, dtype=np.int64)
    if len(times) > max_snapshots:
        raise UserError(f"snapshot_hours: {hours} h cuts the train window into {len(times)} > {max_snapshots} parts")
    created = torch.from_numpy(table.created_ms.astype(np.float64))
    return Snapshots(times, [snapshot(cfg, table, int(t)) for t in times], created)


def _user_attributes(cfg: TwoTowerConfig, user_ids: np.ndarray, dataset: Path | None) -> np.ndarray:
    """(B, A) int64 attribute ids of each user (0 = missing; all 0 without a dataset)."""
    out = np.zeros((len(user_ids), len(cfg.user_attributes)), dtype=np.int64)
    if dataset is None or not cfg.user_attributes:
        return out
    users = read_table(dataset, "users").to_pandas().set_index("user_id")
    for k, a in enumerate(cfg.user_attributes):
        if a in users.columns:
            out[:, k] = string_ids(pd.Series(user_ids).map(users[a]).astype(object))
    return out


def _features(
    cfg: TwoTowerConfig,
    context: str,
    user_ids: np.ndarray,
    attributes: np.ndarray,
    posts: np.ndarray,
    authors: np.ndarray,
    actions: np.ndarray,
    surfaces: np.ndarray,
    gaps: np.ndarray,
    hist_attributes: np.ndarray,
) -> UserFeatures:
    """UserFeatures of right-padded (B, S) arrays; context "items" keeps post and author ids (and the attributes of
    those posts, from the post table) only."""
    valid = posts != 0
    if context == "items":
        zeros = np.zeros_like(posts)
        user_ids, attributes = np.zeros_like(user_ids), np.zeros_like(attributes)
        actions, surfaces, gaps = zeros, zeros, np.full_like(posts, GAP_UNKNOWN)
    t = torch.from_numpy
    return UserFeatures(
        user_ids=t(np.ascontiguousarray(user_ids, dtype=np.int64)),
        attribute_ids=t(np.ascontiguousarray(attributes, dtype=np.int64)),
        hist_post_ids=t(np.ascontiguousarray(posts, dtype=np.int64)),
        hist_author_ids=t(np.ascontiguousarray(np.where(valid, authors, 0), dtype=np.int64)),
        hist_actions=t(np.ascontiguousarray(np.where(valid, actions, 0), dtype=np.int64)),
        hist_surfaces=t(np.ascontiguousarray(np.where(valid, surfaces, 0), dtype=np.int64)),
        hist_gap_ms=t(np.ascontiguousarray(np.where(valid, gaps, GAP_UNKNOWN), dtype=np.int64)),
        hist_attributes=t(np.ascontiguousarray(np.where(valid[..., None], hist_attributes, 0), dtype=np.int64)),
    )


@dataclass(frozen=True)
class SequenceBatches:
    """Every training window as tensors: inputs (W, S) and the corpus column of each position's target (-1 = none)."""

    user: UserFeatures
    target_cols: torch.Tensor  # (W, S) int64
    target_ms: torch.Tensor  # (W, S) int64 time of each target (0 where there is none)

    def __len__(self) -> int:
        return len(self.target_cols)


def sequence_windows(
    cfg: TwoTowerConfig,
    train_events: pd.DataFrame,
    table: PostTable,
    context: str = "items",
    max_windows: int | None = None,
    dataset: Path | None = None,
) -> SequenceBatches:
    """Each user's train events cut into windows of max_history + 1 events (see the module doc)."""
    S = cfg.max_history
    ev = sort_events(train_events)
    users = ev["user_id"].to_numpy(dtype=np.int64)
    cols = {c: ev[c].to_numpy(dtype=np.int64) for c in ("post_id", "author_id", "actions", "surface", "ts_ms")}
    bounds = np.flatnonzero(np.diff(users)) + 1
    starts, ends = np.concatenate([[0], bounds]), np.concatenate([bounds, [len(ev)]])
    spans: list[tuple[int, int]] = []  # [start, end) event rows of each window
    for s0, e0 in zip(starts.tolist(), ends.tolist(), strict=True):
        end, k = e0, 0
        while end - s0 >= 2 and (max_windows is None or k < max_windows):
            start = max(s0, end - S - 1)
            spans.append((start, end))
            end, k = start + 1, k + 1
    W = len(spans)
    if W == 0:
        raise UserError("train_sequences: no user has 2 or more train events")
    win = {c: np.zeros((W, S + 1), dtype=np.int64) for c in cols}
    win_user = np.zeros(W, dtype=np.int64)
    gaps = np.full((W, S), GAP_UNKNOWN, dtype=np.int64)
    # Each event's predecessor gap within its user's whole sequence (a window's first event keeps its gap too).
    previous = np.diff(cols["ts_ms"], prepend=cols["ts_ms"][:1])
    all_gaps = np.where(np.isin(np.arange(len(ev)), starts), GAP_UNKNOWN, np.maximum(previous, 0))
    for w, (a, b) in enumerate(spans):
        n = b - a
        for c, values in cols.items():
            win[c][w, :n] = values[a:b]
        gaps[w, : n - 1] = all_gaps[a : b - 1]
        win_user[w] = users[a]
    has_target = win["post_id"][:, 1:] != 0  # (W, S)
    inputs = np.where(has_target, win["post_id"][:, :S], 0)
    target_cols = np.where(has_target, corpus_columns(table.corpus, win["post_id"][:, 1:]), -1)
    user = _features(
        cfg,
        context,
        win_user,
        _user_attributes(cfg, win_user, dataset),
        inputs,
        win["author_id"][:, :S],
        win["actions"][:, :S],
        win["surface"][:, :S],
        gaps,
        table.attributes(inputs),
    )
    target_ms = np.where(has_target, win["ts_ms"][:, 1:], 0)
    return SequenceBatches(user, torch.from_numpy(target_cols), torch.from_numpy(target_ms))


def sequence_loss(
    model: TwoTower,
    user: UserFeatures,
    target_cols: torch.Tensor,
    candidates: CandidateFeatures,
    tc: SequenceTrainConfig,
    generator: torch.Generator | None = None,
    target_ms: torch.Tensor | None = None,
    snaps: Snapshots | None = None,
) -> torch.Tensor:
    """() mean next-item cross-entropy over every position with a target in the corpus.

    Full softmax over all N candidates when N <= tc.full_softmax_max_items; otherwise a softmax over the union of
    the batch's distinct targets and tc.n_negatives uniform posts, each column's logit corrected (logQ) by the log
    probability that it is in that union: 1 - (1 - q_j)^P (1 - 1/N)^M, q_j its share of the batch's P targets.
    With `snaps` (and target_ms (B, S)), each position scores the candidates as of its target's snapshot and posts
    created after the target's time are left out (no request then could have shown them).
    """
    prefix = model.prefix_user_embeddings(user)  # (B, S, D)
    keep = target_cols >= 0
    u, t = prefix[keep], target_cols[keep]  # (P, D), (P,)
    if len(t) == 0:
        return prefix.sum() * 0.0
    N = len(candidates)
    if tc.full_softmax_max_items >= N:
        cols = inverse = None
    else:
        neg = torch.randint(N, (tc.n_negatives,), generator=generator).to(t.device)
        cols, inverse = torch.unique(torch.cat([t, neg]), return_inverse=True)  # (C,)
    if snaps is None or target_ms is None:
        logits = model.score(u, model.candidate_embedding(candidates if cols is None else candidates.rows(cols)))
    else:
        logits = _snapshot_logits(model, u, target_ms[keep], cols, snaps)  # (P, C)
    if cols is None or inverse is None:
        return F.cross_entropy(logits, t)
    P = len(t)
    if tc.logq_correction:
        q = torch.zeros(len(cols), device=t.device).index_add_(0, inverse[:P], torch.ones(P, device=t.device)) / P
        log_miss = P * torch.log1p(-q.clamp(max=1 - 1e-7)) + tc.n_negatives * math.log1p(-1.0 / N)
        logits = logits - torch.log(-torch.expm1(log_miss)).clamp(min=-30.0)[None, :]
    return F.cross_entropy(logits, inverse[:P])


def _snapshot_logits(
    model: TwoTower, u: torch.Tensor, ts_ms: torch.Tensor, cols: torch.Tensor | None, snaps: Snapshots
) -> torch.Tensor:
    """(P, C) logits of P positions (user embeddings u (P, D), target times ts_ms (P,)) against the corpus columns
    `cols` (None = all) as of each position's snapshot; a post created after the position's time scores -inf."""
    k = snaps.index(ts_ms)  # (P,)
    created = snaps.created_ms.to(u.device)
    created = created if cols is None else created[cols]  # (C,)
    used = k.unique()  # (K,) the snapshots of this batch, ascending
    tables = [snaps.features[j].to(u.device) for j in used.tolist()]
    tables = tables if cols is None else [t.rows(cols) for t in tables]
    dense, age = torch.stack([t.dense for t in tables]), torch.stack([t.age_ms for t in tables])  # (K, C, F), (K, C)
    emb = model.candidate_embeddings_at(tables[0], dense, age)  # (K, C, D): ids and attributes embedded once
    logits = u.new_empty((len(u), len(created)))
    for j, snap in enumerate(used.tolist()):
        rows = k == snap
        logits[rows] = model.score(u[rows], emb[j])
    unborn = created[None, :] > ts_ms[:, None].double()  # (P, C); NaN (unknown) compares False
    return logits.masked_fill(unborn, float("-inf"))


class SequenceRetriever:
    """A trained two-tower behind models.retrieval.baselines' `Retriever` protocol.

    `score(histories)` builds the tower's input from post ids alone (authors from the post table; no user,
    actions, surface or gaps): the input of a context="items" model. `score_events` builds the full input from
    events (user, attributes, actions, surface, predecessor gaps; nothing of the target but which user and which
    of their events come before it): a context="full" model.
    With `mask_unborn`, evaluation ranks only posts created by each target's time (table.created_ms).
    """

    def __init__(
        self,
        model: TwoTower,
        table: PostTable,
        context: str = "items",
        dataset: Path | None = None,
        mask_unborn: bool = False,
    ) -> None:
        self.model, self.table, self.context, self.dataset = model.eval(), table, context, dataset
        self.mask_unborn = mask_unborn
        self.corpus = table.corpus
        self._item_emb: torch.Tensor | None = None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def refresh(self) -> None:
        """Forgets the cached corpus embeddings (call after the weights change)."""
        self._item_emb = None

    @torch.no_grad()
    def item_embeddings(self) -> torch.Tensor:
        """(N, D) candidate embeddings of the corpus, cached."""
        if self._item_emb is None:
            self.model.eval()
            self._item_emb = self.model.candidate_embedding(self.table.features.to(self.device)).float()
        return self._item_emb

    @torch.no_grad()
    def user_vectors(self, user: UserFeatures) -> torch.Tensor:
        self.model.eval()
        return self.model.user_embedding(user.to(self.device)).float()

    def _scores(self, user: UserFeatures) -> torch.Tensor:
        return (self.user_vectors(user) @ self.item_embeddings().T).cpu()

    def score(self, histories: Sequence[np.ndarray]) -> torch.Tensor:
        """(Q, N) float32 cosine scores from each history's post ids (oldest first; the newest S are read)."""
        S = self.model.cfg.max_history
        posts = np.zeros((len(histories), S), dtype=np.int64)
        for q, h in enumerate(histories):
            h = np.asarray(h, dtype=np.int64)[-S:]
            posts[q, : len(h)] = h
        none = np.zeros_like(posts)
        users = np.zeros(len(histories), dtype=np.int64)
        attrs = np.zeros((len(histories), len(self.model.cfg.user_attributes)), dtype=np.int64)
        authors, hist_attributes = self.table.authors(posts), self.table.attributes(posts)
        user = _features(self.model.cfg, "items", users, attrs, posts, authors, none, none, none, hist_attributes)
        return self._scores(user)

    @property
    def created_ms(self) -> np.ndarray | None:
        """(N,) creation times evaluation masks with (`mask_unborn`), None when it masks nothing."""
        return self.table.created_ms if self.mask_unborn else None

    def event_features(self, history_events: pd.DataFrame, targets: pd.DataFrame) -> tuple[UserFeatures, list]:
        """The user-tower input of each target's request (its user's history_events before it: user, attributes,
        actions, surface, predecessor gaps over the whole history, history post attributes) and each query's seen
        post ids (its whole history)."""
        S, cfg = self.model.cfg.max_history, self.model.cfg
        h = {c: history_events[c].to_numpy(dtype=np.int64) for c in history_events.columns if c in _EVENT_INT}
        tu, tts, timp = (targets[c].to_numpy(dtype=np.int64) for c in ("user_id", "ts_ms", "impression_id"))
        order, start, end = _before(h["user_id"], h["ts_ms"], h["impression_id"], tu, tts, timp)
        Q = len(targets)
        arr = {c: np.zeros((Q, S), dtype=np.int64) for c in ("post_id", "author_id", "actions", "surface")}
        gaps = np.full((Q, S), GAP_UNKNOWN, dtype=np.int64)
        seen = []
        for q, (s, e) in enumerate(zip(start.tolist(), end.tolist(), strict=True)):
            rows = order[s:e]
            seen.append(h["post_id"][rows])
            gap = predecessor_gaps(h["ts_ms"][rows])[-S:]  # over the whole history, as in training
            rows = rows[-S:]
            for c in arr:
                arr[c][q, : len(rows)] = h[c][rows]
            gaps[q, : len(rows)] = gap
        attrs = _user_attributes(cfg, tu, self.dataset)
        posts = arr["post_id"]
        user = _features(
            cfg, self.context, tu, attrs, posts, arr["author_id"], arr["actions"], arr["surface"], gaps,
            self.table.attributes(posts),
        )  # fmt: skip
        return user, seen

    @torch.no_grad()
    def user_embeddings(self, history_events: pd.DataFrame, targets: pd.DataFrame) -> np.ndarray:
        """(Q, D) unit-norm user embeddings of each target's request (`event_features`)."""
        self.model.eval()
        user, _ = self.event_features(history_events, targets)
        return self.model.user_embedding(user.to(self.device)).float().cpu().numpy()

    def score_events(self, history_events: pd.DataFrame, targets: pd.DataFrame) -> tuple[torch.Tensor, list]:
        """(Q, N) scores of each target's request (`event_features`; posts created after it at -inf with
        `mask_unborn`) and each query's seen post ids (its whole history)."""
        user, seen = self.event_features(history_events, targets)
        return mask_unborn(self._scores(user), self.created_ms, targets["ts_ms"].to_numpy(dtype=np.int64)), seen


_EVENT_INT = ("user_id", "post_id", "author_id", "actions", "surface", "ts_ms", "impression_id")


def evaluate_sequence_retriever(
    retriever: SequenceRetriever, history_events: pd.DataFrame, targets: pd.DataFrame, batch_size: int = 1024
) -> dict[str, float]:
    """Full-ranking metrics under the baselines' protocol (models.retrieval.baselines.evaluate_retriever): context
    "items" goes through `score`, "full" through `score_events`, with the same seen-item removal and tie rule."""
    if retriever.context == "items":
        return evaluate_retriever(retriever, history_events, targets, retriever.created_ms)
    return ranking_metrics(sequence_target_ranks(retriever, history_events, targets, batch_size), len(retriever.corpus))


def sequence_target_ranks(
    retriever: SequenceRetriever, history_events: pd.DataFrame, targets: pd.DataFrame, batch_size: int = 1024
) -> torch.Tensor:
    """(Q,) 0-based rank of each target among the corpus for a context="full" retriever (seen items removed, the
    baselines' tie rule): one scoring pass, from which metrics of any subset of the targets follow
    (`ranking_metrics(ranks[mask], len(corpus))`)."""
    ranks = []
    for start in range(0, len(targets), batch_size):
        chunk = targets.iloc[start : start + batch_size]
        user, seen = retriever.event_features(history_events, chunk)
        target_cols = torch.as_tensor(corpus_columns(retriever.corpus, chunk["post_id"].to_numpy()))
        seen_cols = [corpus_columns(retriever.corpus, s) for s in seen]
        users, items = retriever.user_vectors(user), retriever.item_embeddings()
        request_ms = chunk["ts_ms"].to_numpy(dtype=np.int64)
        ranks.append(embedding_ranks(users, items, target_cols, seen_cols, retriever.created_ms, request_ms).cpu())
    return torch.cat(ranks) if ranks else torch.zeros(0, dtype=torch.int64)


@dataclass
class SequenceTrainResult:
    model: TwoTower  # the best evaluation's weights
    retriever: SequenceRetriever
    best_epoch: int
    best_metric: float  # the best validation tc.select_metric; NaN without validation targets
    seconds: float
    history: list[dict[str, float]]  # per evaluation: epoch, steps, train_loss, seconds, validation metrics
    # (Q,) each validation target's rank under the returned weights (context "full"; None otherwise): the best
    # evaluation's own pass, so a caller needs no second one
    valid_ranks: torch.Tensor | None = None


def train_sequences(
    config: TwoTowerConfig,
    train_events: pd.DataFrame,
    valid: pd.DataFrame | None,
    dataset: Path | None,
    corpus: np.ndarray,
    train_cfg: SequenceTrainConfig | None = None,
    log: Callable[[str], None] | None = None,
    device: str | None = None,
) -> SequenceTrainResult:
    """Trains a causal TwoTower on next-item prediction over user sequences, one pass per window per epoch.

    Evaluates the validation metrics (`evaluate_sequence_retriever`, histories = train_events) every eval_every
    epochs and once the wall-clock budget is spent (checked after every step); stops after `patience` evaluations
    without a better tc.select_metric, after `epochs`, or past the budget, and returns the best evaluation's
    weights (the last without validation targets).

    Args:
        config: the model; must be causal.
        train_events: events frame (models.retrieval.sequences); valid: validation targets (events rows) or None.
        dataset: the canonical dataset (users and posts tables) or None (no attributes, no post ages).
        corpus: (N,) sorted unique post ids to retrieve from (models.retrieval.baselines.make_corpus).
    """
    tc = train_cfg or SequenceTrainConfig()
    if not config.causal:
        raise UserError("train_sequences: needs a causal user tower (TwoTowerConfig causal=True)")
    config = replace(config, history_gaps="predecessor")  # what one pass computes; saved with the weights
    with intra_op_threads(tc.threads):
        return _train(config, train_events, valid, dataset, corpus, tc, log, device)


@dataclass
class _Steps:
    """The optimisation steps of one epoch: every window once, in a seeded order, until the wall-clock deadline."""

    model: TwoTower
    optimizer: torch.optim.Optimizer | SparseTableAdam
    candidates: CandidateFeatures
    tc: SequenceTrainConfig
    gen: torch.Generator
    snaps: Snapshots | None
    dev: torch.device

    def epoch(self, data: SequenceBatches, deadline: float) -> tuple[list[float], bool]:
        """Returns each step's loss and whether the deadline stopped the epoch early."""
        self.model.train()
        losses: list[float] = []
        for idx in torch.randperm(len(data), generator=self.gen).split(self.tc.batch_size):
            dev = self.dev
            user, cols, ts = data.user.rows(idx).to(dev), data.target_cols[idx].to(dev), data.target_ms[idx].to(dev)
            loss = sequence_loss(self.model, user, cols, self.candidates, self.tc, self.gen, ts, self.snaps)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            clip = clip_grad_norm if self.tc.sparse_tables else nn.utils.clip_grad_norm_
            clip(list(self.model.parameters()), self.tc.grad_clip)
            self.optimizer.step()
            losses.append(loss.item())
            if time.perf_counter() > deadline:
                return losses, True
        return losses, False


def _validate(
    retriever: SequenceRetriever, train_events: pd.DataFrame, valid: pd.DataFrame | None, entry: dict[str, float]
) -> torch.Tensor | None:
    """Adds the validation metrics of the current weights to `entry`; returns the targets' ranks when the metrics
    came from them (context "full": what the best epoch's scoring can reuse), else None."""
    retriever.refresh()
    if valid is None or len(valid) == 0:
        return None
    if retriever.context == "full":
        ranks = sequence_target_ranks(retriever, train_events, valid)
        entry |= ranking_metrics(ranks, len(retriever.corpus))  # what evaluate_sequence_retriever returns
        return ranks
    entry |= evaluate_sequence_retriever(retriever, train_events, valid)
    return None


@dataclass
class _Best:
    """The best evaluated weights so far and the epochs since (early stopping on `select_metric`)."""

    state: dict[str, torch.Tensor]
    epoch: int = 0
    metric: float = -math.inf
    bad: int = 0
    ranks: torch.Tensor | None = None

    def update(self, epoch: int, metric: float, model: nn.Module, ranks: torch.Tensor | None) -> bool:
        """Keeps the weights when `metric` beats the best (True); else counts one more epoch without gain."""
        if metric > self.metric:
            self.epoch, self.metric, self.bad, self.ranks = epoch, metric, 0, ranks
            self.state = _weights(model)
            return True
        self.bad += 1
        return False


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _build(
    config: TwoTowerConfig,
    train_events: pd.DataFrame,
    dataset: Path | None,
    corpus: np.ndarray,
    tc: SequenceTrainConfig,
    gen: torch.Generator,
    dev: torch.device,
) -> tuple[TwoTower, SequenceRetriever, SequenceBatches, _Steps]:
    """The model, its retriever, the training windows and the stepper (optimizer, candidate features, snapshots)."""
    table = post_table(config, corpus, train_events, dataset)
    data = sequence_windows(config, train_events, table, tc.context, tc.max_windows, dataset)
    model = TwoTower(config).to(dev)
    retriever = SequenceRetriever(model, table, tc.context, dataset, tc.mask_unborn)
    if tc.sparse_tables:
        sparse_tables(model)
    optimizer = (
        SparseTableAdam(model, tc.lr, tc.weight_decay, tc.table_lr_scale)
        if tc.sparse_tables
        else adamw(model, tc.lr, tc.weight_decay)
    )
    snaps = snapshots(config, table, tc.snapshot_hours) if tc.snapshot_hours > 0 else None
    return model, retriever, data, _Steps(model, optimizer, table.features.to(dev), tc, gen, snaps, dev)


def _train(
    config: TwoTowerConfig,
    train_events: pd.DataFrame,
    valid: pd.DataFrame | None,
    dataset: Path | None,
    corpus: np.ndarray,
    tc: SequenceTrainConfig,
    log: Callable[[str], None] | None,
    device: str | None,
) -> SequenceTrainResult:
    t0 = time.perf_counter()
    torch.manual_seed(tc.seed)
    gen = torch.Generator().manual_seed(tc.seed)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model, retriever, data, step = _build(config, train_events, dataset, corpus, tc, gen, dev)
    best = _Best(_weights(model))
    history: list[dict[str, float]] = []
    losses: list[float] = []  # the steps since the last evaluation
    steps = 0
    epoch_steps = max(1, math.ceil(len(data) / tc.batch_size))
    for epoch in range(1, tc.epochs + 1):
        epoch_losses, over_budget = step.epoch(data, deadline=t0 + tc.budget_seconds)
        losses += epoch_losses
        steps += len(epoch_losses)
        if epoch % tc.eval_every and epoch != tc.epochs and not over_budget:
            continue
        if over_budget and history and steps - history[-1]["steps"] < epoch_steps / 4:
            # The budget ran out within a quarter epoch of the last evaluation: evaluating a few steps' change costs
            # a full validation pass and rarely wins; the best evaluated weights stand.
            if log is not None:
                log(f"budget reached {steps - int(history[-1]['steps'])} steps after the last evaluation: stop")
            break
        lr = float(step.optimizer.param_groups[0]["lr"])
        entry: dict[str, float] = {"epoch": epoch, "steps": steps, "lr": lr, "train_loss": float(np.mean(losses))}
        losses = []
        ranks = _validate(retriever, train_events, valid, entry)
        entry["seconds"] = time.perf_counter() - t0
        history.append(entry)
        if log is not None:
            log(" ".join(f"{k}={v:.4f}" for k, v in entry.items()))
        if not best.update(epoch, entry.get(tc.select_metric, float(epoch)), model, ranks):
            for group in step.optimizer.param_groups:
                group["lr"] *= tc.plateau_decay
        if best.bad >= tc.patience or over_budget:
            break
    model.load_state_dict(best.state)
    sparse_tables(model, on=False)  # the model leaves as built
    model.eval()
    retriever.refresh()
    has_valid = valid is not None and len(valid) > 0
    metric = best.metric if has_valid else math.nan
    return SequenceTrainResult(model, retriever, best.epoch, metric, time.perf_counter() - t0, history, best.ranks)
