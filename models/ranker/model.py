"""Phoenix-style ranking transformer: [user] + [history] + [candidates] with candidate isolation, one head per task.

Sequence (phoenix.md 2.2): one user token, S history tokens (right-padded, oldest first, post id 0 = padding), C
candidate tokens. The attention mask (2.3) isolates candidates:

    user + history -> valid user + history positions (bidirectional, or causal with `causal=True`); never candidates
    candidate i    -> every valid user + history position, and itself; no other candidate

Positions are right-anchored (R2 `right_anchored_rope`): the newest valid history event sits at rotary position
max_history, older ones count down from it, the user token and padding sit at 0, and EVERY candidate shares position
max_history + 1. A candidate's output therefore depends only on the user and on the candidate itself: not on the
other candidates, their order or count, nor on how much history padding the batch carries. That is what makes
scores cacheable: `encode_user` runs user + history once and keeps each layer's keys and values, and
`score_candidates` scores any number of candidates against them in chunks.

The model returns logits (`RankerOutput`); the loss is `models.ranker.tasks.ranker_loss`, and probabilities and blending
(`Ranker.predictions`, `Ranker.blend`) belong to serving.
"""

from __future__ import annotations

import functools
import math
import pickle
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, ClassVar, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core.actions import ACTION_NAMES, ACTIONS
from core.errors import UserError
from core.io import atomic_dir
from core.schema import N_SURFACES
from features.catalog import AUTHOR_STATS, POST_STATS, USER_STATS, Dtype
from models.layers import (
    Block,
    MultiHashEmbedding,
    RMSNorm,
    Rotary,
    attention_bias,
    derived,
    entity_seed,
    linear_np,
    lookup_np,
    projected_actions_np,
    rotate_half_rows,
    sum_hashes,
    weight_np,
)
from models.model_config import ModelConfig, config_dataclass
from models.ranker.task_table import TASK_NAMES, Task, TaskKind, select_tasks
from models.retrieval.model import UserFeatures, time_bucket, time_bucket_np

HEAD_MODES = ("independent", "funnel")
MAX_LOG_SECONDS = math.log1p(86_400.0)  # a predicted dwell is at most a day (finite for any head output)
# Numeric user_* / post_* / author_* columns of the feature catalog: what a ranker training set carries per
# impression. User columns are the same for every candidate of a request; they sit in the candidate token because
# the activity level of the user (how often they click at all) is most of a click's between-user variance.
DENSE_FEATURES: frozenset[str] = frozenset(
    name
    for view in (USER_STATS, POST_STATS, AUTHOR_STATS)
    for name, dtype in view.features
    if dtype in (Dtype.INT32, Dtype.FLOAT32) and name not in ("post_topic",)
)

# Dataset-specific numeric columns (the importers' extras, protocol tables such as models.ranker.kuairand) are
# named x_<name>: a model may read them from its training frame; the served pipeline has no such columns and refuses
# to load a ranker that reads them (serving.recommender_pipeline).
EXTRA_PREFIX = "x_"

# The default dense inputs: every rate and count the tabular baselines see, minus the 1-day user windows (noisy).
DEFAULT_DENSE: tuple[str, ...] = (
    "post_impressions",
    "post_click_count",
    "post_like_count",
    *(f"post_{a}_rate" for a in ACTION_NAMES),
    "author_follower_count",
    "author_posts_per_day",
    "author_impressions_28d",
    "author_negative_rate",
    *(f"author_{a}_rate" for a in ACTION_NAMES),
    "user_impressions_7d",
    "user_impressions_28d",
    *(f"user_{a}_rate_{w}d" for w in (7, 28) for a in ACTION_NAMES),
)


@config_dataclass
class RankerConfig(ModelConfig):
    """Every hyperparameter of the ranker; written as config.json beside model.pt and used to rebuild it.

    Entity tables use the two-tower's names and seeds (entity_seed(hash_seed, "post"), ...): with equal emb_dim,
    rows and hash_seed, a two-tower's post/author/user tables load into the ranker unchanged.
    """

    d_model: int = 64  # D: transformer width
    emb_dim: int = 32  # E: width of a hash-table row
    n_layers: int = 2
    n_heads: int = 4
    n_kv_heads: int = 2  # < n_heads: grouped-query attention
    ffn_mult: float = 4.0
    gate: str = "geglu"  # geglu | swiglu (models.layers.GATES)
    causal: bool = False  # user + history attention: R1 code is causal, R3 production bidirectional
    max_history: int = 64  # S: the newest S history events are kept
    max_candidates: int = 64  # C per plain forward pass (Phoenix R2/R3: 64); also score_candidates' default chunk
    n_hashes: int = 2
    hash_seed: int = 0
    user_rows: int = 100_000  # hash-table rows per entity (row 0 is padding), as in TwoTowerConfig
    post_rows: int = 200_000
    author_rows: int = 50_000
    attribute_rows: int = 256
    user_attributes: tuple[str, ...] = ("country", "language", "age_bucket", "activity")  # columns user_<name>
    # Candidate dense features (numeric post_*/author_* catalog columns): log1p(max(x, 0)), then standardised with
    # the mean/std buffers that `Ranker.fit_dense_stats` sets from the training set.
    candidate_features: tuple[str, ...] = DEFAULT_DENSE  # raw values; log1p and standardisation happen in the model
    # Categorical post attributes (string or small-int columns), hashed like the user attributes.
    candidate_attributes: tuple[str, ...] = ("post_topic", "post_media_type")
    use_in_network: bool = True  # the candidate token sees whether the user follows its author
    # History tokens add the same attribute embeddings for their posts (when the caller passes them): a history
    # post and a candidate of one topic then share that vector, which is how the model matches tastes to topics.
    history_attributes: bool = True
    # Position-bias tower (YouTube 2019 "shallow tower"): a learned per-task logit offset for the slot a logged
    # impression was shown in, added in training and offline evaluation only. Serving scores with position
    # unknown (-1), which adds exactly 0, so the ranking learns relevance and not where the old policy put posts.
    max_position: int = 16  # slots 0..max_position-1 get their own offset (later ones share the last); 0 = off
    n_actions: int = len(ACTIONS)  # bits of the history action mask read
    n_surfaces: int = N_SURFACES
    n_time_buckets: int = 40  # two_tower.time_bucket: history time gaps and candidate post ages
    tasks: tuple[str, ...] = TASK_NAMES  # heads, a subset of models.ranker.tasks.TASKS (kept in TASKS order)
    head_mode: str = "independent"  # independent sigmoids (Phoenix) | funnel: P(child) = P(parent) P(child | parent)
    learn_blend: bool = False  # a combination MLP scales each blend weight per user (`BlendCombiner`)
    # The user token is also added to every candidate token, so each layer's FFN sees user x candidate crosses
    # directly instead of only through attention. A candidate still depends only on the user and itself.
    user_in_candidate: bool = False
    # Quantile bins of each dense feature, one embedding per (feature, bin) added to the candidate token: the
    # piecewise-constant response a logistic regression gets from one-hot bins, which one linear projection of
    # log1p values cannot express (a rate that matters only above some level). 0 = off. Edges come from the
    # training rows (`Ranker.fit_dense_stats`).
    dense_bins: int = 0
    # A wide part beside the transformer: per task, a linear logit over the same (feature, bin) one-hots and the
    # hashed candidate attributes, added to the heads' output (Wide & Deep). Needs dense_bins > 0.
    wide: bool = False
    # Training starts each head at the training set's base rate (`Ranker.fit_head_bias`): without it, a short run on
    # a small set leaves rare negatives (report, block) 10-100x above their rate, and the served blend, whose negative
    # weights are large, ranks by that error (`ember simulate`: the loop's true reward 0.14 -> 0.29 of the way from
    # random to the oracle before the shift). KuaiRand's valid day: 0.7004 with it, 0.7013 without: off there.
    head_bias_init: bool = True
    # A DCN-v2 cross part beside the transformer (0 = off): the user's id and attributes and the candidate's id,
    # author, attributes, surface and (feature, bin) one-hots, each a `cross_dim` field embedding, concatenated and
    # crossed `cross_layers` times (x_{l+1} = x0 * (W x_l + b) + x_l), then a linear logit per task added to the
    # heads' output like the wide part: explicit user x candidate crosses that the peers' MLP towers get from their
    # concatenated input, which one summed token cannot hold. Needs dense_bins > 0.
    cross_layers: int = 0
    cross_dim: int = 8
    cross_ids: bool = True  # the user, post and author ids among the crossed fields (False: attributes only)
    # Training only: dropout on the tokens entering the first block and on the candidates' final hidden states
    # (the peers' towers use 0.1). Serving and evaluation run without it, so the scoring paths are unchanged.
    dropout: float = 0.0

    def __post_init__(self) -> None:
        self._freeze_tuples("user_attributes", "candidate_features", "candidate_attributes", "tasks")
        self._check_attention()
        if self.head_mode not in HEAD_MODES:
            raise ValueError(
                f"RankerConfig: unknown head_mode {self.head_mode!r} (choose from {', '.join(HEAD_MODES)})"
            )
        unknown = {f for f in self.candidate_features if not f.startswith(EXTRA_PREFIX)} - DENSE_FEATURES
        if unknown:
            raise ValueError(
                f"RankerConfig: candidate_features {sorted(unknown)} are not numeric user/post/author features "
                f"(dataset extras start with {EXTRA_PREFIX!r})"
            )
        if self.dense_bins < 0 or self.dense_bins == 1:
            raise ValueError(f"RankerConfig: dense_bins must be 0 (off) or >= 2, got {self.dense_bins}")
        if self.wide and self.dense_bins == 0:
            raise ValueError("RankerConfig: wide needs dense_bins >= 2")
        if self.cross_layers < 0 or self.cross_dim < 1:
            raise ValueError(
                f"RankerConfig: cross_layers must be >= 0 and cross_dim >= 1, got {self.cross_layers}, {self.cross_dim}"
            )
        if self.cross_layers and self.dense_bins == 0:
            raise ValueError("RankerConfig: cross_layers needs dense_bins >= 2")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"RankerConfig: dropout must be in [0, 1), got {self.dropout}")
        tasks = select_tasks(self.tasks)  # ValueError on unknown names
        if len(tasks) != len(self.tasks):
            raise ValueError(f"RankerConfig: duplicate tasks in {self.tasks}")
        if self.head_mode == "funnel":
            missing = {t.parent for t in tasks if t.parent is not None} - set(self.tasks)
            if missing:
                raise ValueError(f"RankerConfig: funnel heads need their parent tasks {sorted(missing)}")
        if min(self.max_history, self.max_candidates) < 1:
            raise ValueError("RankerConfig: max_history and max_candidates must be >= 1")

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        # Tests and `make demo`: trains on CPU in seconds.
        "nano": dict(
            d_model=32,
            emb_dim=16,
            n_layers=1,
            n_heads=2,
            n_kv_heads=1,
            max_history=16,
            max_candidates=16,
            user_rows=2_048,
            post_rows=4_096,
            author_rows=1_024,
            attribute_rows=64,
        ),  # fmt: skip
        "small": {},  # the defaults: the synthetic `small` scale (~10k users, 100k posts)
        # Phoenix R2 "mini" ranking shape: D128, 4 layers, 4/4 heads (key 32), FFN x2, history 127; up to 512
        # candidates per pass. Tables as in TwoTowerConfig "base", so the two can share them.
        "base": dict(
            d_model=128,
            emb_dim=64,
            n_layers=4,
            n_heads=4,
            n_kv_heads=4,
            ffn_mult=2.0,
            max_history=127,
            max_candidates=512,
            user_rows=500_000,
            post_rows=1_000_000,
            author_rows=200_000,
            attribute_rows=1_024,
        ),  # fmt: skip
    }


@dataclass(frozen=True)
class CandidateBatch:
    """C candidates for each of B requests (F = len(candidate_features)); padding slots have valid = False."""

    post_ids: torch.Tensor  # (B, C) int64
    author_ids: torch.Tensor  # (B, C) int64
    surfaces: torch.Tensor  # (B, C) int64 in [0, n_surfaces): where the candidate would be shown
    age_ms: torch.Tensor  # (B, C) int64 post age at request time, -1 = unknown
    dense: torch.Tensor  # (B, C, F) float32 raw values (log1p and standardisation happen in the model)
    attributes: torch.Tensor  # (B, C, A) int64 `string_id`s of cfg.candidate_attributes, 0 = unknown
    in_network: torch.Tensor  # (B, C) bool: the user follows the author
    positions: torch.Tensor  # (B, C) int64 logged slot of the impression, -1 = unknown (serving)
    valid: torch.Tensor  # (B, C) bool

    def to(self, device: torch.device | str) -> CandidateBatch:
        return replace(self, **{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    def slice(self, start: int, stop: int) -> CandidateBatch:
        """Candidates start..stop-1 of every request."""
        return replace(self, **{f.name: getattr(self, f.name)[:, start:stop] for f in fields(self)})

    @property
    def num_candidates(self) -> int:
        return int(self.post_ids.shape[1])


@dataclass(frozen=True)
class RankerOutput:
    """What the ranker returns (K = number of tasks, in `Ranker.tasks` order)."""

    logits: torch.Tensor  # (B, C, K): binary tasks a logit of P(task), continuous tasks the regression value
    blend_multipliers: torch.Tensor | None  # (B, K) >= 0 from the combination module, None without one


@dataclass(frozen=True)
class UserCache:
    """User + history encoded once (`Ranker.encode_user`) for scoring any number of candidates against it."""

    keys: tuple[torch.Tensor, ...]  # per layer (B, Hkv, T0, hd), rotary applied; T0 = 1 + S
    values: tuple[torch.Tensor, ...]  # per layer (B, Hkv, T0, hd)
    valid: torch.Tensor  # (B, T0) bool: user token and valid history events
    user_hidden: torch.Tensor  # (B, D) final-norm hidden state of the user token
    user_input: torch.Tensor | None = None  # (B, D) the user token itself, with cfg.user_in_candidate
    cross_user: torch.Tensor | None = None  # (B, U) the user's cross-part fields, with cfg.cross_layers


class TokenEmbedder(nn.Module):
    """Builds the three kinds of input tokens. The user and history tokens are those of the two-tower user tower."""

    action_bits: torch.Tensor  # (n_actions,) 0, 1, 2, ...
    dense_mean: torch.Tensor  # (F,) of log1p features
    dense_std: torch.Tensor  # (F,)
    bin_edges: torch.Tensor  # (F, dense_bins - 1) on log1p values, with cfg.dense_bins
    bin_offsets: torch.Tensor  # (F,) first `bin_emb` row of each feature

    def __init__(self, cfg: RankerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        E, D, H, F_ = cfg.emb_dim, cfg.d_model, cfg.n_hashes, len(cfg.candidate_features)
        self.user_emb = MultiHashEmbedding(cfg.user_rows, E, H, entity_seed(cfg.hash_seed, "user"))
        self.post_emb = MultiHashEmbedding(cfg.post_rows, E, H, entity_seed(cfg.hash_seed, "post"))
        self.author_emb = MultiHashEmbedding(cfg.author_rows, E, H, entity_seed(cfg.hash_seed, "author"))
        self.attribute_emb = nn.ModuleList(
            MultiHashEmbedding(cfg.attribute_rows, D, H, entity_seed(cfg.hash_seed, f"user_{a}"))
            for a in cfg.user_attributes
        )
        self.user_proj = nn.Linear(H * E, D, bias=False)
        self.action_proj = nn.Linear(cfg.n_actions, E, bias=False)
        self.surface_emb = nn.Embedding(cfg.n_surfaces, E)  # shared by history events and candidates
        self.history_proj = nn.Linear(2 * H * E + 2 * E, D, bias=False)  # post rows, author rows, action, surface
        self.gap_emb = nn.Embedding(cfg.n_time_buckets, D, padding_idx=0)
        self.age_emb = nn.Embedding(cfg.n_time_buckets, E, padding_idx=0)
        self.candidate_proj = nn.Linear(2 * H * E + 2 * E + F_, D, bias=False)  # post, author, surface, age, dense
        self.candidate_attribute_emb = nn.ModuleList(
            MultiHashEmbedding(cfg.attribute_rows, D, H, entity_seed(cfg.hash_seed, a))
            for a in cfg.candidate_attributes
        )
        self.in_network_emb = nn.Embedding(2, D) if cfg.use_in_network else None
        self.register_buffer("action_bits", torch.arange(cfg.n_actions), persistent=False)
        self.register_buffer("dense_mean", torch.zeros(F_))
        self.register_buffer("dense_std", torch.ones(F_))
        nb = cfg.dense_bins
        if nb:
            self.register_buffer("bin_edges", torch.zeros(F_, nb - 1))  # on log1p values, set from training rows
            self.register_buffer("bin_offsets", torch.arange(F_) * nb, persistent=False)
            self.bin_emb = nn.Embedding(F_ * nb, D)
            nn.init.normal_(self.bin_emb.weight, std=0.02)

    def dense_bins(self, dense: torch.Tensor) -> torch.Tensor:
        """(..., F) raw dense values -> (..., F) row of each (feature, quantile bin) in `bin_emb`."""
        x = torch.log1p(dense.float().clamp(min=0))
        bucket = (x.unsqueeze(-1) > self.bin_edges).sum(-1)  # (..., F) in [0, dense_bins)
        return bucket + self.bin_offsets

    def user_token(self, x: UserFeatures) -> torch.Tensor:
        """(B, D): projected user hash rows plus the summed attribute embeddings."""
        token = self.user_proj(self.user_emb(x.user_ids).flatten(-2))  # (B, D)
        for k, emb in enumerate(self.attribute_emb):
            token = token + emb(x.attribute_ids[:, k]).sum(-2)  # (B, H, D) -> (B, D)
        return token

    def history_tokens(self, x: UserFeatures, attributes: torch.Tensor | None = None) -> torch.Tensor:
        """(B, S, D) history tokens, zero at padding positions; `attributes` (B, S, A) are the `string_id`s of the
        history posts' cfg.candidate_attributes (0 = unknown), embedded by the candidates' attribute tables."""
        valid = x.hist_post_ids != 0  # (B, S)
        bits = (x.hist_actions.unsqueeze(-1) >> self.action_bits) & 1  # (B, S, n_actions)
        # Phoenix's signed multi-hot: +1 for an action taken, -1 for one not taken; all zero with no action at all.
        signed = (2 * bits - 1).float() * (x.hist_actions != 0).unsqueeze(-1)  # (B, S, n_actions)
        surface = self.surface_emb(x.hist_surfaces.clamp(0, self.cfg.n_surfaces - 1))  # (B, S, E)
        post, author = self.post_emb(x.hist_post_ids).flatten(-2), self.author_emb(x.hist_author_ids).flatten(-2)
        tokens = torch.cat([post, author, self.action_proj(signed), surface], -1)  # (B, S, 2HE + 2E)
        gap = torch.where(valid, time_bucket(x.hist_gap_ms, self.cfg.n_time_buckets), 0)  # (B, S)
        out = self.history_proj(tokens) + self.gap_emb(gap)
        if attributes is not None and self.cfg.history_attributes:
            for k, emb in enumerate(self.candidate_attribute_emb):
                out = out + emb(attributes[..., k]).sum(-2)  # (B, S, H, D) -> (B, S, D)
        return out * valid.unsqueeze(-1)  # (B, S, D)

    def candidate_tokens(self, c: CandidateBatch) -> torch.Tensor:
        """(B, C, D): post and author rows, surface, post-age bucket, standardised log1p dense features, the hashed
        post attributes and the in-network flag."""
        post, author = self.post_emb(c.post_ids).flatten(-2), self.author_emb(c.author_ids).flatten(-2)
        surface = self.surface_emb(c.surfaces.clamp(0, self.cfg.n_surfaces - 1))  # (B, C, E)
        age = self.age_emb(time_bucket(c.age_ms, self.cfg.n_time_buckets))  # (B, C, E)
        dense = (torch.log1p(c.dense.float().clamp(min=0)) - self.dense_mean) / self.dense_std  # (B, C, F)
        token = self.candidate_proj(torch.cat([post, author, surface, age, dense.to(post.dtype)], -1))
        for k, emb in enumerate(self.candidate_attribute_emb):
            token = token + emb(c.attributes[..., k]).sum(-2)  # (B, C, H, D) -> (B, C, D)
        if self.cfg.dense_bins:
            token = token + self.bin_emb(self.dense_bins(c.dense)).sum(-2).to(token.dtype)  # (B, C, F, D) -> (B, C, D)
        if self.in_network_emb is not None:
            token = token + self.in_network_emb(c.in_network.long())
        return token

    # Inference on CPU (serving) ------------------------------------------------------------------------------------
    # The same tokens as user_token / history_tokens / candidate_tokens: the hash lookups, gathers, time buckets and
    # sums in numpy (exact: the same rows and buckets, the same float32 additions in the same order), the projections
    # in torch. A request's few hundred tokens are cheap to compute; the ~10 torch operators per lookup were not.

    def user_token_np(self, x: UserFeatures) -> np.ndarray:
        """(B, D) float32: `user_token`."""
        B = len(x.user_ids)
        (rows,) = lookup_np([self.user_emb], [x.user_ids.numpy()])
        token = linear_np(self.user_proj, rows.reshape(B, -1))
        ids = x.attribute_ids.numpy()
        for attribute in lookup_np(
            cast(list[MultiHashEmbedding], list(self.attribute_emb)),
            [ids[:, k] for k in range(ids.shape[1])],
            summed=True,
        ):
            token = token + attribute
        return token

    def history_tokens_np(self, x: UserFeatures, attributes: torch.Tensor | None = None) -> np.ndarray:
        """(B, S, D) float32: `history_tokens`."""
        post_ids = x.hist_post_ids.numpy()
        B, S = post_ids.shape
        tables, ids = [self.post_emb, self.author_emb], [post_ids, x.hist_author_ids.numpy()]
        if attributes is not None and self.cfg.history_attributes:
            tables += cast(list[MultiHashEmbedding], list(self.candidate_attribute_emb))
            ids += [attributes.numpy()[..., k] for k in range(len(self.candidate_attribute_emb))]
        post, author, *attribute_rows = lookup_np(tables, ids)
        surfaces = np.clip(x.hist_surfaces.numpy(), 0, self.cfg.n_surfaces - 1)
        tokens = np.concatenate(
            [
                post.reshape(B, S, -1),
                author.reshape(B, S, -1),
                projected_actions_np(self, self.action_proj, x.hist_actions.numpy(), self.cfg.n_actions),
                np.take(weight_np(self.surface_emb), surfaces, axis=0),
            ],
            -1,
        )
        valid = post_ids != 0
        gap = np.where(valid, time_bucket_np(x.hist_gap_ms.numpy(), self.cfg.n_time_buckets), 0)
        out = linear_np(self.history_proj, tokens)
        out = out + np.take(weight_np(self.gap_emb), gap, axis=0)
        for rows in attribute_rows:
            out = out + sum_hashes(rows)
        return out * valid[..., None]

    def candidate_tokens_np(self, c: CandidateBatch) -> np.ndarray:
        """(B, C, D) float32: `candidate_tokens`."""
        post_ids = c.post_ids.numpy()
        B, C = post_ids.shape
        attributes = c.attributes.numpy()
        post, author, *attribute_rows = lookup_np(
            [self.post_emb, self.author_emb, *self.candidate_attribute_emb],
            [post_ids, c.author_ids.numpy(), *(attributes[..., k] for k in range(len(self.candidate_attribute_emb)))],
        )
        age = time_bucket_np(c.age_ms.numpy(), self.cfg.n_time_buckets)
        dense = (torch.log1p(c.dense.float().clamp(min=0)) - self.dense_mean) / self.dense_std  # (B, C, F)
        surfaces = np.clip(c.surfaces.numpy(), 0, self.cfg.n_surfaces - 1)
        parts = [
            post.reshape(B, C, -1),
            author.reshape(B, C, -1),
            np.take(weight_np(self.surface_emb), surfaces, axis=0),
            np.take(weight_np(self.age_emb), age, axis=0),
            dense.numpy(),
        ]
        token = F.linear(torch.from_numpy(np.concatenate(parts, -1)), self.candidate_proj.weight).detach().numpy()
        for rows in attribute_rows:
            token = token + sum_hashes(rows)
        if self.cfg.dense_bins:
            token = token + self.bin_emb(self.dense_bins(c.dense)).sum(-2).detach().numpy()
        if self.in_network_emb is not None:
            token = token + np.take(weight_np(self.in_network_emb), c.in_network.numpy().astype(np.int64), axis=0)
        return token


class TaskHeads(nn.Module):
    """One linear output per task on the final candidate states, combined into per-task logits.

    Independent mode: each output is the task's logit (Phoenix's independent sigmoids). Funnel mode: a child's
    output is the logit of P(child | parent), and the marginal is P(child) = P(parent) * sigmoid(z). It is carried
    in log space as the pair (log p, log(1 - p)):

        log p_child       = log p_parent + logsigmoid(z)
        log (1 - p_child) = logaddexp(log(1 - p_parent), log p_parent + logsigmoid(-z))

    so the returned logit log p - log(1 - p) is finite for any finite input, and p_child <= p_parent holds exactly
    in floating point (every step is monotone). Negative actions are roots, i.e. plain heads.
    """

    def __init__(self, d_model: int, tasks: Sequence[Task], funnel: bool) -> None:
        super().__init__()
        self.tasks, self.funnel = tuple(tasks), funnel
        self.proj = nn.Linear(d_model, len(tasks))  # biases: rare tasks (report) need a base rate far from 0.5

    def forward(self, h: torch.Tensor, offset: torch.Tensor | None = None) -> torch.Tensor:
        """h (..., D) final-norm candidate states -> (..., K) logits / regression values.

        `offset` (..., K) is added to the raw outputs before the funnel (the position-bias tower), so it shifts a
        conditional logit and the funnel order still holds."""
        raw = self.proj(h)  # (..., K)
        if offset is not None:
            raw = raw + offset.to(raw.dtype)
        if not self.funnel:
            return raw
        log_p: dict[str, torch.Tensor] = {}
        log_q: dict[str, torch.Tensor] = {}
        out = []
        for k, t in enumerate(self.tasks):
            z = raw[..., k]
            if t.kind is TaskKind.CONTINUOUS:
                out.append(z)
                continue
            if t.parent is None:
                p, q = F.logsigmoid(z), F.logsigmoid(-z)
            else:
                pp, pq = log_p[t.parent], log_q[t.parent]
                p, q = pp + F.logsigmoid(z), torch.logaddexp(pq, pp + F.logsigmoid(-z))
            log_p[t.name], log_q[t.name] = p, q
            out.append(p - q)
        return torch.stack(out, -1)


class WidePart(nn.Module):
    """Wide & Deep's wide part: per task, a sum of learned weights of the candidate's (feature, bin) one-hots, its
    hashed attributes and its post and author ids: a logistic regression over the one-hot features beside the
    transformer. Every weight starts at zero, so the model starts as the transformer alone."""

    def __init__(self, cfg: RankerConfig, n_tasks: int) -> None:
        super().__init__()
        K, H = n_tasks, cfg.n_hashes
        self.bins = nn.Embedding(len(cfg.candidate_features) * cfg.dense_bins, K)
        self.attributes = nn.ModuleList(
            MultiHashEmbedding(cfg.attribute_rows, K, H, entity_seed(cfg.hash_seed, f"wide_{a}"))
            for a in cfg.candidate_attributes
        )
        self.post = MultiHashEmbedding(cfg.post_rows, K, H, entity_seed(cfg.hash_seed, "wide_post"))
        self.author = MultiHashEmbedding(cfg.author_rows, K, H, entity_seed(cfg.hash_seed, "wide_author"))
        nn.init.zeros_(self.bins.weight)
        for hashed in (*self.attributes, self.post, self.author):
            nn.init.zeros_(hashed.table.weight)

    def forward(self, bins: torch.Tensor, c: CandidateBatch) -> torch.Tensor:
        """bins (B, C, F) from `TokenEmbedder.dense_bins` -> (B, C, K) logit offsets."""
        out = self.bins(bins).sum(-2) + self.post(c.post_ids).sum(-2) + self.author(c.author_ids).sum(-2)
        for k, table in enumerate(self.attributes):
            out = out + table(c.attributes[..., k]).sum(-2)
        return out


class CrossPart(nn.Module):
    """DCN-v2's cross network over concatenated field embeddings, one logit per task (see RankerConfig.cross_layers).

    The user's fields are embedded once per request (`user_fields`) and broadcast over its candidates, so a
    candidate's output still depends on the user and itself only. The output layer starts at zero: the model starts
    as the transformer (and wide part) alone."""

    def __init__(self, cfg: RankerConfig, n_tasks: int) -> None:
        super().__init__()
        d, H, F_ = cfg.cross_dim, cfg.n_hashes, len(cfg.candidate_features)
        seed = cfg.hash_seed
        self.user = MultiHashEmbedding(cfg.user_rows, d, H, entity_seed(seed, "cross_user"))
        self.user_attributes = nn.ModuleList(
            MultiHashEmbedding(cfg.attribute_rows, d, H, entity_seed(seed, f"cross_user_{a}"))
            for a in cfg.user_attributes
        )
        self.post = MultiHashEmbedding(cfg.post_rows, d, H, entity_seed(seed, "cross_post"))
        self.author = MultiHashEmbedding(cfg.author_rows, d, H, entity_seed(seed, "cross_author"))
        self.attributes = nn.ModuleList(
            MultiHashEmbedding(cfg.attribute_rows, d, H, entity_seed(seed, f"cross_{a}"))
            for a in cfg.candidate_attributes
        )
        self.surface = nn.Embedding(cfg.n_surfaces, d)
        self.bins = nn.Embedding(F_ * cfg.dense_bins, d)
        self.ids = cfg.cross_ids
        width = d * (len(cfg.user_attributes) + 1 + len(cfg.candidate_attributes) + F_ + (3 if self.ids else 0))
        # Small field embeddings (the peers' towers: 8-dim, near zero), so the products x0 * (W x) start small.
        hashed = cast(list[MultiHashEmbedding], [self.user, *self.user_attributes, self.post, self.author])
        for table in hashed + cast(list[MultiHashEmbedding], list(self.attributes)):
            nn.init.normal_(table.table.weight, std=0.05)
            table.table.weight.data[0] = 0  # the padding row
        nn.init.normal_(self.surface.weight, std=0.05)
        nn.init.normal_(self.bins.weight, std=0.05)
        layers = [nn.Linear(width, width) for _ in range(cfg.cross_layers)]
        for layer in layers:
            nn.init.normal_(layer.weight, std=width**-0.5)
            nn.init.zeros_(layer.bias)
        self.cross = nn.ModuleList(layers)
        self.out = nn.Linear(width, n_tasks)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def user_fields(self, user_ids: torch.Tensor, attribute_ids: torch.Tensor) -> torch.Tensor:
        """(B,) user ids and (B, A) attribute ids -> (B, (1 + A) d) the user's field embeddings."""
        parts = [self.user(user_ids).sum(-2)] if self.ids else []
        parts += [table(attribute_ids[:, k]).sum(-2) for k, table in enumerate(self.user_attributes)]
        return torch.cat(parts, -1) if parts else self.surface.weight.new_zeros(len(user_ids), 0)

    def forward(self, user_fields: torch.Tensor, bins: torch.Tensor, c: CandidateBatch) -> torch.Tensor:
        """user_fields (B, U) from `user_fields`, bins (B, C, F) from `TokenEmbedder.dense_bins` -> (B, C, K)."""
        B, C = bins.shape[:2]
        ids = [self.post(c.post_ids).sum(-2), self.author(c.author_ids).sum(-2)] if self.ids else []
        parts = [
            user_fields.unsqueeze(1).expand(B, C, -1),
            *ids,
            self.surface(c.surfaces.clamp(0, self.surface.num_embeddings - 1)),
            *(table(c.attributes[..., k]).sum(-2) for k, table in enumerate(self.attributes)),
            self.bins(bins).flatten(-2),
        ]
        x0 = torch.cat([p.to(user_fields.dtype) for p in parts], -1)  # (B, C, W)
        x = x0
        for layer in self.cross:
            x = x0 * layer(x) + x
        return self.out(x)


class BlendCombiner(nn.Module):
    """The combination module: a small MLP from the user representation to one multiplier per task in [0, 2].

    The blended score is sum_k m_k(user) * w_k * p_k. A multiplier is non-negative, so it rescales a blend weight
    but never flips its sign: a negative action stays a penalty (the `ScoringWeights` sign rule). The last layer
    starts at zero, so every multiplier starts at exactly 1 and the blend starts as the fixed Phoenix weights.
    It learns from `models.ranker.tasks.blend_loss` (pairs of a request's candidates ordered by observed engagement
    value), which `RankerTrainTask` adds when the config has `learn_blend`.
    """

    def __init__(self, d_model: int, n_tasks: int) -> None:
        super().__init__()
        last = nn.Linear(d_model, n_tasks)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.mlp = nn.Sequential(nn.Linear(d_model, d_model), nn.SiLU(), last)

    def forward(self, user_hidden: torch.Tensor) -> torch.Tensor:
        """user_hidden (B, D) -> (B, K) multipliers in [0, 2]."""
        return 2 * torch.sigmoid(self.mlp(user_hidden))


class Ranker(nn.Module):
    """The ranking model. `forward` is the reference (and training) path; `encode_user` + `score_candidates` is
    the serving path and returns the same outputs."""

    blend_weights: torch.Tensor  # (K,) signed Task.blend_weight
    continuous: torch.Tensor  # (K,) bool

    def __init__(self, cfg: RankerConfig, compile: bool = False) -> None:
        """Builds the model from its config.

        Args:
            cfg: the configuration.
            compile: torch.compile the transformer blocks and the candidate scorer (dynamic shapes); the
                state_dict is unchanged, so checkpoints are the same either way.
        """
        super().__init__()
        self.cfg = cfg
        self.tasks = select_tasks(cfg.tasks)
        D = cfg.d_model
        self.embedder = TokenEmbedder(cfg)
        # Positions 0..max_history for user + history (right-anchored), max_history + 1 for every candidate.
        self.rotary = Rotary(D // cfg.n_heads, cfg.max_history + 2)
        self.blocks = nn.ModuleList(
            Block(D, cfg.n_heads, cfg.n_kv_heads, cfg.ffn_mult, cfg.gate) for _ in range(cfg.n_layers)
        )
        self.norm = RMSNorm(D)
        self.heads = TaskHeads(D, self.tasks, funnel=cfg.head_mode == "funnel")
        self.combiner = BlendCombiner(D, len(self.tasks)) if cfg.learn_blend else None
        self.wide = WidePart(cfg, len(self.tasks)) if cfg.wide else None
        self.cross = CrossPart(cfg, len(self.tasks)) if cfg.cross_layers else None
        self.drop = nn.Dropout(cfg.dropout)
        # Row 0 = position unknown: zero and never trained, so serving (positions -1) gets no offset.
        self.position_bias = (
            nn.Embedding(cfg.max_position + 1, len(self.tasks), padding_idx=0) if cfg.max_position > 0 else None
        )
        if self.position_bias is not None:
            nn.init.zeros_(self.position_bias.weight)
        self.register_buffer("blend_weights", torch.tensor([t.blend_weight for t in self.tasks]), persistent=False)
        continuous = torch.tensor([t.kind is TaskKind.CONTINUOUS for t in self.tasks])
        self.register_buffer("continuous", continuous, persistent=False)
        if compile:
            for block in self.blocks:
                block.compile(dynamic=True)
            self._score_layers = torch.compile(self._score_layers, dynamic=True)  # type: ignore[method-assign]

    @property
    def layers(self) -> list[Block]:
        """The transformer blocks, typed (iterating an nn.ModuleList gives plain Modules)."""
        return cast(list[Block], list(self.blocks))

    @property
    def candidate_position(self) -> int:
        """The one rotary position every candidate sits at."""
        return self.cfg.max_history + 1

    @torch.no_grad()
    def fit_dense_stats(self, dense: torch.Tensor) -> None:
        """Sets the dense-feature standardisation from training rows: dense (N, F) raw values."""
        x = torch.log1p(dense.float().clamp(min=0))
        self.embedder.dense_mean.copy_(x.mean(0))
        self.embedder.dense_std.copy_(x.std(0).nan_to_num(1.0).clamp(min=1e-3))
        nb = self.cfg.dense_bins
        if nb and len(x):
            sample = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:200_000]]
            q = torch.linspace(0, 1, nb + 1, dtype=torch.float64)[1:-1]
            self.embedder.bin_edges.copy_(torch.quantile(sample.double(), q, dim=0).T.float())

    @torch.no_grad()
    def fit_head_bias(self, labels: torch.Tensor, available: torch.Tensor) -> None:
        """Starts every head at the training set's base rate: a binary head's bias at the logit of its positive rate
        (in funnel mode a child's at the logit of its rate among its parent's positives: the conditional it
        outputs), the continuous head's at the target's mean; labels (..., K) in task order, `available` (K,) bool.

        A rare action (one report in ~2,000 impressions) otherwise starts near 0.5, and a short run on a small
        training set leaves it far above its rate: the served blend, whose negative weights are large, then ranks
        by that error. Unavailable tasks keep their bias."""
        rows = labels.reshape(-1, labels.shape[-1]).double()
        column = {t.name: k for k, t in enumerate(self.tasks)}
        bias = self.heads.proj.bias
        for k, t in enumerate(self.tasks):
            if not bool(available[k]):
                continue
            y = rows[:, k]
            if t.kind is TaskKind.CONTINUOUS:
                bias[k] = float(y.mean()) if len(y) else 0.0
                continue
            if self.heads.funnel and t.parent is not None:
                if t.parent not in column or not bool(available[column[t.parent]]):
                    continue
                y = y[rows[:, column[t.parent]] > 0.5]
            if len(y) == 0:
                continue
            rate = min(max(float(y.mean()), 1e-5), 1 - 1e-5)
            bias[k] = math.log(rate / (1 - rate))

    def _context(
        self, user: UserFeatures, history_attributes: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """User + history tokens (B, T0, D), their validity (B, T0) and right-anchored positions (B, T0)."""
        S = user.hist_post_ids.shape[1]
        if self.cfg.max_history < S:
            raise ValueError(f"Ranker: history of {S} positions, max_history is {self.cfg.max_history}")
        e = self.embedder
        h = torch.cat([e.user_token(user).unsqueeze(1), e.history_tokens(user, history_attributes)], 1)  # (B, T0, D)
        hist_valid = user.hist_post_ids != 0  # (B, S)
        # The user token is always valid, so no query row is fully masked (no NaN from softmax).
        valid = torch.cat([torch.ones_like(hist_valid[:, :1]), hist_valid], 1)  # (B, T0)
        newer = hist_valid.sum(1, keepdim=True) - hist_valid.cumsum(1)  # (B, S) valid events after this one
        hist_pos = torch.where(hist_valid, self.cfg.max_history - newer, 0)  # newest valid event at max_history
        positions = torch.cat([torch.zeros_like(hist_pos[:, :1]), hist_pos], 1)  # (B, T0): user token at 0
        return h, valid, positions

    def _context_mask(self, valid: torch.Tensor) -> torch.Tensor:
        """(B, 1, T0, T0) bool: user + history attend to valid user + history keys (causally if configured)."""
        mask = valid[:, None, None, :]  # (B, 1, 1, T0)
        if self.cfg.causal:
            T0 = valid.shape[1]
            mask = mask & torch.ones(T0, T0, dtype=torch.bool, device=valid.device).tril()
        return mask

    def _rope(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """positions (B, T) -> cos, sin (B, 1, T, hd), broadcasting over heads."""
        return self.rotary.cos[positions].unsqueeze(1), self.rotary.sin[positions].unsqueeze(1)

    def hidden_states(
        self, user: UserFeatures, candidates: CandidateBatch, history_attributes: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Final-norm hidden states of the whole sequence [user, history, candidates]: (B, 1 + S + C, D)."""
        C = candidates.num_candidates
        if self.cfg.max_candidates < C:
            raise ValueError(
                f"Ranker: {C} candidates in one pass, max_candidates is {self.cfg.max_candidates} "
                f"(score_candidates chunks any number)"
            )
        ctx, ctx_valid, ctx_pos = self._context(user, history_attributes)
        B, T0, _ = ctx.shape
        cand = self.embedder.candidate_tokens(candidates)  # (B, C, D)
        if self.cfg.user_in_candidate:
            cand = cand + ctx[:, :1]  # the user token (position 0 of the context)
        h = self.drop(torch.cat([ctx, cand], 1))  # (B, T, D), T = T0 + C
        positions = torch.cat([ctx_pos, ctx_pos.new_full((B, C), self.candidate_position)], 1)  # (B, T)
        cos, sin = self._rope(positions)
        # Candidate isolation (phoenix.md 2.3): rows are queries, columns keys.
        mask = torch.zeros(B, 1, T0 + C, T0 + C, dtype=torch.bool, device=h.device)
        mask[:, :, :T0, :T0] = self._context_mask(ctx_valid)  # user + history: never candidates
        mask[:, :, T0:, :T0] = ctx_valid[:, None, None, :]  # candidates: every valid user + history key
        mask[:, :, T0:, T0:] = torch.eye(C, dtype=torch.bool, device=h.device)  # ... and themselves only
        for block in self.layers:
            h = block(h, cos, sin, mask)
        return self.norm(h)

    def forward(
        self, user: UserFeatures, candidates: CandidateBatch, history_attributes: torch.Tensor | None = None
    ) -> RankerOutput:
        """Scores B requests' candidates in one pass (training).

        Args:
            user: B requests (S <= max_history).
            candidates: C <= max_candidates per request. Padding slots get outputs too; mask them (`loss_mask`).
            history_attributes: (B, S, A) attribute ids of the history posts (`TokenEmbedder.history_tokens`).

        Returns:
            logits (B, C, K) and the blend multipliers (B, K) when the config has a combination module.
        """
        h = self.hidden_states(user, candidates, history_attributes)  # (B, T, D)
        T0 = user.hist_post_ids.shape[1] + 1
        logits = self.heads(self.drop(h[:, T0:]), self._offset(candidates, self._cross_user(user)))  # (B, C, K)
        multipliers = self.combiner(h[:, 0]) if self.combiner is not None else None
        return RankerOutput(logits.float(), None if multipliers is None else multipliers.float())

    def _cross_user(self, user: UserFeatures) -> torch.Tensor | None:
        """(B, U) the user's cross-part fields; None without a cross part."""
        return None if self.cross is None else self.cross.user_fields(user.user_ids, user.attribute_ids)

    def _offset(self, candidates: CandidateBatch, cross_user: torch.Tensor | None = None) -> torch.Tensor | None:
        """(B, C, K) what is added to the heads' raw outputs: the position-bias tower, the wide and cross parts."""
        offset = self._position_offset(candidates)
        return self._add_parts(offset, candidates, cross_user)

    def _add_parts(
        self, offset: torch.Tensor | None, candidates: CandidateBatch, cross_user: torch.Tensor | None
    ) -> torch.Tensor | None:
        """`offset` plus the wide and cross parts' logits (each only where the config has it)."""
        if self.wide is None and self.cross is None:
            return offset
        bins = self.embedder.dense_bins(candidates.dense)
        for part in (
            None if self.wide is None else self.wide(bins, candidates),
            None if self.cross is None or cross_user is None else self.cross(cross_user, bins, candidates),
        ):
            if part is not None:
                offset = part if offset is None else offset + part
        return offset

    def _served_offset(
        self, candidates: CandidateBatch, on_cpu: bool, cross_user: torch.Tensor | None = None
    ) -> torch.Tensor | None:
        """`_offset`, without the position-bias lookup when every position is unknown (serving) and the unknown
        position's row 0 is zero (as training leaves it: padding_idx): it would add exactly nothing."""
        bias = self.position_bias
        if bias is not None and on_cpu and not (candidates.positions.numpy() >= 0).any():
            zero = derived(bias, "row0_is_zero", (bias.weight,), lambda: bool((bias.weight[0] == 0).all()))
            if zero:
                return self._add_parts(None, candidates, cross_user)
        return self._offset(candidates, cross_user)

    def _position_offset(self, candidates: CandidateBatch) -> torch.Tensor | None:
        """(B, C, K) position-bias offsets of logged slots (unknown positions, -1, get 0); None without the tower."""
        if self.position_bias is None:
            return None
        slot = torch.where(candidates.positions < 0, 0, candidates.positions.clamp(max=self.cfg.max_position - 1) + 1)
        return self.position_bias(slot)

    # Serving path -------------------------------------------------------------------------------------------------
    # The same outputs as `forward` (up to float rounding; tests/models/test_ranker.py) in far fewer operators: at
    # serving sizes (one request, ~500 candidates, the nano preset) the time was operator dispatch, not arithmetic.
    # Token inputs are built in numpy on CPU (`TokenEmbedder.*_np`), the blocks run `Block.infer` (fused projections
    # and norms), and the candidates' attention uses projections with their one rotary position folded in.

    def _on_cpu(self, *tensors: torch.Tensor) -> bool:
        return self.embedder.user_proj.weight.device.type == "cpu" and all(t.device.type == "cpu" for t in tensors)

    @torch.inference_mode()
    def encode_user(self, user: UserFeatures, history_attributes: torch.Tensor | None = None) -> UserCache:
        """Runs user + history once and keeps each layer's keys and values: candidates never change them."""
        S = user.hist_post_ids.shape[1]
        if self.cfg.max_history < S:
            raise ValueError(f"Ranker: history of {S} positions, max_history is {self.cfg.max_history}")
        T0 = S + 1
        if self._on_cpu(user.hist_post_ids) and all(block.numpy_sized(T0) for block in self.layers):
            # One request's user + history, all in numpy: tokens (TokenEmbedder.*_np) and blocks (Block.infer_np),
            # far cheaper than torch operators at this size.
            e = self.embedder
            hist_valid = user.hist_post_ids.numpy() != 0  # (B, S)
            B = len(hist_valid)
            x = np.concatenate([e.user_token_np(user)[:, None], e.history_tokens_np(user, history_attributes)], 1)
            newer = hist_valid.sum(1, keepdims=True) - hist_valid.cumsum(1)  # valid events after each one
            hist_pos = np.where(hist_valid, self.cfg.max_history - newer, 0)
            positions = np.concatenate([np.zeros((B, 1), np.int64), hist_pos], 1)  # (B, T0)
            valid_np = np.concatenate([np.ones((B, 1), bool), hist_valid], 1)
            cos_table, sin_table = self.rotary.tables_np(self.rotary.cos.shape[0])  # (L, 1, hd)
            cos, sin = cos_table[positions], sin_table[positions]  # (B, T0, 1, hd)
            allowed = valid_np[:, None, None, :]
            if self.cfg.causal:
                allowed = allowed & np.tri(T0, dtype=bool)
            user_input = torch.from_numpy(x[:, 0]) if self.cfg.user_in_candidate else None
            bias = attention_bias(allowed)
            kv_np: list[tuple[np.ndarray, np.ndarray]] = []
            for block in self.layers:
                x = block.infer_np(x, cos, sin, bias, kv_np)
            keys = tuple(torch.from_numpy(k) for k, _ in kv_np)
            values = tuple(torch.from_numpy(v) for _, v in kv_np)
            hidden = torch.from_numpy(self.norm.infer_np(x[:, 0]))
            return UserCache(keys, values, torch.from_numpy(valid_np), hidden, user_input, self._cross_user(user))
        h, valid, positions_t = self._context(user, history_attributes)
        user_input_t = h[:, 0] if self.cfg.user_in_candidate else None
        cos_t, sin_t = self.rotary.cos[positions_t].unsqueeze(2), self.rotary.sin[positions_t].unsqueeze(2)
        mask = self._context_mask(valid)
        kv: list[tuple[torch.Tensor, torch.Tensor]] = []  # each layer's keys (rotary applied) and values
        for block in self.layers:
            h = block.infer(h, cos_t, sin_t, mask, kv)
        return UserCache(
            tuple(k for k, _ in kv),
            tuple(v for _, v in kv),
            valid,
            self.norm.infer(h[:, 0]),
            user_input_t,
            self._cross_user(user),
        )

    def _candidate_qkv_weight(self, block: Block) -> torch.Tensor:
        """(H hd + 2 Hkv hd, D): q and k projections of a candidate with its rotary position applied (every candidate
        sits at `candidate_position`: rotary is then a fixed linear map) and q scaled by 1/sqrt(hd), then v."""
        attn, hd = block.attn, block.attn.head_dim
        cos, sin = self.rotary.cos[self.candidate_position], self.rotary.sin[self.candidate_position]  # (hd,)
        wq = attn.q.weight
        wk, wv = attn.kv.weight.split(attn.n_kv_heads * hd)

        def rotated(w: torch.Tensor) -> torch.Tensor:  # rows of (W x) * cos + rotate_half(W x) * sin
            heads = w.view(-1, hd, w.shape[-1])
            turned = rotate_half_rows(w, hd).view_as(heads)
            return (heads * cos[:, None] + turned * sin[:, None]).reshape(w.shape)

        return torch.cat([rotated(wq) / math.sqrt(hd), rotated(wk), wv])

    def _score_layers(self, cache: UserCache, h: torch.Tensor) -> torch.Tensor:
        """Candidate tokens h (B, C, D) through every layer against the cached keys/values -> (B, C, D) final-norm.

        Per layer, candidate i's attention is a softmax over [valid cached keys, its own key]: the candidate rows of
        the isolation mask, without building the (T, T) mask or recomputing user + history.
        """
        B, C, _ = h.shape
        key_bias = torch.zeros(cache.valid.shape, dtype=h.dtype, device=h.device).masked_fill_(~cache.valid, -math.inf)
        key_bias = key_bias[:, None, None, :]  # (B, 1, 1, T0): -inf at padding keys
        for block, k_ctx, v_ctx in zip(self.layers, cache.keys, cache.values, strict=True):
            attn = block.attn
            H, Hkv, hd = attn.n_heads, attn.n_kv_heads, attn.head_dim
            rep = H // Hkv
            sources = (attn.q.weight, attn.kv.weight, self.rotary.cos)
            w = derived(block, "candidate_qkv", sources, functools.partial(self._candidate_qkv_weight, block))
            p = F.linear(block.attn_norm.infer(h), w)  # (B, C, (H + 2 Hkv) hd)
            # Query head j reads kv head j // rep (Attention's repeat_interleave): queries grouped by kv head.
            q = p[..., : H * hd].view(B, C, Hkv, rep, hd)
            k = p[..., H * hd : (H + Hkv) * hd].view(B, C, Hkv, 1, hd)
            v = p[..., (H + Hkv) * hd :].view(B, C, Hkv, 1, hd)
            s_self = (q * k).sum(-1).permute(0, 2, 3, 1).reshape(B, Hkv, rep * C, 1)  # the scale is folded into q
            q = q.permute(0, 2, 3, 1, 4).reshape(B, Hkv, rep * C, hd)  # rows (r, c) of each kv head
            s_ctx = q @ k_ctx.transpose(-1, -2) + key_bias  # (B, Hkv, rep C, T0)
            wts = torch.softmax(torch.cat([s_ctx, s_self], -1), -1)  # (B, Hkv, rep C, T0 + 1)
            v_self = v.permute(0, 2, 3, 1, 4).expand(B, Hkv, rep, C, hd).reshape(B, Hkv, rep * C, hd)
            y = wts[..., :-1] @ v_ctx + wts[..., -1:] * v_self  # (B, Hkv, rep C, hd)
            y = y.view(B, Hkv, rep, C, hd).permute(0, 3, 1, 2, 4).reshape(B, C, H * hd)  # head j = (j // rep, j % rep)
            h = h + attn.out(y)
            h = h + block.ffn.infer(block.ffn_norm.infer(h))
        return self.norm.infer(h)

    @torch.inference_mode()
    def score_candidates(self, cache: UserCache, candidates: CandidateBatch, chunk: int | None = None) -> RankerOutput:
        """Scores any number of candidates against an encoded user, `chunk` at a time (default max_candidates).

        Args:
            cache: from `encode_user` for the same B requests.
            candidates: (B, C) candidates, any C.
            chunk: candidates per step; the result does not depend on it.

        Returns:
            The same as `forward(user, candidates)`.
        """
        chunk = chunk or self.cfg.max_candidates
        C = candidates.num_candidates
        on_cpu = self._on_cpu(candidates.post_ids)
        parts = []
        for start in range(0, C, chunk):
            part = candidates.slice(start, min(start + chunk, C))
            if on_cpu:
                tokens = torch.from_numpy(self.embedder.candidate_tokens_np(part))  # (B, c, D)
            else:
                tokens = self.embedder.candidate_tokens(part)
            if cache.user_input is not None:
                tokens = tokens + cache.user_input.unsqueeze(1)
            h = self._score_layers(cache, tokens)
            parts.append(self.heads(h, self._served_offset(part, on_cpu, cache.cross_user)))
        B, K = cache.valid.shape[0], len(self.tasks)
        logits = torch.cat(parts, 1) if parts else cache.user_hidden.new_zeros(B, 0, K)
        multipliers = self.combiner(cache.user_hidden) if self.combiner is not None else None
        return RankerOutput(logits.float(), None if multipliers is None else multipliers.float())

    # Serving-side read-outs ---------------------------------------------------------------------------------------

    def predictions(self, out: RankerOutput) -> torch.Tensor:
        """(B, C, K): probabilities for binary tasks; for continuous ones the regression value mapped back from log1p
        (dwell_time: predicted seconds, >= 0)."""
        seconds = torch.expm1(out.logits.clamp(min=0, max=MAX_LOG_SECONDS))
        return torch.where(self.continuous, seconds, torch.sigmoid(out.logits))

    def blend(self, probs: torch.Tensor, multipliers: torch.Tensor | None = None) -> torch.Tensor:
        """The default blended score sum_k m_k w_k p_k with w = Task.blend_weight (negative actions subtract).

        Args:
            probs: (B, C, K) from `predictions`.
            multipliers: (B, K) non-negative per-user scales (`RankerOutput.blend_multipliers`); None = all 1.

        Returns:
            (B, C) scores.
        """
        w = self.blend_weights.to(probs.dtype)  # (K,)
        if multipliers is not None:
            return (probs * (w * multipliers).unsqueeze(1)).sum(-1)
        return (probs * w).sum(-1)


def save_ranker(model: Ranker, path: Path) -> None:
    """Writes `path/model.pt` (state_dict) and `path/config.json`, atomically (the directory is replaced)."""
    with atomic_dir(Path(path)) as tmp:
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, tmp / "model.pt")
        (tmp / "config.json").write_text(model.cfg.to_json())


def load_ranker(path: Path, map_location: str | torch.device = "cpu", compile: bool = False) -> Ranker:
    """Rebuilds the ranker from `path/config.json` and loads `path/model.pt` (weights_only: no pickled code).

    Raises:
        UserError: not a saved ranker, a config this code does not accept, or weights that do not fit the config.
    """
    path = Path(path)
    for name in ("config.json", "model.pt"):
        if not (path / name).is_file():
            raise UserError(f"{path}: not a saved ranker (no {name})")
    try:
        model = Ranker(RankerConfig.from_json((path / "config.json").read_text()), compile=compile)
    except (ValueError, TypeError) as err:  # unknown or invalid keys: written by other code than this
        raise UserError(f"{path / 'config.json'}: does not match this code's RankerConfig: {err}") from None
    try:
        model.load_state_dict(torch.load(path / "model.pt", map_location=map_location, weights_only=True))
    except (RuntimeError, pickle.UnpicklingError) as err:
        first = str(err).strip().splitlines()[0]
        raise UserError(f"{path / 'model.pt'}: weights do not match {path / 'config.json'}: {first}") from None
    return model.to(map_location).eval()
