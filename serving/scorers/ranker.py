"""Ranker scorer (x-algorithm's PhoenixScorer): the multi-task ranker's per-action predictions for every candidate.

Inputs are built as training builds them (`models.ranker.data.RankerDataset`): the user through
`models.retrieval.data.user_tensors` (`serving.inputs.user_inputs`), the candidate dense vector from
`cfg.candidate_features` (post_*, author_* and user_* columns), the candidate attributes as `string_id`s, the in-network
flag, the post age at request time, the history posts' attributes, and position -1 (unknown, so the position-bias tower
adds nothing). A feature the store did not have reads as training reads a null: 0, attribute id 0. The user is encoded
once (`Ranker.encode_user`) and the candidates are scored against that cache (`Ranker.score_candidates`).

It fills `candidate.actions` {task: prediction} (probabilities; `dwell_time` in seconds) and leaves the blend to the
weighted scorer.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import repeat
from operator import attrgetter

import numpy as np
import torch

from models.layers import string_id
from models.ranker.model import CandidateBatch, Ranker, RankerConfig
from models.retrieval.model import UserFeatures
from serving.component import Component
from serving.hydrators.post_features import FeatureRow, FeatureTable
from serving.inputs import string_ids_of, user_inputs
from serving.types import ActionRow, ActionTable, Candidate, Query


def history_attributes(model: Ranker, query: Query, user: UserFeatures) -> torch.Tensor:
    """(1, S, A) attribute ids of the history posts in the encoded user's slots (0 at padding and unknown posts)."""
    names = model.cfg.candidate_attributes
    history = query.history or {}
    ids = history.get("hist_post_ids", ())
    newest = dict(zip(map(int, ids), range(len(ids)), strict=True))  # post -> its newest row (a later row wins)
    slots = user.hist_post_ids[0].tolist()
    rows = [newest.get(p, -1) if p != 0 else -1 for p in slots]  # -1: padding or a post the history lacks
    table = np.zeros((len(slots), len(names)), dtype=np.int64)
    for j, a in enumerate(names):
        values = history.get(f"hist_{a}")
        table[:, j] = [string_id(_at(values, i)) if i >= 0 else 0 for i in rows]
    return torch.from_numpy(table).reshape(1, len(slots), len(names))


def _at(values: tuple[object, ...] | None, i: int) -> object:
    return values[i] if values is not None and i < len(values) else None


def candidate_batch(model: Ranker, query: Query, candidates: list[Candidate]) -> CandidateBatch:
    """(1, C) candidates as the ranker's training batches hold them."""
    cfg = model.cfg
    now_ms = int(query.now.timestamp() * 1000)
    n = len(candidates)
    stats = None if query.user_stats is None or "user_stats" in query.missing_views else query.user_stats
    user_dense = {f: stats.get(f) if stats is not None else None for f in _user_features(cfg)}  # as user_value reads
    # One C-level pass per field (map + attrgetter): a Python loop over ~500 candidates costs ~0.1 ms per pass here.
    post_ids = np.fromiter(map(_POST_ID, candidates), np.int64, n)
    author_ids = np.fromiter(map(_AUTHOR_ID, candidates), np.int64, n)
    in_network = np.fromiter(map(_IN_NETWORK, candidates), bool, n)
    rows = list(map(_FEATURES, candidates))
    tables = set(map(_TABLE, rows)) if n and set(map(type, rows)) == {FeatureRow} else set()
    if len(tables) == 1 and not any(map(_EXTRA, rows)):  # every candidate a plain row of one hydration's table
        table, at = tables.pop(), np.fromiter(map(_ROW, rows), np.int64, n)
    else:  # features given per candidate (posts a caller named, rows of several hydrations): their own table
        table, at = _rows_table(cfg, rows), np.arange(n)
    dense, attributes, age = _from_columns(cfg, table, at, user_dense, now_ms)
    return CandidateBatch(
        post_ids=torch.from_numpy(post_ids).reshape(1, n),
        author_ids=torch.from_numpy(author_ids).reshape(1, n),
        surfaces=torch.full((1, n), query.surface, dtype=torch.int64),
        age_ms=torch.from_numpy(age).reshape(1, n),
        dense=torch.from_numpy(dense).reshape(1, n, len(cfg.candidate_features)),
        attributes=torch.from_numpy(attributes).reshape(1, n, len(cfg.candidate_attributes)),
        in_network=torch.from_numpy(in_network).reshape(1, n),
        positions=torch.full((1, n), -1, dtype=torch.int64),
        valid=torch.ones(1, n, dtype=torch.bool),
    )


_POST_ID, _AUTHOR_ID, _IN_NETWORK, _FEATURES = (
    attrgetter(f) for f in ("post_id", "author_id", "in_network", "features")
)
_TABLE, _ROW, _EXTRA = (attrgetter(f) for f in ("table", "row", "extra"))


def _from_columns(
    cfg: RankerConfig, table: FeatureTable, at: np.ndarray, user_dense: dict[str, object], now_ms: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The dense (C, F) float32, attribute (C, A) int64 and age (C,) int64 arrays of `candidate_batch` from the
    hydrator's shared columns (candidate i is row at[i]): the same values as the per-candidate path (a feature the
    store did not hold reads 0, attribute id 0), gathered with numpy instead of one dict lookup per value.

    The store's columns are stacked into one (F', rows) matrix and gathered once at the candidates' rows, not once
    per feature; an attribute is hashed once per distinct value among the candidates (`pd.factorize`), not once per
    row of the table."""
    n = len(at)
    dense_t = np.zeros((len(cfg.candidate_features), n), dtype=np.float32)  # (F, C): a feature is a row
    stored: list[int] = []  # positions in candidate_features of the columns the store holds
    values: list[np.ndarray] = []
    present: list[np.ndarray] = []
    user: list[int] = []
    for j, name in enumerate(cfg.candidate_features):
        if name in user_dense:
            user.append(j)
            continue
        col = table.column(name)
        if col is not None:
            stored.append(j)
            values.append(col[0])
            present.append(col[1])
    if user:
        dense_t[user] = np.array([_number(user_dense[cfg.candidate_features[j]]) for j in user])[:, None]
    if stored:
        # One stack of the raw columns: mixed int32/float32 promote to float64, so every value converts exactly as
        # the per-candidate path's float(value) does, then to float32.
        dense_t[stored] = np.where(np.stack(present)[:, at], np.stack(values)[:, at], 0.0)
    dense = np.ascontiguousarray(dense_t.T)
    attributes = np.zeros((n, len(cfg.candidate_attributes)), dtype=np.int64)
    for j, name in enumerate(cfg.candidate_attributes):
        col = table.column(name)
        if col is not None:
            attributes[:, j] = _attribute_ids(np.asarray(col[0])[at], col[1][at])
    age = np.full(n, -1, dtype=np.int64)
    created = table.column("post_created_at_ms")
    if created is not None:
        values_ms, known = created
        ok = known[at]
        age[ok] = np.maximum(now_ms - np.asarray(values_ms, dtype=np.int64)[at][ok], 0)
    return dense, attributes, age


def _rows_table(cfg: RankerConfig, rows: list[Mapping[str, object]]) -> FeatureTable:
    """A `FeatureTable` of the features the ranker reads, from per-candidate mappings (a feature a row lacks, or
    holds as None, is not present): the one input path then reads it as it reads a hydration's columns."""
    columns: dict[str, np.ndarray] = {}
    present: dict[str, np.ndarray] = {}
    numeric = [f for f in cfg.candidate_features if not f.startswith("user_")] + ["post_created_at_ms"]
    for name in dict.fromkeys([*numeric, *cfg.candidate_attributes]):
        values = [row.get(name) for row in rows]
        present[name] = np.array([v is not None for v in values], dtype=bool)
        if name in cfg.candidate_attributes:
            columns[name] = np.array(values, dtype=object)
        else:  # float64 holds every int32 / float32 value and millisecond time exactly, as float(value) does
            columns[name] = np.array([0.0 if v is None else float(v) for v in values], dtype=np.float64)  # type: ignore[arg-type]
    return FeatureTable.of_columns(columns, present)


@functools.lru_cache(maxsize=64)
def _user_features(cfg: RankerConfig) -> tuple[str, ...]:
    """The user_* columns of the candidate features (the same for every candidate of a request)."""
    return tuple(f for f in cfg.candidate_features if f.startswith("user_"))


def _attribute_ids(values: np.ndarray, present: np.ndarray) -> np.ndarray:
    """(C,) `string_id` of each value (as the per-candidate path hashes it), 0 where the store had no row: each
    distinct value is hashed once (a few topics and media types)."""
    # Integers as Python ints (str() is the same as a numpy integer's); other values as numpy yields them (a float32
    # prints differently as a Python float). `items` is read twice, so a NaN finds its own entry.
    items = values.tolist() if values.dtype.kind in "iub" else list(values)
    return np.where(present, string_ids_of(items), 0)


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
        names = tuple(t.name for t in self.model.tasks)
        scales = None
        if out.blend_multipliers is not None:  # learn_blend: the user's multipliers, as the training blend used them
            scales = dict(zip(names, out.blend_multipliers[0].float().cpu().tolist(), strict=True))
        table = ActionTable(names, preds, scales)
        for c, row in zip(candidates, map(ActionRow, repeat(table), range(len(candidates))), strict=True):
            c.actions = row
        return candidates
