"""Ranker scorer (x-algorithm's PhoenixScorer): the multi-task ranker's per-action predictions for every candidate.

Inputs are built as training builds them (`models.ranker_data.RankerDataset`): the user through
`models.data.user_tensors` (`serving.inputs.user_inputs`), the candidate dense vector from `cfg.candidate_features`
(post_*, author_* and user_* columns), the candidate attributes as `string_id`s, the in-network flag, the post age
at request time, the history posts' attributes, and position -1 (unknown, so the position-bias tower adds nothing).
A feature the store did not have reads as training reads a null: 0, attribute id 0. The user is encoded once
(`Ranker.encode_user`) and the candidates are scored against that cache (`Ranker.score_candidates`).

It fills `candidate.actions` {task: prediction} (probabilities; `dwell_time` in seconds) and leaves the blend to the
weighted scorer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from models.layers import string_id
from models.ranker import CandidateBatch, Ranker
from models.two_tower import UserFeatures
from serving.component import Component
from serving.hydrators.post_features import FeatureRow, FeatureTable
from serving.inputs import user_inputs, user_value
from serving.types import ActionRow, ActionTable, Candidate, Query


def history_attributes(model: Ranker, query: Query, user: UserFeatures) -> torch.Tensor:
    """(1, S, A) attribute ids of the history posts in the encoded user's slots (0 at padding and unknown posts)."""
    names = model.cfg.candidate_attributes
    history = query.history or {}
    ids = history.get("hist_post_ids", ())
    by_post: dict[int, list[int]] = {}
    for i, pid in enumerate(ids):
        by_post[int(pid)] = [string_id(_at(history.get(f"hist_{a}"), i)) for a in names]  # the newest row wins
    slots = user.hist_post_ids[0].tolist()
    table = [by_post.get(p, [0] * len(names)) if p != 0 else [0] * len(names) for p in slots]
    return torch.tensor(table, dtype=torch.int64).reshape(1, len(slots), len(names))


def _at(values: tuple[object, ...] | None, i: int) -> object:
    return values[i] if values is not None and i < len(values) else None


def candidate_batch(model: Ranker, query: Query, candidates: list[Candidate]) -> CandidateBatch:
    """(1, C) candidates as the ranker's training batches hold them."""
    cfg = model.cfg
    now_ms = int(query.now.timestamp() * 1000)
    n = len(candidates)
    user_dense = {f: user_value(query, f) for f in cfg.candidate_features if f.startswith("user_")}
    dense = np.zeros((n, len(cfg.candidate_features)), dtype=np.float32)
    attributes = np.zeros((n, len(cfg.candidate_attributes)), dtype=np.int64)
    age = np.full(n, -1, dtype=np.int64)
    rows = [c.features for c in candidates]
    views = [r for r in rows if isinstance(r, FeatureRow)]
    table = views[0].table if views else None
    if table is not None and len(views) == n and all(r.table is table and not r.extra for r in views):
        at = np.array([r.row for r in views], dtype=np.int64)
        return _from_columns(model, query, candidates, table, at, user_dense, now_ms)
    for i, c in enumerate(candidates):
        f = c.features
        dense[i] = [_number(user_dense[name] if name in user_dense else f.get(name)) for name in cfg.candidate_features]
        attributes[i] = [string_id(f.get(a)) for a in cfg.candidate_attributes]
        created = f.get("post_created_at_ms")
        if created is not None:
            age[i] = max(now_ms - int(created), 0)
    return CandidateBatch(
        post_ids=torch.tensor([[c.post_id for c in candidates]], dtype=torch.int64).reshape(1, n),
        author_ids=torch.tensor([[c.author_id for c in candidates]], dtype=torch.int64).reshape(1, n),
        surfaces=torch.full((1, n), query.surface, dtype=torch.int64),
        age_ms=torch.from_numpy(age).reshape(1, n),
        dense=torch.from_numpy(dense).reshape(1, n, len(cfg.candidate_features)),
        attributes=torch.from_numpy(attributes).reshape(1, n, len(cfg.candidate_attributes)),
        in_network=torch.tensor([[c.in_network for c in candidates]], dtype=torch.bool).reshape(1, n),
        positions=torch.full((1, n), -1, dtype=torch.int64),
        valid=torch.ones(1, n, dtype=torch.bool),
    )


def _from_columns(
    model: Ranker,
    query: Query,
    candidates: list[Candidate],
    table: FeatureTable,
    at: np.ndarray,
    user_dense: dict[str, object],
    now_ms: int,
) -> CandidateBatch:
    """`candidate_batch` from the hydrator's shared columns: the same values as the per-candidate path (a feature
    the store did not hold reads 0, attribute id 0), gathered with numpy instead of one dict lookup per value."""
    cfg = model.cfg
    n = len(candidates)
    dense = np.zeros((n, len(cfg.candidate_features)), dtype=np.float32)
    for j, name in enumerate(cfg.candidate_features):
        if name in user_dense:
            dense[:, j] = _number(user_dense[name])
            continue
        col = table.column(name)
        if col is not None:
            values, present = col
            dense[:, j] = np.where(present[at], np.asarray(values, dtype=np.float64)[at], 0.0)
    attributes = np.zeros((n, len(cfg.candidate_attributes)), dtype=np.int64)
    for j, name in enumerate(cfg.candidate_attributes):
        col = table.column(name)
        if col is not None:
            values, present = col
            known: dict[object, int] = {}  # a few topics and media types: hash each distinct value once
            ids = np.array(
                [
                    (known[v] if v in known else known.setdefault(v, string_id(v))) if p else 0
                    for v, p in zip(values, present, strict=True)
                ],
                dtype=np.int64,
            )
            attributes[:, j] = ids[at]
    age = np.full(n, -1, dtype=np.int64)
    created = table.column("post_created_at_ms")
    if created is not None:
        values, present = created
        ok = present[at]
        age[ok] = np.maximum(now_ms - np.asarray(values, dtype=np.int64)[at][ok], 0)
    return CandidateBatch(
        post_ids=torch.tensor([c.post_id for c in candidates], dtype=torch.int64).reshape(1, n),
        author_ids=torch.tensor([c.author_id for c in candidates], dtype=torch.int64).reshape(1, n),
        surfaces=torch.full((1, n), query.surface, dtype=torch.int64),
        age_ms=torch.from_numpy(age).reshape(1, n),
        dense=torch.from_numpy(dense).reshape(1, n, len(cfg.candidate_features)),
        attributes=torch.from_numpy(attributes).reshape(1, n, len(cfg.candidate_attributes)),
        in_network=torch.tensor([c.in_network for c in candidates], dtype=torch.bool).reshape(1, n),
        positions=torch.full((1, n), -1, dtype=torch.int64),
        valid=torch.ones(1, n, dtype=torch.bool),
    )


def _number(value: object) -> float:
    return 0.0 if value is None else float(value)  # type: ignore[arg-type]


def ranker_inputs(
    model: Ranker, query: Query, candidates: list[Candidate]
) -> tuple[UserFeatures, CandidateBatch, torch.Tensor]:
    """The user (1 request), its candidates and the history attributes: what `Ranker.forward` takes."""
    user = user_inputs(query, model.cfg)
    return user, candidate_batch(model, query, candidates), history_attributes(model, query, user)


@dataclass
class RankerScorer(Component):
    """Attributes:
    model: the loaded ranker (eval mode).
    chunk: candidates scored per step against the cached user (the scores do not depend on it). One step for the
        ~500 candidates a request ranks: each step repeats every layer's small operators, and at 256 the second
        step doubled the model's time (nano, 368 candidates, 1 thread, 2 loaded cores: 7.3 ms in two steps, 3.9 in one).
    """

    model: Ranker
    chunk: int = 1024

    def score(self, query: Query, candidates: list[Candidate]) -> list[Candidate]:
        if not candidates:
            return candidates
        user, batch, hist_attrs = ranker_inputs(self.model, query, candidates)
        device = next(self.model.parameters()).device
        with torch.inference_mode():
            cache = self.model.encode_user(user.to(device), hist_attrs.to(device))
            out = self.model.score_candidates(cache, batch.to(device), chunk=self.chunk)
            preds = self.model.predictions(out)[0].float().cpu().numpy()  # (C, K)
        table = ActionTable(tuple(t.name for t in self.model.tasks), preds)
        for i, c in enumerate(candidates):
            c.actions = ActionRow(table, i)
        return candidates
