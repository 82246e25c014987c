"""Retrieval training sets (features.store.training_set(..., "retrieval", ...)) as padded tensors for the two-tower.

One row is one clicked impression: the user's features as of the impression (the request) and the clicked post
(the positive candidate). History arrays are cut to the newest `max_history` events and **right-padded**: events
oldest first in positions 0..n-1, then post id 0. A null history (a new user) is all padding.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import pandas as pd
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler

from core.errors import UserError
from models.layers import string_ids
from models.retrieval.model import CandidateFeatures, TwoTowerConfig, UserFeatures

HISTORY = ("hist_post_ids", "hist_author_ids", "hist_actions", "hist_surfaces", "hist_timestamps")
POST_CREATED = "post_created_at_ms"


def epoch_ms(values: pd.Series | pd.Index) -> np.ndarray:
    """(N,) int64 epoch milliseconds of a datetime column (any unit, naive = UTC) or of epoch-ms integers."""
    if pd.api.types.is_datetime64_any_dtype(values):
        ts = pd.to_datetime(values, utc=True)
        return np.asarray((ts - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(milliseconds=1), dtype=np.int64)
    return np.asarray(values, dtype=np.int64)


def _require(df: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise UserError(f"{what}: missing columns {missing}")


def _is_array(value: object) -> bool:
    return isinstance(value, list | tuple | np.ndarray)


class UserInputs(Protocol):
    """What `user_features` reads of a model config (TwoTowerConfig and RankerConfig both have it; a config without
    `history_gaps` / `history_action` reads request gaps over every event)."""

    @property
    def user_attributes(self) -> tuple[str, ...]: ...
    @property
    def max_history(self) -> int: ...


GAP_UNKNOWN = -1  # hist_gap_ms of an unknown gap: time bucket 0, the zero padding row


def predecessor_gaps(ts_ms: np.ndarray) -> np.ndarray:
    """Predecessor gaps of one history (oldest first): each event's time since the previous event, GAP_UNKNOWN for
    the first; negative differences (out-of-order clocks) clamp to 0. No request time: nothing after the history.

    Args:
        ts_ms: (n,) int64 event times.

    Returns:
        (n,) int64 milliseconds.
    """
    ts = np.asarray(ts_ms, dtype=np.int64)
    gaps = np.full(len(ts), GAP_UNKNOWN, dtype=np.int64)
    gaps[1:] = np.maximum(np.diff(ts), 0)
    return gaps


def history_rule(cfg: object) -> tuple[str, int | None]:
    """(gaps, action bit or None) of a model config: how `user_tensors` builds its history (see TwoTowerConfig)."""
    from core.actions import BY_NAME

    action = getattr(cfg, "history_action", "")
    return getattr(cfg, "history_gaps", "request"), (BY_NAME[action].bit if action else None)


def user_features(df: pd.DataFrame, cfg: UserInputs) -> UserFeatures:
    """The user-tower inputs of each row; request gaps are measured from the row's event_timestamp (request time)."""
    attributes = [f"user_{a}" for a in cfg.user_attributes]
    _require(df, ["user_id", "event_timestamp", *HISTORY, *attributes], "retrieval training set")
    attribute_ids = np.stack([string_ids(df[c]) for c in attributes], 1) if attributes else np.zeros((len(df), 0))
    gaps, action_bit = history_rule(cfg)
    return user_tensors(
        df["user_id"].to_numpy(dtype=np.int64),
        epoch_ms(df["event_timestamp"]),
        zip(*(df[c].to_numpy() for c in HISTORY), strict=True),
        attribute_ids,
        cfg.max_history,
        gaps=gaps,
        action_bit=action_bit,
    )


def user_tensors(
    user_ids: np.ndarray,
    request_ms: np.ndarray,
    histories: Iterable[tuple[object, ...]],
    attribute_ids: np.ndarray,
    max_history: int,
    gaps: str = "request",
    action_bit: int | None = None,
    history_attributes: Sequence[np.ndarray | None] | None = None,
) -> UserFeatures:
    """UserFeatures of n users from plain arrays: the one rule `user_features` (training frames), serving
    (`serving.inputs.user_inputs`, one query without a DataFrame) and sequence training's checks share.

    Args:
        user_ids, request_ms: (n,) int64.
        histories: per user, the HISTORY arrays in that order (None / not an array: no history yet).
        attribute_ids: (n, A) `string_id`s of the user attributes.
        max_history: S; the newest S events are kept, oldest first.
        gaps: "request": gap = request time - event time (>= 0); "predecessor": the time since the user's previous
            event in the (filtered) history, GAP_UNKNOWN for its first (models.retrieval.train_sequences).
        action_bit: keep only events whose action mask has this bit (None: every event); applied first.
        history_attributes: per user, (len(history), P) attribute ids aligned with its history arrays, or None;
            None for all: no hist_attributes (the tower reads them as unknown).
    """
    n, S = len(user_ids), max_history
    hist = {c: np.zeros((n, S), dtype=np.int64) for c in HISTORY}
    attrs: np.ndarray | None = None
    for i, row in enumerate(histories):
        if not _is_array(row[0]):  # None / NaN: no history yet
            continue
        arrays = [np.asarray(values, dtype=np.int64) for values in row]
        extra = history_attributes[i] if history_attributes is not None else None
        if action_bit is not None:
            keep = ((arrays[2] >> action_bit) & 1) == 1  # HISTORY[2] = hist_actions
            arrays = [a[keep] for a in arrays]
            extra = extra[keep] if extra is not None else None
        ts = arrays[4]  # HISTORY[4] = hist_timestamps
        gap = predecessor_gaps(ts) if gaps == "predecessor" else np.maximum(request_ms[i] - ts, 0)
        length = min(len(ts), S)
        if length == 0:
            continue
        for name, values in zip(HISTORY, arrays, strict=True):
            hist[name][i, :length] = values[-length:]  # the newest, oldest first
        hist["hist_timestamps"][i, :length] = gap[-length:]
        if extra is not None:
            if attrs is None:
                attrs = np.zeros((n, S, extra.shape[1]), dtype=np.int64)
            attrs[i, :length] = extra[-length:]
    if gaps == "predecessor":  # padding reads as an unknown gap, as sequence training pads
        hist["hist_timestamps"][hist["hist_post_ids"] == 0] = GAP_UNKNOWN
    return UserFeatures(
        user_ids=torch.as_tensor(np.asarray(user_ids, dtype=np.int64)),
        attribute_ids=torch.as_tensor(attribute_ids, dtype=torch.int64),
        hist_post_ids=torch.from_numpy(hist["hist_post_ids"]),
        hist_author_ids=torch.from_numpy(hist["hist_author_ids"]),
        hist_actions=torch.from_numpy(hist["hist_actions"]),
        hist_surfaces=torch.from_numpy(hist["hist_surfaces"]),
        hist_gap_ms=torch.from_numpy(hist["hist_timestamps"]),
        hist_attributes=None if attrs is None else torch.from_numpy(attrs),
    )


def candidate_features(df: pd.DataFrame, cfg: TwoTowerConfig, now_ms: int | None = None) -> CandidateFeatures:
    """The candidate-tower inputs of each row's post.

    Args:
        df: rows with post_id, author_id, the config's post features and post_created_at_ms (NaN = unknown).
        now_ms: the time post age is measured at; None = each row's event_timestamp (training rows). A corpus
            for an index passes the index-build time.
    """
    needed = ["post_id", "author_id", *cfg.post_features]
    if cfg.use_post_age:
        needed += [POST_CREATED] + (["event_timestamp"] if now_ms is None else [])
    _require(df, needed, "candidate features")
    dense = (
        df[list(cfg.post_features)].to_numpy(dtype=np.float32, na_value=0.0).reshape(len(df), len(cfg.post_features))
    )
    age = np.full(len(df), -1, dtype=np.int64)
    if cfg.use_post_age:
        created = df[POST_CREATED].to_numpy(dtype=np.float64, na_value=np.nan)
        ref = epoch_ms(df["event_timestamp"]) if now_ms is None else np.full(len(df), now_ms, dtype=np.int64)
        known = ~np.isnan(created)
        age[known] = np.maximum(ref[known] - created[known].astype(np.int64), 0)
    # A missing attribute column (a frame without post features) reads as unknown, like a missing value.
    attrs = [string_ids(df[a]) if a in df.columns else np.zeros(len(df), np.int64) for a in cfg.post_attributes]
    return CandidateFeatures(
        post_ids=torch.as_tensor(df["post_id"].to_numpy(dtype=np.int64)),
        author_ids=torch.as_tensor(df["author_id"].to_numpy(dtype=np.int64)),
        dense=torch.from_numpy(np.ascontiguousarray(dense)),
        age_ms=torch.from_numpy(age),
        attributes=torch.from_numpy(np.stack(attrs, 1) if attrs else np.zeros((len(df), 0), np.int64)),
    )


def seen_post_ids(df: pd.DataFrame) -> list[np.ndarray]:
    """Each row's whole history of post ids (not cut to max_history), for filtering seen items in evaluation."""
    return [np.asarray(v, dtype=np.int64) if _is_array(v) else np.zeros(0, np.int64) for v in df["hist_post_ids"]]


@dataclass(frozen=True)
class RetrievalBatch:
    """B positive (request, clicked post) pairs."""

    user: UserFeatures
    candidate: CandidateFeatures
    log_q: torch.Tensor  # (B,) float32: log sampling probability of each positive post (logQ correction)

    def to(self, device: torch.device | str) -> RetrievalBatch:
        return RetrievalBatch(self.user.to(device), self.candidate.to(device), self.log_q.to(device))

    def __len__(self) -> int:
        return len(self.log_q)


class RetrievalDataset(Dataset[RetrievalBatch]):
    """All rows as tensors, built once; `ds[list_of_rows]` is a `RetrievalBatch` (see `loader`).

    Args:
        df: a retrieval training set.
        cfg: the model config (history length, attributes, post features).
        log_q: (N,) per-row log probability of the row's post; zeros (no correction) when None.
    """

    def __init__(self, df: pd.DataFrame, cfg: TwoTowerConfig, log_q: np.ndarray | None = None) -> None:
        self.user = user_features(df, cfg)
        self.candidate = candidate_features(df, cfg)
        self.log_q = torch.zeros(len(df)) if log_q is None else torch.as_tensor(log_q, dtype=torch.float32)
        self.seen = seen_post_ids(df)

    def __len__(self) -> int:
        return len(self.log_q)

    def __getitem__(self, idx: int | Sequence[int] | torch.Tensor) -> RetrievalBatch:
        rows = torch.as_tensor([idx] if isinstance(idx, int) else idx, dtype=torch.long)
        return RetrievalBatch(self.user.rows(rows), self.candidate.rows(rows), self.log_q[rows])

    def loader(
        self, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None
    ) -> DataLoader[RetrievalBatch]:
        """Batches of rows: the sampler yields index lists and the dataset slices whole tensors (no per-row collate)."""
        sampler = RandomSampler(self, generator=generator) if shuffle else SequentialSampler(self)
        return DataLoader(
            self, sampler=BatchSampler(sampler, batch_size, drop_last=False), batch_size=None, collate_fn=_identity
        )


def _identity(batch: Any) -> Any:
    return batch


def temporal_split(
    df: pd.DataFrame, valid_fraction: float = 0.2, cutoff: pd.Timestamp | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train = rows before the cutoff, valid = rows at or after it (no row of the future in training).

    Args:
        valid_fraction: share of rows in valid when no cutoff is given (the cutoff is that quantile of time).
        cutoff: an explicit boundary (tz-aware UTC).
    """
    _require(df, ["event_timestamp"], "temporal_split")
    if cutoff is None:
        if not 0.0 < valid_fraction < 1.0:
            raise UserError(f"valid_fraction: {valid_fraction} is not in (0, 1)")
        ts = df["event_timestamp"].sort_values(ignore_index=True)
        cutoff = ts.iloc[min(int(len(ts) * (1.0 - valid_fraction)), len(ts) - 1)]
    early = df["event_timestamp"] < cutoff
    return df[early].reset_index(drop=True), df[~early].reset_index(drop=True)


def corpus_from_rows(*frames: pd.DataFrame) -> pd.DataFrame:
    """One row per post (its newest row in `frames`), with the post columns candidate_features reads."""
    rows = pd.concat(frames, ignore_index=True).sort_values("event_timestamp", kind="stable")
    keep = [c for c in rows.columns if c in ("post_id", "author_id") or c.startswith("post_")]
    return rows.drop_duplicates("post_id", keep="last")[keep].sort_values("post_id").reset_index(drop=True)
