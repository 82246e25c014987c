"""Ranker training sets (features.store.training_set(..., "ranker", ...)) as padded request tensors.

A training-set row is one impression with its labels and the features as of its time. The ranker scores a request's
candidates together, so rows are grouped by `request_id` (ordered by `position`): one group is one user state (the
request's first row gives the user and history features, identical across the request) and up to `max_candidates`
candidates; a longer request is cut into several groups. Every row of the frame sits in exactly one
(group, slot), so predictions map back to rows and metrics are computed per impression.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from core.actions import ACTION_NAMES
from core.errors import UserError
from models.layers import string_ids
from models.ranker.model import CandidateBatch, Ranker, RankerConfig
from models.ranker.task_table import Task
from models.ranker.tasks import blend_loss, label_tensor, loss_mask, pairwise_loss, ranker_loss
from models.retrieval.data import POST_CREATED, epoch_ms, user_features
from models.retrieval.model import UserFeatures

TRAINING_SET_FILE = "training_set.parquet"
META_FILE = "meta.json"  # written by features.store.training_set: dataset, observed_actions, window


def read_ranker_set(path: Path) -> tuple[pd.DataFrame, tuple[str, ...]]:
    """The training-set frame and the actions its dataset records (`Manifest.observed_actions`).

    Without a meta.json (a frame written by other means), an action counts as recorded when its column has a positive.

    Raises:
        UserError: no training set at path, or no impression rows.
    """
    path = Path(path)
    file = path / TRAINING_SET_FILE
    if not file.is_file():
        raise UserError(f"--training-set: no {TRAINING_SET_FILE} in {path}")
    df = pd.read_parquet(file)
    if df.empty:
        raise UserError(f"--training-set: {file} has no rows (empty training window)")
    if (path / META_FILE).is_file():
        observed = tuple(json.loads((path / META_FILE).read_text())["observed_actions"])
    else:
        observed = tuple(a for a in ACTION_NAMES if a in df.columns and df[a].fillna(0).to_numpy().any())
    return df, observed


def request_slots(df: pd.DataFrame, max_candidates: int) -> np.ndarray:
    """(R, C) int64: the frame row in each (group, slot), -1 for padding; C = min(max_candidates, largest request).

    Groups follow the requests in order of request_id, a request's rows in order of position (then row order); a
    request with more than max_candidates rows fills several consecutive groups.
    """
    if "request_id" not in df.columns:
        raise UserError("ranker training set: missing column 'request_id'")
    n = len(df)
    if n == 0:
        return np.zeros((0, 1), dtype=np.int64)
    req = df["request_id"].to_numpy()
    pos = df["position"].to_numpy(dtype=np.int64) if "position" in df.columns else np.zeros(n, np.int64)
    order = np.lexsort((np.arange(n), pos, req))  # by request, then position, then row
    req_sorted = req[order]
    starts = np.flatnonzero(np.r_[True, req_sorted[1:] != req_sorted[:-1]])
    request_of = np.cumsum(np.r_[True, req_sorted[1:] != req_sorted[:-1]]) - 1  # (n,) request index of each
    rank = np.arange(n) - starts[request_of]  # place within the request
    chunk = rank // max_candidates
    new_group = np.r_[True, (request_of[1:] != request_of[:-1]) | (chunk[1:] != chunk[:-1])]
    group = np.cumsum(new_group) - 1
    slot = rank % max_candidates
    width = int(slot.max()) + 1
    slots = np.full((int(group[-1]) + 1, width), -1, dtype=np.int64)
    slots[group, slot] = order
    return slots


@dataclass(frozen=True)
class RankerBatch:
    """b request groups: the user state, up to C candidates each, their labels and the frame rows they came from."""

    user: UserFeatures
    candidates: CandidateBatch
    labels: torch.Tensor  # (b, C, K) float32
    rows: torch.Tensor  # (b, C) int64 frame row, -1 at padding
    history_attributes: torch.Tensor  # (b, S, A) attribute ids of the history posts, 0 = unknown

    def to(self, device: torch.device | str) -> RankerBatch:
        return replace(
            self,
            user=self.user.to(device),
            candidates=self.candidates.to(device),
            labels=self.labels.to(device),
            history_attributes=self.history_attributes.to(device),
        )

    def __len__(self) -> int:
        return int(self.rows.shape[0])


def post_attributes(cfg: RankerConfig, *frames: pd.DataFrame | None) -> tuple[np.ndarray, np.ndarray]:
    """(P,) sorted post ids and (P, A) `string_id`s of their cfg.candidate_attributes, from every frame that has a
    post_id column (the newest row of a post wins; a missing attribute column reads as unknown, 0)."""
    parts = [f for f in frames if f is not None and "post_id" in f.columns and len(f)]
    if not parts:
        return np.zeros(0, np.int64), np.zeros((0, len(cfg.candidate_attributes)), np.int64)
    cols = ["post_id", *(a for a in cfg.candidate_attributes if any(a in f.columns for f in parts))]
    table = pd.concat([f[[c for c in cols if c in f.columns]] for f in parts], ignore_index=True)
    table = table.drop_duplicates("post_id", keep="last").sort_values("post_id")
    attrs = [
        string_ids(table[a]) if a in table.columns else np.zeros(len(table), np.int64) for a in cfg.candidate_attributes
    ]
    matrix = np.stack(attrs, 1) if attrs else np.zeros((len(table), 0), np.int64)
    return table["post_id"].to_numpy(dtype=np.int64), matrix


def lookup_attributes(post_ids: np.ndarray, table: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """(..., A) attribute ids of each post id (0 for id 0 / padding and for posts not in the table)."""
    ids, attrs = table
    out = np.zeros((*post_ids.shape, attrs.shape[1]), dtype=np.int64)
    if len(ids) == 0:
        return out
    pos = np.clip(np.searchsorted(ids, post_ids), 0, len(ids) - 1)
    hit = (ids[pos] == post_ids) & (post_ids != 0)
    out[hit] = attrs[pos[hit]]
    return out


class RankerDataset:
    """A ranker training set as request groups (see the module doc); indexing returns a `RankerBatch`.

    `posts` (post_id + attribute columns, e.g. the feature store's post_stats) tells the attributes of history posts
    that were never candidates in `df`; the frame's own candidate rows are always used.
    """

    def __init__(
        self,
        df: pd.DataFrame,
        cfg: RankerConfig,
        tasks: Sequence[Task],
        available: torch.Tensor,
        posts: pd.DataFrame | None = None,
    ) -> None:
        needed = ["request_id", "post_id", "author_id", "surface", "event_timestamp", *cfg.candidate_features]
        missing = [c for c in needed if c not in df.columns]
        if missing:
            raise UserError(f"ranker training set: missing columns {missing}")
        self.df = df
        self.slots = torch.from_numpy(request_slots(df, cfg.max_candidates))  # (R, C)
        first = self.slots[:, 0].numpy()
        self.user = user_features(df.iloc[first].reset_index(drop=True), cfg)  # (R, ...)
        table = post_attributes(cfg, posts, df)
        self.history_attributes = torch.from_numpy(lookup_attributes(self.user.hist_post_ids.numpy(), table))
        n = len(df)
        # Per-row candidate arrays with one extra all-zero row at index n for padding slots (-1 -> n).
        self.post_ids = _padded(df["post_id"].to_numpy(dtype=np.int64))
        self.author_ids = _padded(df["author_id"].to_numpy(dtype=np.int64))
        self.surfaces = _padded(df["surface"].to_numpy(dtype=np.int64))
        age = np.full(n, -1, dtype=np.int64)
        if POST_CREATED in df.columns:
            created = df[POST_CREATED].to_numpy(dtype=np.float64, na_value=np.nan)
            known = ~np.isnan(created)
            age[known] = np.maximum(epoch_ms(df["event_timestamp"])[known] - created[known].astype(np.int64), 0)
        self.age_ms = _padded(age, fill=-1)
        dense = df[list(cfg.candidate_features)].to_numpy(dtype=np.float32, na_value=0.0)
        self.dense = _padded(dense.reshape(n, len(cfg.candidate_features)))
        self.labels = _padded(label_tensor(df, tasks, available).numpy())
        attributes = [string_ids(df[a]) if a in df.columns else np.zeros(n, np.int64) for a in cfg.candidate_attributes]
        self.attributes = _padded(np.stack(attributes, 1) if attributes else np.zeros((n, 0), np.int64))
        in_network = df["in_network"].fillna(False).to_numpy(dtype=bool) if "in_network" in df.columns else None
        self.in_network = _padded(in_network if in_network is not None else np.zeros(n, dtype=bool))
        positions = df["position"].to_numpy(dtype=np.int64) if "position" in df.columns else np.full(n, -1)
        self.positions = _padded(positions, fill=-1)
        self.request_ids = df["request_id"].to_numpy()
        self.user_ids = df["user_id"].to_numpy()

    def __len__(self) -> int:
        return int(self.slots.shape[0])

    def __getitem__(self, idx: torch.Tensor | slice) -> RankerBatch:
        slots = self.slots[idx]  # (b, C)
        width = max(int((slots >= 0).sum(1).max()), 1) if len(slots) else 1
        slots = slots[:, :width]  # trim the padding columns no group of this batch uses
        at = torch.where(slots >= 0, slots, len(self.df))
        candidates = CandidateBatch(
            post_ids=self.post_ids[at],
            author_ids=self.author_ids[at],
            surfaces=self.surfaces[at],
            age_ms=self.age_ms[at],
            dense=self.dense[at],
            attributes=self.attributes[at],
            in_network=self.in_network[at],
            positions=self.positions[at],
            valid=slots >= 0,
        )
        return RankerBatch(self.user.rows(idx), candidates, self.labels[at], slots, self.history_attributes[idx])

    def train_dense(self) -> torch.Tensor:
        """(N, F) the raw dense candidate features of every row (for `Ranker.fit_dense_stats`)."""
        return self.dense[:-1]


def _padded(values: np.ndarray, fill: int = 0) -> torch.Tensor:
    pad = np.full((1, *values.shape[1:]), fill, dtype=values.dtype)
    return torch.from_numpy(np.ascontiguousarray(np.concatenate([values, pad])))


class RankerTrainTask(torch.nn.Module):
    """The ranker plus its multi-task loss; `forward(batch, generator)` returns the () loss of a batch."""

    available: torch.Tensor  # (K,) bool
    paired: torch.Tensor  # (K,) bool: the tasks the pairwise loss ranks

    def __init__(
        self,
        model: Ranker,
        available: torch.Tensor,
        pair_weight: float = 0.0,
        pair_scope: str = "group",
        pair_actions: tuple[str, ...] = (),
    ) -> None:
        super().__init__()
        self.model = model
        self.pair_weight = pair_weight
        self.pair_scope = pair_scope
        self.register_buffer("available", available.clone(), persistent=False)
        # The tasks the pairwise loss ranks (every binary one when `pair_actions` is empty).
        paired = [not pair_actions or t.name in pair_actions for t in model.tasks]
        self.register_buffer("paired", torch.tensor(paired, dtype=torch.bool), persistent=False)

    def forward(self, batch: RankerBatch, generator: torch.Generator | None = None) -> torch.Tensor:
        out = self.model(batch.user, batch.candidates, batch.history_attributes)
        mask = loss_mask(self.available, batch.candidates.valid)
        loss, _ = ranker_loss(out.logits, batch.labels, mask, self.model.tasks)
        if self.pair_weight > 0:
            keys = batch.user.user_ids if self.pair_scope == "user" else None
            pair_mask = mask & self.paired
            loss = loss + self.pair_weight * pairwise_loss(out.logits, batch.labels, pair_mask, self.model.tasks, keys)
        if out.blend_multipliers is not None:  # learn_blend: the combination module learns from pairs in a request
            probs = self.model.predictions(out)
            loss = loss + blend_loss(probs, out.blend_multipliers, batch.labels, mask, self.model.tasks)
        return loss


@torch.inference_mode()
def predict(model: Ranker, ds: RankerDataset, batch_size: int = 256) -> np.ndarray:
    """(N, K) predictions for every frame row, in frame order (`Ranker.predictions`: probabilities of binary tasks,
    seconds for dwell_time).

    Scored as serving scores: with the slot unknown (-1), so the position-bias tower adds nothing. The logged slot
    was chosen by the old policy, which neither serving nor the baselines (they drop `position`) know; scoring with
    it would credit the ranker with the old policy's placement."""
    model.eval()
    device = next(model.parameters()).device
    out = np.zeros((len(ds.df), len(model.tasks)), dtype=np.float32)
    for start in range(0, len(ds), batch_size):
        batch = ds[slice(start, start + batch_size)]
        unknown = torch.full_like(batch.candidates.positions, -1)
        batch = replace(batch, candidates=replace(batch.candidates, positions=unknown))
        batch_on = batch.to(device)
        out_ = model(batch_on.user, batch_on.candidates, batch_on.history_attributes)
        probs = model.predictions(out_).float().cpu().numpy()
        rows = batch.rows.numpy()
        keep = rows >= 0
        out[rows[keep]] = probs[keep]
    return out
