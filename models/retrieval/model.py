"""Two-tower retrieval model (Phoenix retrieval design): a transformer user tower over [user, history] tokens and an
MLP candidate tower, both L2-normalised, scored by cosine / temperature.

Inputs are plain tensors in two dataclasses, `UserFeatures` and `CandidateFeatures` (built from a training set by
`models.retrieval.data`, from online features by serving). History is right-padded: the events of a user sit in
positions 0..n-1, oldest first, and post id 0 marks padding after them."""

from __future__ import annotations

import functools
import math
import pickle
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, ClassVar, Self, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core.actions import ACTIONS, BY_NAME
from core.errors import UserError
from core.io import atomic_dir
from core.schema import N_SURFACES
from models.layers import (
    Block,
    MultiHashEmbedding,
    RMSNorm,
    Rotary,
    attention_bias,
    entity_seed,
    linear_np,
    lookup_np,
    projected_actions_np,
    weight_np,
)
from models.model_config import ModelConfig, config_dataclass

MIN_TEMPERATURE = 0.01  # a learned temperature below this blows the logits up (CLIP caps 1/T at 100 too)
POOLINGS = ("mean", "last")
HISTORY_GAPS = ("request", "predecessor")


@config_dataclass
class TwoTowerConfig(ModelConfig):
    """Every hyperparameter of the model; written as config.json beside model.pt and used to rebuild it."""

    d_model: int = 64  # D: transformer width and output embedding size
    emb_dim: int = 32  # E: width of a hash-table row
    n_layers: int = 2
    n_heads: int = 4
    n_kv_heads: int = 2  # < n_heads: grouped-query attention
    ffn_mult: float = 4.0
    gate: str = "geglu"  # geglu | swiglu (models.layers.GATES)
    causal: bool = False  # Phoenix R1 retrieval is causal, R3 production bidirectional; mean pooling wants the latter
    max_history: int = 64  # S: the newest S history events are kept
    n_hashes: int = 2
    hash_seed: int = 0
    user_rows: int = 100_000  # hash-table rows per entity (row 0 is padding)
    post_rows: int = 200_000
    author_rows: int = 50_000
    attribute_rows: int = 256  # per string attribute: a handful of distinct values each
    user_attributes: tuple[str, ...] = ("country", "language", "age_bucket", "activity")  # columns user_<name>
    post_features: tuple[str, ...] = ("post_impressions", "post_click_count", "post_like_count")  # counts, log1p
    use_post_age: bool = True  # candidate tower sees the post-age bucket (age at request / index-build time)
    # Categorical post attributes hashed into the candidate tower: a post nobody has engaged with yet (its hash rows
    # untrained) is still placed by its topic and media (synthetic temporal split: 85% of targets are such posts).
    post_attributes: tuple[str, ...] = ("post_topic", "post_media_type")
    # History tokens read each history post's post_attributes through the candidate tower's own tables, so a taste
    # learnt from history topics transfers to a never-engaged post of that topic (off: configs saved before it).
    history_attributes: bool = False
    # Training only: the share of candidates whose post id rows are replaced by zeros, the input a post nobody has
    # engaged with gets at serving time (its rows untrained); the tower learns to place it by content. Off in eval.
    id_dropout: float = 0.0
    n_actions: int = len(ACTIONS)  # bits of the history action mask read (stored: the vocabulary is append-only)
    n_surfaces: int = N_SURFACES
    n_time_buckets: int = 40  # half-octave log buckets of minutes (time_bucket); 0 = padding/unknown
    temperature: float = 0.05  # initial value when learned
    learn_temperature: bool = True
    # The user embedding: "mean" of the hidden states of the user token and every history event, or "last": the
    # hidden state of the newest event (the user token's with no history), as SASRec reads a causal tower. With
    # causal attention "last" still sees every event; ML-100K next-item, nano: see models.retrieval.evaluate.
    pooling: str = "mean"
    # Training only: dropout on the user tower's input tokens and on its final hidden states (as SASRec's).
    dropout: float = 0.0
    # How a history event's time gap is measured: "request" = request time - event time
    # (models.retrieval.data.user_features: the Feast training set's rows), "predecessor" = the time since the user's
    # previous event (what one-pass sequence training can compute, models.retrieval.train_sequences). Serving builds
    # whichever the model was trained with.
    history_gaps: str = "request"
    # The history events the tower reads: "" = every engagement of the user_history view; an action name (e.g.
    # "click") = only events with that action, as sequence training's events are
    # (models.retrieval.sequences.positive_events).
    history_action: str = ""

    def __post_init__(self) -> None:
        self._freeze_tuples("user_attributes", "post_features", "post_attributes")
        self._check_attention()
        if not 0.0 <= self.id_dropout < 1.0:
            raise ValueError(f"TwoTowerConfig: id_dropout={self.id_dropout} is not in [0, 1)")
        if self.temperature < MIN_TEMPERATURE:
            raise ValueError(f"TwoTowerConfig: temperature={self.temperature} < {MIN_TEMPERATURE}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"TwoTowerConfig: pooling={self.pooling!r} is not one of {', '.join(POOLINGS)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"TwoTowerConfig: dropout={self.dropout} is not in [0, 1)")
        if self.history_gaps not in HISTORY_GAPS:
            choices = ", ".join(HISTORY_GAPS)
            raise ValueError(f"TwoTowerConfig: history_gaps={self.history_gaps!r} is not one of {choices}")
        if self.history_action and self.history_action not in BY_NAME:
            raise ValueError(f"TwoTowerConfig: history_action={self.history_action!r} is not an action name")

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        # Tests and `make demo`: trains on CPU in seconds.
        "nano": dict(
            d_model=32,
            emb_dim=16,
            n_layers=1,
            n_heads=2,
            n_kv_heads=1,
            max_history=16,
            user_rows=2_048,
            post_rows=4_096,
            author_rows=1_024,
            attribute_rows=64,
        ),  # fmt: skip
        "small": {},  # the defaults: the synthetic `small` scale (~10k users, 100k posts)
        # Phoenix R1 retrieval shape (D128, history 128), wider layers and tables.
        "base": dict(
            d_model=128,
            emb_dim=64,
            n_layers=4,
            n_heads=4,
            n_kv_heads=2,
            max_history=128,
            user_rows=500_000,
            post_rows=1_000_000,
            author_rows=200_000,
            attribute_rows=1_024,
        ),  # fmt: skip
    }


class _Tensors:
    """Row-wise helpers for the tensor dataclasses below: every field is a tensor with the row dimension first."""

    def _tensors(self) -> dict[str, torch.Tensor]:
        """The fields that are set (an optional field may be None)."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}  # type: ignore[arg-type]
        return {k: v for k, v in values.items() if v is not None}

    def to(self, device: torch.device | str) -> Self:
        return replace(self, **{k: v.to(device) for k, v in self._tensors().items()})  # type: ignore[type-var]

    def rows(self, idx: torch.Tensor | slice) -> Self:
        """The rows `idx` (a LongTensor of positions or a slice)."""
        return replace(self, **{k: v[idx] for k, v in self._tensors().items()})  # type: ignore[type-var]

    def __len__(self) -> int:
        return len(getattr(self, fields(self)[0].name))  # type: ignore[arg-type]


@dataclass(frozen=True)
class UserFeatures(_Tensors):
    """What the user tower reads for B requests (S = max_history, A = len(user_attributes))."""

    user_ids: torch.Tensor  # (B,) int64
    attribute_ids: torch.Tensor  # (B, A) int64: models.layers.string_id of each attribute, 0 = missing
    hist_post_ids: torch.Tensor  # (B, S) int64, right-padded with 0
    hist_author_ids: torch.Tensor  # (B, S) int64
    hist_actions: torch.Tensor  # (B, S) int64 bitmask over core.actions
    hist_surfaces: torch.Tensor  # (B, S) int64 in [0, n_surfaces)
    hist_gap_ms: torch.Tensor  # (B, S) int64: request time - event time, >= 0
    # (B, S, P) int64 `string_id`s of each history post's cfg.post_attributes (0 = unknown); None = all unknown.
    hist_attributes: torch.Tensor | None = None


@dataclass(frozen=True)
class CandidateFeatures(_Tensors):
    """What the candidate tower reads for N posts (F = len(post_features))."""

    post_ids: torch.Tensor  # (N,) int64
    author_ids: torch.Tensor  # (N,) int64
    dense: torch.Tensor  # (N, F) float32 raw counts (log1p is applied in the tower)
    age_ms: torch.Tensor  # (N,) int64 post age at request time, -1 = unknown
    attributes: torch.Tensor  # (N, A) int64 `string_id`s of cfg.post_attributes, 0 = unknown


def time_bucket(ms: torch.Tensor, n_buckets: int) -> torch.Tensor:
    """Half-octave log buckets of a duration: 1 + floor(2 log2(1 + minutes)), capped at n_buckets - 1.

    Bucket k >= 1 starts at 2^((k - 1) / 2) - 1 minutes: 1 is under 25 s, 2 to 1 min, 3 to 1.8 min, 4 to 3 min,
    ..., 21 from ~17 h, 25 from ~2.8 days, 39 from ~1 year. Fine where recency matters (minutes), coarse where it
    does not (weeks). A negative duration means unknown and gets bucket 0 (the padding row).

    Args:
        ms: (...) int64 milliseconds.

    Returns:
        (...) int64 in [0, n_buckets).
    """
    minutes = ms.clamp(min=0).double() / 60_000.0
    bucket = (1 + torch.floor(2 * torch.log2(1 + minutes))).long().clamp(max=n_buckets - 1)
    return torch.where(ms < 0, torch.zeros_like(bucket), bucket)


@functools.lru_cache(maxsize=8)
def time_bucket_edges(n_buckets: int) -> np.ndarray:
    """(n_buckets - 2,) int64: edge k - 2 is the smallest ms >= 0 with time_bucket(ms) >= k, k = 2 .. n_buckets - 1.

    Found by bisection on `time_bucket` itself, so `time_bucket_np` returns exactly its buckets: it is non-decreasing
    in ms (one millisecond moves log2(1 + minutes) by far more than the float64 log2's error)."""
    k = torch.arange(2, max(n_buckets, 2), dtype=torch.int64)
    lo, hi = torch.zeros_like(k), torch.full_like(k, 2**62)  # time_bucket(lo) < k <= time_bucket(hi)
    while bool((hi - lo > 1).any()):
        mid = (lo + hi) // 2
        above = time_bucket(mid, n_buckets) >= k
        hi, lo = torch.where(above, mid, hi), torch.where(above, lo, mid)
    return hi.numpy()


def time_bucket_np(ms: np.ndarray, n_buckets: int) -> np.ndarray:
    """`time_bucket` on a numpy array (the same int64 buckets) by binary search over its edges: one numpy operator
    instead of ten torch operators on a request's few hundred ages."""
    ms = np.asarray(ms, dtype=np.int64)
    bucket = np.minimum(1 + np.searchsorted(time_bucket_edges(n_buckets), ms, side="right"), n_buckets - 1)
    return np.where(ms < 0, 0, bucket)


class UserTower(nn.Module):
    """Transformer over [user token, history tokens], mean-pooled over valid positions, L2-normalised."""

    action_bits: torch.Tensor  # (n_actions,) 0, 1, 2, ...

    def __init__(self, cfg: TwoTowerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        E, D, H = cfg.emb_dim, cfg.d_model, cfg.n_hashes
        self.user_emb = MultiHashEmbedding(cfg.user_rows, E, H, entity_seed(cfg.hash_seed, "user"))
        self.attribute_emb = nn.ModuleList(
            MultiHashEmbedding(cfg.attribute_rows, D, H, entity_seed(cfg.hash_seed, f"user_{a}"))
            for a in cfg.user_attributes
        )
        self.user_proj = nn.Linear(H * E, D, bias=False)
        self.action_proj = nn.Linear(cfg.n_actions, E, bias=False)
        self.surface_emb = nn.Embedding(cfg.n_surfaces, E)
        self.history_proj = nn.Linear(2 * H * E + 2 * E, D, bias=False)  # post rows, author rows, action, surface
        n_attr = len(cfg.post_attributes) * H * E if cfg.history_attributes else 0
        self.history_attribute_proj = nn.Linear(n_attr, D, bias=False) if n_attr else None
        self.gap_emb = nn.Embedding(cfg.n_time_buckets, D, padding_idx=0)
        self.rotary = Rotary(D // cfg.n_heads, 1 + cfg.max_history)
        self.blocks = nn.ModuleList(
            Block(D, cfg.n_heads, cfg.n_kv_heads, cfg.ffn_mult, cfg.gate) for _ in range(cfg.n_layers)
        )
        self.norm = RMSNorm(D)
        self.drop = nn.Dropout(cfg.dropout)
        self.register_buffer("action_bits", torch.arange(cfg.n_actions), persistent=False)

    def history_tokens(
        self, x: UserFeatures, post_rows: torch.Tensor, author_rows: torch.Tensor, attribute_rows: torch.Tensor | None
    ) -> torch.Tensor:
        """(B, S, D) history tokens, zero at padding positions; attribute_rows (B, S, P H E) or None."""
        valid = x.hist_post_ids != 0  # (B, S)
        bits = (x.hist_actions.unsqueeze(-1) >> self.action_bits) & 1  # (B, S, n_actions)
        # Phoenix's signed multi-hot: +1 for an action taken, -1 for one not taken; all zero with no action at all.
        signed = (2 * bits - 1).float() * (x.hist_actions != 0).unsqueeze(-1)  # (B, S, n_actions)
        surface = self.surface_emb(x.hist_surfaces.clamp(0, self.cfg.n_surfaces - 1))  # (B, S, E)
        tokens = torch.cat([post_rows.flatten(-2), author_rows.flatten(-2), self.action_proj(signed), surface], -1)
        gap = torch.where(valid, time_bucket(x.hist_gap_ms, self.cfg.n_time_buckets), 0)  # (B, S)
        h = self.history_proj(tokens) + self.gap_emb(gap)  # (B, S, D)
        if self.history_attribute_proj is not None and attribute_rows is not None:
            h = h + self.history_attribute_proj(attribute_rows)
        return h * valid.unsqueeze(-1)

    def user_token(self, x: UserFeatures) -> torch.Tensor:
        """(B, D): projected user hash rows plus the summed attribute embeddings."""
        token = self.user_proj(self.user_emb(x.user_ids).flatten(-2))  # (B, D)
        for k, emb in enumerate(self.attribute_emb):
            token = token + emb(x.attribute_ids[:, k]).sum(-2)  # (B, H, D) -> (B, D)
        return token

    def forward(
        self, x: UserFeatures, post_rows: torch.Tensor, author_rows: torch.Tensor, attribute_rows: torch.Tensor | None
    ) -> torch.Tensor:
        """User embeddings.

        Args:
            x: B requests.
            post_rows, author_rows: (B, S, n_hashes, E) hash rows of the history posts and authors (the tables are
                shared with the candidate tower, so the caller looks them up).
            attribute_rows: (B, S, P n_hashes E) the history posts' attribute rows from the candidate tower's tables
                (None without cfg.history_attributes).

        Returns:
            (B, D) float32, unit L2 norm.
        """
        h, valid = self.hidden_states(x, post_rows, author_rows, attribute_rows)
        if self.cfg.pooling == "last":  # right-padded: the newest valid position is the number valid - 1
            pooled = h[torch.arange(len(h), device=h.device), valid.sum(1) - 1]  # (B, D)
        else:
            w = valid.unsqueeze(-1).float()  # (B, T, 1)
            pooled = (h * w).sum(1) / w.sum(1)  # (B, D)
        return F.normalize(pooled, dim=-1, eps=1e-12)

    def hidden_states(
        self, x: UserFeatures, post_rows: torch.Tensor, author_rows: torch.Tensor, attribute_rows: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, D) float32 final-norm hidden states of [user token, history] (T = S + 1) and (B, T) bool validity
        (the user token is always valid)."""
        B, S = x.hist_post_ids.shape
        history = self.history_tokens(x, post_rows, author_rows, attribute_rows)  # (B, S, D)
        h = self.drop(torch.cat([self.user_token(x).unsqueeze(1), history], 1))  # (B, T, D)
        # The user token is always valid, so no query row is fully masked (no NaN from softmax).
        valid = torch.cat([torch.ones_like(x.hist_post_ids[:, :1], dtype=torch.bool), x.hist_post_ids != 0], 1)
        mask = valid[:, None, None, :]  # (B, 1, 1, T): keys
        if self.cfg.causal:
            mask = mask & torch.ones(S + 1, S + 1, dtype=torch.bool, device=h.device).tril()  # (B, 1, T, T)
        cos, sin = self.rotary(S + 1)
        for block in self.blocks:
            h = block(h, cos, sin, mask)
        return self.drop(self.norm(h)).float(), valid

    def prefix_forward(
        self, x: UserFeatures, post_rows: torch.Tensor, author_rows: torch.Tensor, attribute_rows: torch.Tensor | None
    ) -> torch.Tensor:
        """The user embedding after each history position, from one causal pass (sequence training).

        Output i is the mean of the hidden states of the user token and the valid history events 0..i (a cumulative
        mean; with pooling "last" the hidden state of event i), L2-normalised: with causal attention the same as
        `forward` on the history cut to its first i + 1 events, provided each event's features (hist_gap_ms
        included) do not depend on i. Positions past the history (padding) must be ignored by the caller.

        Args:
            x, post_rows, author_rows, attribute_rows: as in `forward`.

        Returns:
            (B, S, D) float32, unit L2 norm.

        Raises:
            ValueError: the config is not causal (bidirectional attention lets early positions see later events).
        """
        if not self.cfg.causal:
            raise ValueError(
                "prefix embeddings need TwoTowerConfig(causal=True): a bidirectional tower leaks the future"
            )
        h, valid = self.hidden_states(x, post_rows, author_rows, attribute_rows)
        if self.cfg.pooling == "last":
            return F.normalize(h[:, 1:], dim=-1, eps=1e-12)  # (B, S, D): padding positions are ignored by the caller
        w = valid.unsqueeze(-1).float()  # (B, T, 1)
        pooled = (h * w).cumsum(1)[:, 1:] / w.cumsum(1)[:, 1:]  # (B, S, D): prefixes ending at history 0..S-1
        return F.normalize(pooled, dim=-1, eps=1e-12)


class CandidateTower(nn.Module):
    """Linear -> SiLU -> Linear over post and author hash rows (+ log1p counts, post-age bucket), L2-normalised."""

    def __init__(self, cfg: TwoTowerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        E, D, H = cfg.emb_dim, cfg.d_model, cfg.n_hashes
        self.age_emb = nn.Embedding(cfg.n_time_buckets, E, padding_idx=0) if cfg.use_post_age else None
        self.attribute_emb = nn.ModuleList(
            MultiHashEmbedding(cfg.attribute_rows, E, H, entity_seed(cfg.hash_seed, a)) for a in cfg.post_attributes
        )
        n_in = 2 * H * E + len(cfg.post_features) + (E if cfg.use_post_age else 0) + len(cfg.post_attributes) * H * E
        self.mlp = nn.Sequential(nn.Linear(n_in, 2 * D, bias=False), nn.SiLU(), nn.Linear(2 * D, D, bias=False))

    def attribute_rows(self, attributes: torch.Tensor) -> torch.Tensor:
        """(..., P n_hashes E) rows of `string_id`s (..., P) of cfg.post_attributes (the history reads them too)."""
        return torch.cat([emb(attributes[..., k]).flatten(-2) for k, emb in enumerate(self.attribute_emb)], -1)

    def forward(self, x: CandidateFeatures, post_rows: torch.Tensor, author_rows: torch.Tensor) -> torch.Tensor:
        """Candidate embeddings.

        Args:
            x: N posts.
            post_rows, author_rows: (N, n_hashes, E) hash rows.

        Returns:
            (N, D) float32, unit L2 norm.
        """
        return self.at_times(x, post_rows, author_rows, x.dense[None], x.age_ms[None])[0]

    def at_times(
        self,
        x: CandidateFeatures,
        post_rows: torch.Tensor,
        author_rows: torch.Tensor,
        dense: torch.Tensor,
        age_ms: torch.Tensor,
    ) -> torch.Tensor:
        """Embeddings of the same N posts as of K times: their counts and ages change, their id and attribute rows
        do not, so those are looked up (and back-propagated) once, not K times (sequence training's snapshots).

        Args:
            x: N posts (x.dense and x.age_ms are not read).
            post_rows, author_rows: (N, n_hashes, E) hash rows.
            dense: (K, N, len(post_features)) counts; age_ms: (K, N) int64 ages (-1 = unknown).

        Returns:
            (K, N, D) float32, unit L2 norm.
        """
        if self.training and self.cfg.id_dropout > 0:
            keep = torch.rand(len(post_rows), device=post_rows.device) >= self.cfg.id_dropout  # (N,)
            post_rows = post_rows * keep[:, None, None]
        K, N = age_ms.shape
        ids = torch.cat([post_rows.flatten(-2), author_rows.flatten(-2)], -1).expand(K, N, -1)  # (K, N, 2 H E)
        parts = [ids, torch.log1p(dense.float().clamp(min=0))]
        if self.age_emb is not None:
            parts.append(self.age_emb(time_bucket(age_ms, self.cfg.n_time_buckets)))  # (K, N, E)
        if self.attribute_emb:
            parts.append(self.attribute_rows(x.attributes).expand(K, N, -1))  # (K, N, P H E)
        return F.normalize(self.mlp(torch.cat(parts, -1)).float(), dim=-1, eps=1e-12)  # (K, N, D)


class TwoTower(nn.Module):
    """The retrieval model: returns embeddings only; the loss lives in models.retrieval.train."""

    def __init__(self, cfg: TwoTowerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        # One post and one author table serve both towers: a post in a history and the same post as a candidate
        # read the same rows.
        self.post_emb = MultiHashEmbedding(cfg.post_rows, cfg.emb_dim, cfg.n_hashes, entity_seed(cfg.hash_seed, "post"))
        self.author_emb = MultiHashEmbedding(
            cfg.author_rows, cfg.emb_dim, cfg.n_hashes, entity_seed(cfg.hash_seed, "author")
        )
        self.user_tower = UserTower(cfg)
        self.candidate_tower = CandidateTower(cfg)
        log_t = torch.tensor(math.log(cfg.temperature))
        if cfg.learn_temperature:
            self.log_temperature = nn.Parameter(log_t)
        else:
            self.register_buffer("log_temperature", log_t)

    @property
    def temperature(self) -> torch.Tensor:
        """() float: the softmax temperature T (score = cos / T)."""
        return self.log_temperature.exp().clamp(min=MIN_TEMPERATURE)

    def _history_rows(self, x: UserFeatures) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The history posts' rows in the tables both towers share: post, author and (cfg.history_attributes) the
        candidate tower's attribute tables; a missing hist_attributes reads as unknown (id 0) everywhere."""
        attribute_rows = None
        if self.cfg.history_attributes and self.cfg.post_attributes:
            ids = x.hist_attributes
            if ids is None:
                ids = x.hist_post_ids.new_zeros((*x.hist_post_ids.shape, len(self.cfg.post_attributes)))
            attribute_rows = self.candidate_tower.attribute_rows(ids)  # (B, S, P H E)
        return self.post_emb(x.hist_post_ids), self.author_emb(x.hist_author_ids), attribute_rows

    def user_embedding(self, x: UserFeatures) -> torch.Tensor:
        """(B, D) unit-norm user embeddings."""
        return self.user_tower(x, *self._history_rows(x))

    @torch.inference_mode()
    def embed_users(self, x: UserFeatures) -> torch.Tensor:
        """`user_embedding` for inference (serving): the same embeddings up to float rounding, in far fewer operators.

        One request's user tower is a few dozen tokens: its time was operator dispatch, not arithmetic. On CPU the
        tokens are built in numpy (one vectorised hash over the post, author and attribute tables, gathers, the
        action projection read from a table of every mask) and the blocks run `Block.infer`."""
        cpu = self.user_tower.user_proj.weight.device.type == "cpu" and x.hist_post_ids.device.type == "cpu"
        if self.training or not cpu:
            return self.user_embedding(x)
        z, valid_all = self._user_tokens_np(x)
        z = self._user_blocks_np(z, valid_all)
        B = z.shape[0]
        cfg = self.cfg
        if cfg.pooling == "last":
            pooled = z[np.arange(B), valid_all.sum(1) - 1]
        else:
            w = valid_all[..., None].astype(np.float32)
            pooled = (z * w).sum(1) / w.sum(1)
        norm = np.sqrt(np.add.reduce(pooled * pooled, -1, keepdims=True))  # F.normalize, in numpy
        return torch.from_numpy(pooled / np.maximum(norm, np.float32(1e-12)))

    def _user_tokens_np(self, x: UserFeatures) -> tuple[np.ndarray, np.ndarray]:
        """The user tower's input in numpy: (B, T, D) tokens (the user token, then the history) and (B, T) valid."""
        cfg, tower = self.cfg, self.user_tower
        post_ids = x.hist_post_ids.numpy()
        B, S = post_ids.shape
        tables: list[MultiHashEmbedding] = [self.post_emb, self.author_emb]
        ids = [post_ids, x.hist_author_ids.numpy()]
        with_attributes = cfg.history_attributes and bool(cfg.post_attributes)
        if with_attributes:
            attribute_ids = x.hist_attributes.numpy() if x.hist_attributes is not None else np.zeros_like(post_ids)
            attribute_ids = np.broadcast_to(attribute_ids.reshape(B, S, -1), (B, S, len(cfg.post_attributes)))
            tables += cast(list[MultiHashEmbedding], list(self.candidate_tower.attribute_emb))
            ids += [attribute_ids[..., k] for k in range(len(cfg.post_attributes))]
        post, author, *attribute_rows = lookup_np(tables, ids)
        (user_rows,) = lookup_np([tower.user_emb], [x.user_ids.numpy()])
        token = linear_np(tower.user_proj, user_rows.reshape(B, -1))
        user_attributes = x.attribute_ids.numpy()
        columns = [user_attributes[:, k] for k in range(user_attributes.shape[1])]
        for attribute in lookup_np(cast(list[MultiHashEmbedding], list(tower.attribute_emb)), columns, summed=True):
            token = token + attribute
        surfaces = np.clip(x.hist_surfaces.numpy(), 0, cfg.n_surfaces - 1)
        parts = [
            post.reshape(B, S, -1),
            author.reshape(B, S, -1),
            projected_actions_np(tower, tower.action_proj, x.hist_actions.numpy(), cfg.n_actions),
            np.take(weight_np(tower.surface_emb), surfaces, axis=0),
        ]
        valid = post_ids != 0
        gap = np.where(valid, time_bucket_np(x.hist_gap_ms.numpy(), cfg.n_time_buckets), 0)
        history = linear_np(tower.history_proj, np.concatenate(parts, -1))
        history = history + np.take(weight_np(tower.gap_emb), gap, axis=0)
        if tower.history_attribute_proj is not None and with_attributes:
            rows = np.concatenate([r.reshape(B, S, -1) for r in attribute_rows], -1)  # (B, S, P H E)
            history = history + linear_np(tower.history_attribute_proj, rows)
        z = np.concatenate([token[:, None], history * valid[..., None]], 1)  # (B, T, D)
        valid_all = np.concatenate([np.ones((B, 1), dtype=bool), valid], 1)  # (B, T)
        return z, valid_all

    def _user_blocks_np(self, z: np.ndarray, valid_all: np.ndarray) -> np.ndarray:
        """The user tower's blocks and final norm over `_user_tokens_np`'s tokens: numpy steps where every block is
        small enough (far cheaper than torch operators here), else `Block.infer`."""
        cfg, tower = self.cfg, self.user_tower
        S = z.shape[1] - 1
        mask = valid_all[:, None, None, :]
        if cfg.causal:
            mask = mask & _lower_triangle(S + 1)
        blocks = cast(list[Block], list(tower.blocks))
        if all(block.numpy_sized(S + 1) for block in blocks):
            cos, sin = tower.rotary.tables_np(S + 1)  # (T, 1, hd): the layout of Block.infer
            bias = attention_bias(mask)
            for block in blocks:
                z = block.infer_np(z, cos, sin, bias)
            z = tower.norm.infer_np(z)
        else:
            cos_t, sin_t = tower.rotary(S + 1)
            h = torch.from_numpy(z)
            for block in blocks:
                h = block.infer(h, cos_t[:, None], sin_t[:, None], torch.from_numpy(mask))
            z = tower.norm.infer(h).float().numpy()
        return z

    def prefix_user_embeddings(self, x: UserFeatures) -> torch.Tensor:
        """(B, S, D) unit-norm user embedding after each history position (`UserTower.prefix_forward`); needs a
        causal config (ValueError otherwise)."""
        return self.user_tower.prefix_forward(x, *self._history_rows(x))

    def candidate_embedding(self, x: CandidateFeatures) -> torch.Tensor:
        """(N, D) unit-norm candidate embeddings (what the ANN index stores)."""
        return self.candidate_tower(x, self.post_emb(x.post_ids), self.author_emb(x.author_ids))

    def candidate_embeddings_at(self, x: CandidateFeatures, dense: torch.Tensor, age_ms: torch.Tensor) -> torch.Tensor:
        """(K, N, D) unit-norm embeddings of N candidates as of K times (dense (K, N, F), age_ms (K, N) replace
        x.dense and x.age_ms; `CandidateTower.at_times`)."""
        return self.candidate_tower.at_times(x, self.post_emb(x.post_ids), self.author_emb(x.author_ids), dense, age_ms)

    def forward(self, user: UserFeatures, candidate: CandidateFeatures) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, D) user and (N, D) candidate embeddings."""
        return self.user_embedding(user), self.candidate_embedding(candidate)

    def score(self, user_emb: torch.Tensor, candidate_emb: torch.Tensor) -> torch.Tensor:
        """Logits cos / T: user_emb (B, D), candidate_emb (N, D) -> (B, N). 1/T scales the B x D side: dividing the
        B x N product instead costs a pass over it forward and three backward (a full-softmax step's largest
        tensor: ML-100K sequence training step 25% faster)."""
        return (user_emb / self.temperature) @ candidate_emb.T


def save(model: TwoTower, path: Path) -> None:
    """Writes `path/model.pt` (state_dict) and `path/config.json`, atomically (the directory is replaced)."""
    with atomic_dir(Path(path)) as tmp:
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, tmp / "model.pt")
        (tmp / "config.json").write_text(model.cfg.to_json())


def load_two_tower(path: Path, map_location: str | torch.device = "cpu") -> TwoTower:
    """Rebuilds the model from `path/config.json` and loads `path/model.pt` (weights_only: no pickled code)."""
    path = Path(path)
    for name in ("config.json", "model.pt"):
        if not (path / name).is_file():
            raise UserError(f"{path}: not a saved two-tower model (no {name})")
    try:
        model = TwoTower(TwoTowerConfig.from_json((path / "config.json").read_text()))
    except (ValueError, TypeError) as err:  # unknown or invalid keys: written by other code than this
        raise UserError(f"{path / 'config.json'}: does not match this code's TwoTowerConfig: {err}") from None
    try:
        model.load_state_dict(torch.load(path / "model.pt", map_location=map_location, weights_only=True))
    except (RuntimeError, pickle.UnpicklingError) as err:
        first = str(err).strip().splitlines()[0]
        raise UserError(f"{path / 'model.pt'}: weights do not match {path / 'config.json'}: {first}") from None
    return model.eval()


@functools.lru_cache(maxsize=16)
def _lower_triangle(n: int) -> np.ndarray:
    """(n, n) bool causal mask (row = query may see keys up to itself); read-only, shared."""
    tri = np.tri(n, dtype=bool)
    tri.flags.writeable = False
    return tri
