"""Sequence protocol: metrics (ties, seen filtering, absent targets), positive events from a canonical dataset,
leave-one-out and temporal splits, and retrieval rows that models.retrieval.data reads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch

from core.errors import UserError
from core.schema import TS, write_dataset
from models.retrieval.data import candidate_features, seen_post_ids, user_features
from models.retrieval.metrics import (
    corpus_columns,
    embedding_ranks,
    mask_seen,
    mask_unborn,
    ranking_metrics,
    target_ranks,
)
from models.retrieval.model import TwoTowerConfig
from models.retrieval.sequences import leave_one_out, positive_events, retrieval_rows, temporal_targets, training_rows

T0_MS = 1_700_000_000_000


# Metrics


def test_ties_rank_the_target_last_and_seen_items_are_removed() -> None:
    scores = torch.tensor([[1.0, 1.0, 1.0, 0.0], [0.0, 5.0, 4.0, 3.0], [0.0, 5.0, 4.0, 3.0], [1.0, 2.0, 3.0, 4.0]])
    targets = torch.tensor([0, 3, 3, -1])
    seen = [np.array([], np.int64), np.array([1, 3]), np.array([1, 2, -1]), np.array([0])]
    ranks = target_ranks(scores, targets, seen)
    # row 0: two other items tie with the target -> last of the three; row 1: item 1 removed, the target's own
    # column is never removed; row 2: both better items removed; row 3: absent -> N.
    assert ranks.tolist() == [2, 1, 0, 4]
    assert scores[1, 1] == 5.0  # the input is not modified


def test_posts_created_after_the_request_are_not_ranked() -> None:
    scores = torch.tensor([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]])
    created = np.array([0.0, 150.0, np.nan])  # NaN: creation unknown, stays rankable
    masked = mask_unborn(scores, created, np.array([100, 200]))
    assert masked.tolist() == [[1.0, float("-inf"), 3.0], [1.0, 2.0, 3.0]]
    assert mask_unborn(scores, None, np.array([0, 0])) is scores
    # Seen columns drop out except the kept one; the input is not modified.
    assert mask_seen(scores, [np.array([0, 1]), np.array([-1])], keep=np.array([1, 0])).tolist() == [
        [float("-inf"), 2.0, 3.0],
        [1.0, 2.0, 3.0],
    ]
    assert scores[0, 0] == 1.0


def _masked_reference(scores, targets, seen, created, request):  # type: ignore[no-untyped-def]
    """Ranks counted on the explicit masked copy: unborn then seen items at -inf, ties rank the target last."""
    masked = mask_seen(mask_unborn(scores, created, request), seen, keep=targets.numpy())
    t = masked.gather(1, targets.clamp(min=0)[:, None])
    rank = (masked >= t).sum(1) - 1
    return torch.where(targets >= 0, rank, torch.full_like(rank, scores.shape[1]))


@pytest.mark.parametrize("seed", range(6))
def test_fused_ranks_equal_the_masked_copy(seed: int) -> None:
    rng = np.random.default_rng(seed)
    Q, N = 40, 30
    scores = torch.as_tensor(rng.integers(0, 6, (Q, N)).astype(np.float32))  # many ties
    scores[0, :] = float("-inf")  # a row whose target's own score is -inf
    targets = torch.as_tensor(rng.integers(-1, N, Q))
    created = rng.integers(0, 100, N).astype(np.float64)
    created[rng.random(N) < 0.2] = np.nan  # unknown creation: kept
    request = rng.integers(0, 100, Q)  # some targets are created after their request (masked too)
    seen = [rng.integers(-1, N + 3, rng.integers(0, 12)) for _ in range(Q)]  # duplicates, -1, out of range
    seen[1] = np.array([int(targets[1])] * 3 + [0, 0])  # the target's own column repeated: never removed
    fused = target_ranks(scores, targets, seen, created, request)
    assert fused.tolist() == _masked_reference(scores, targets, seen, created, request).tolist()
    plain = target_ranks(scores, targets, seen)
    assert plain.tolist() == _masked_reference(scores, targets, seen, None, request).tolist()
    unborn_target = (created[targets.clamp(min=0).numpy()] > request) & (targets.numpy() >= 0)
    assert unborn_target.any() and (fused[torch.as_tensor(unborn_target)] == N - 1).all()  # ranked last of all


@pytest.mark.parametrize("block", [1, 7, 64])
def test_ranks_from_embeddings_equal_ranks_of_the_score_matrix(block: int) -> None:
    rng = np.random.default_rng(block)
    Q, N, D = 23, 50, 4
    users = torch.as_tensor(rng.integers(-2, 3, (Q, D)).astype(np.float32))  # small integers: exact ties
    items = torch.as_tensor(rng.integers(-2, 3, (N, D)).astype(np.float32))
    targets = torch.as_tensor(rng.integers(-1, N, Q))
    created = rng.integers(0, 100, N).astype(np.float64)
    request = rng.integers(0, 100, Q)
    seen = [rng.integers(-1, N, rng.integers(0, 9)) for _ in range(Q)]
    got = embedding_ranks(users, items, targets, seen, created, request, block=block)
    assert got.tolist() == _masked_reference(users @ items.T, targets, seen, created, request).tolist()
    assert (
        embedding_ranks(users, items, targets, seen, block=block).tolist()
        == target_ranks(users @ items.T, targets, seen).tolist()
    )


def test_fused_ranks_refuse_creation_times_without_request_times() -> None:
    with pytest.raises(ValueError, match="request_ms"):
        target_ranks(torch.zeros(2, 3), torch.tensor([0, 1]), [np.array([]), np.array([])], np.zeros(3), None)


def test_ranking_metrics_by_hand() -> None:
    m = ranking_metrics(torch.tensor([0, 9, 10, 60]), 100)
    assert set(m) == {"recall@10", "recall@50", "recall@200", "recall@1000", "ndcg@10", "ndcg@50"}
    assert m["recall@10"] == 0.5 and m["recall@50"] == 0.75 and m["recall@200"] == 1.0
    assert m["ndcg@10"] == pytest.approx((1.0 + 1 / np.log2(11)) / 4)
    assert m["ndcg@50"] == pytest.approx((1.0 + 1 / np.log2(11) + 1 / np.log2(12)) / 4)


def test_corpus_columns() -> None:
    assert corpus_columns(np.array([2, 5, 9]), np.array([9, 1, 5, 10])).tolist() == [2, -1, 1, -1]


# A canonical dataset


def _dataset(tmp_path: Path, clicks: list[tuple[int, int, int, int]], likes: frozenset[int] = frozenset()) -> Path:
    """clicks: (impression_id, user_id, post_id, seconds after T0); a non-click impression of user 1 is added."""
    rows = [*clicks, (999, 1, 77, 5)]
    n = len(rows)
    imp = pa.table(
        {
            "impression_id": pa.array([r[0] for r in rows], pa.int64()),
            "request_id": pa.array([r[0] for r in rows], pa.int64()),
            "user_id": pa.array([r[1] for r in rows], pa.int64()),
            "post_id": pa.array([r[2] for r in rows], pa.int64()),
            "author_id": pa.array([100 + r[2] for r in rows], pa.int64()),
            "ts": pa.array([T0_MS + 1000 * r[3] for r in rows], TS),
            "position": pa.array([-1] * n, pa.int32()),
            "in_network": pa.array([False] * n, pa.bool_()),
            "click": pa.array([0 if r[0] == 999 else 1 for r in rows], pa.int8()),
            "like": pa.array([1 if r[0] in likes else 0 for r in rows], pa.int8()),
        }
    )
    users = pa.table(
        {
            "user_id": pa.array([1, 2, 3], pa.int64()),
            "created_at": pa.array([T0_MS] * 3, TS),
            "country": ["FR", "IN", "US"],
            "language": ["fr", "hi", "en"],
            "age_bucket": ["25-34", "<18", "55+"],
            "activity": ["high", "low", "low"],
            "is_author": [False] * 3,
        }
    )
    post_ids = sorted({r[2] for r in rows})
    posts = pa.table(
        {
            "post_id": pa.array(post_ids, pa.int64()),
            "author_id": pa.array([100 + p for p in post_ids], pa.int64()),
            "created_at": pa.array([T0_MS - 1000 * p for p in post_ids], TS),
            "topic": pa.array([0] * len(post_ids), pa.int32()),
            "topic_secondary": pa.array([-1] * len(post_ids), pa.int32()),
            "topic_weight": pa.array([1.0] * len(post_ids), pa.float32()),
            "media_type": ["text"] * len(post_ids),
        }
    )
    out = tmp_path / "ds"
    write_dataset(out, {"impressions": imp, "users": users, "posts": posts}, "test", ("click", "like"))
    return out


# user 1: four clicks, two of them in the same second (impression ids 4 < 5 fix their order; the file lists 5 first);
# user 2: three clicks; user 3: two clicks (too few for leave-one-out).
CLICKS = [
    (1, 1, 10, 0),
    (2, 1, 11, 1),
    (5, 1, 13, 2),
    (4, 1, 12, 2),
    (3, 2, 10, 1),
    (6, 2, 11, 3),
    (8, 2, 14, 9),
    (7, 3, 10, 4),
    (9, 3, 12, 8),
]


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return _dataset(tmp_path, CLICKS, likes=frozenset({2, 6}))


def test_positive_events_sorted_with_impression_id_tie_break(dataset: Path) -> None:
    ev = positive_events(dataset)
    assert list(ev.columns) == ["user_id", "post_id", "author_id", "actions", "surface", "ts_ms", "impression_id"]
    assert ev["impression_id"].tolist() == [1, 2, 4, 5, 3, 6, 8, 7, 9]  # the non-click 999 is left out
    assert ev.loc[ev.impression_id == 2, "actions"].item() == 0b11  # click | like
    assert ev.loc[ev.impression_id == 1, "actions"].item() == 0b01
    assert ev["ts_ms"].dtype == np.int64 and ev["ts_ms"].iloc[0] == T0_MS
    assert len(positive_events(dataset, "like")) == 2
    with pytest.raises(UserError, match="ds.*reply"):
        positive_events(dataset, "reply")
    with pytest.raises(UserError, match="unknown action"):
        positive_events(dataset, "nope")


def test_leave_one_out_picks_last_and_second_last_by_impression_id(dataset: Path) -> None:
    split = leave_one_out(positive_events(dataset))
    assert split.test["impression_id"].tolist() == [5, 8]  # user 1: 4 and 5 share a second, 5 is later
    assert split.valid["impression_id"].tolist() == [4, 6]
    assert sorted(split.train["impression_id"]) == [1, 2, 3, 7, 9]  # user 3 stays wholly in train
    assert sorted(split.test_history["impression_id"]) == [1, 2, 3, 4, 6, 7, 9]


def test_temporal_targets_take_the_first_new_post_after_the_cutoff(tmp_path: Path) -> None:
    # user 1 re-clicks post 10 after the cutoff (not new), then clicks 12; user 2 has nothing after it.
    clicks = [(1, 1, 10, 0), (2, 1, 10, 10), (3, 1, 12, 11), (4, 1, 13, 12), (5, 2, 11, 1), (6, 1, 11, 6)]
    ev = positive_events(_dataset(tmp_path, clicks))
    split = temporal_targets(ev, T0_MS + 10_000, valid_cutoff_ms=T0_MS + 5_000)
    assert split.test["impression_id"].tolist() == [3]
    assert split.valid["impression_id"].tolist() == [6]
    assert sorted(split.train["impression_id"]) == [1, 5]
    assert sorted(split.test_history["impression_id"]) == [1, 5, 6]
    assert len(temporal_targets(ev, T0_MS + 10_000).valid) == 0
    with pytest.raises(UserError, match="valid_cutoff_ms"):
        temporal_targets(ev, T0_MS, valid_cutoff_ms=T0_MS)


def test_retrieval_rows_hold_the_history_before_each_target(dataset: Path) -> None:
    split = leave_one_out(positive_events(dataset))
    rows = retrieval_rows(split.test_history, split.test, dataset)
    first = rows.iloc[0]  # user 1's test target: impression 5 (post 13)
    assert first.post_id == 13 and first.author_id == 113
    assert first.event_timestamp == pd.Timestamp(T0_MS + 2000, unit="ms", tz="UTC")
    assert first.hist_post_ids.tolist() == [10, 11, 12]  # oldest first, incl. the same-second impression 4
    assert first.hist_author_ids.tolist() == [110, 111, 112]
    assert first.hist_actions.tolist() == [1, 3, 1]
    assert first.hist_timestamps.tolist() == [T0_MS, T0_MS + 1000, T0_MS + 2000]
    assert first.user_country == "FR" and first.user_activity == "high"
    assert first.post_created_at_ms == T0_MS - 13_000
    user2 = rows.iloc[1]  # post 14: nobody clicked it before
    assert user2.hist_post_ids.tolist() == [10, 11] and user2.post_impressions == 0

    train = training_rows(split.train, dataset)
    assert train.iloc[0].hist_post_ids is None and train.iloc[0].hist_length == 0  # a user's first event
    by_imp = dict(zip(split.train["impression_id"], train.to_dict("records"), strict=True))
    # post 10 was clicked by impressions 1 (user 1, t=0) and 3 (user 2, t=1) before user 3's impression 7 (t=4).
    assert by_imp[7]["post_impressions"] == 2 and by_imp[7]["post_click_count"] == 2
    assert by_imp[9]["post_like_count"] == 0 and by_imp[2]["post_impressions"] == 0

    cfg = TwoTowerConfig.preset("nano", max_history=2)
    x = user_features(rows, cfg)  # models.retrieval.data reads the rows as they are
    assert x.hist_post_ids[0].tolist() == [11, 12]  # cut to the newest 2 by models.retrieval.data
    assert x.hist_gap_ms[0].tolist() == [1000, 0]
    assert candidate_features(rows, cfg).age_ms.tolist() == [15_000, 23_000]
    assert [s.tolist() for s in seen_post_ids(rows)] == [[10, 11, 12], [10, 11]]
    assert retrieval_rows(split.test_history, split.test, dataset, max_history=1).iloc[0].hist_post_ids.tolist() == [12]
