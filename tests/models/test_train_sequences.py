"""One-pass sequence training of the two-tower: prefix embeddings equal truncated-history embeddings, the model
learns a deterministic next-item cycle, the wall-clock budget stops training, and the sampled-softmax path runs."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from core.errors import UserError
from models.retrieval.baselines import MostPopular, evaluate_retriever, make_corpus
from models.retrieval.metrics import ranking_metrics
from models.retrieval.model import TwoTower, TwoTowerConfig, UserFeatures
from models.retrieval.sequences import Split, leave_one_out
from models.retrieval.train_sequences import (
    SequenceRetriever,
    SequenceTrainConfig,
    SequenceTrainResult,
    evaluate_sequence_retriever,
    post_table,
    predecessor_gaps,
    sequence_target_ranks,
    sequence_windows,
    train_sequences,
)

NANO = TwoTowerConfig.preset("nano", causal=True, max_history=8, user_attributes=())


def cycle_events(n_items: int = 20, n_users: int = 60, seed: int = 0) -> pd.DataFrame:
    """Each user walks the cycle 1 -> 2 -> ... -> n_items -> 1 from a random start for 6..15 steps, a minute apart."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(1, n_users + 1):
        start, length = int(rng.integers(n_items)), int(rng.integers(6, 16))
        rows += [(u, 1 + (start + k) % n_items, 60_000 * k) for k in range(length)]
    n = len(rows)
    return pd.DataFrame(
        {
            "user_id": np.array([r[0] for r in rows], np.int64),
            "post_id": np.array([r[1] for r in rows], np.int64),
            "author_id": np.array([100 + r[1] % 3 for r in rows], np.int64),
            "actions": np.ones(n, np.int64),
            "surface": np.zeros(n, np.int64),
            "ts_ms": np.array([r[2] for r in rows], np.int64),
            "impression_id": np.arange(1, n + 1, dtype=np.int64),
        }
    )


def random_user(cfg: TwoTowerConfig, B: int, lengths: list[int], gen: torch.Generator) -> UserFeatures:
    S = cfg.max_history
    valid = torch.arange(S)[None, :] < torch.tensor(lengths)[:, None]  # (B, S)

    def ints(high: int) -> torch.Tensor:
        return torch.randint(1, high, (B, S), generator=gen) * valid

    return UserFeatures(
        user_ids=torch.randint(1, 1000, (B,), generator=gen),
        attribute_ids=torch.zeros(B, len(cfg.user_attributes), dtype=torch.long),
        hist_post_ids=ints(500),
        hist_author_ids=ints(50),
        hist_actions=ints(8),
        hist_surfaces=ints(3),
        hist_gap_ms=torch.randint(0, 10**9, (B, S), generator=gen) * valid,  # any per-event value
    )


def truncated(x: UserFeatures, n: int) -> UserFeatures:
    """x with each history cut to its first n events (right-padded again)."""
    keep = (torch.arange(x.hist_post_ids.shape[1]) < n)[None, :]
    return replace(x, **{f: getattr(x, f) * keep for f in ("hist_post_ids", "hist_author_ids", "hist_actions",
                                                          "hist_surfaces", "hist_gap_ms")})  # fmt: skip


@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_prefix_embeddings_equal_truncated_history_embeddings(pooling: str) -> None:
    torch.manual_seed(0)
    cfg = replace(NANO, n_layers=2, pooling=pooling, dropout=0.3)  # dropout: training only
    model = TwoTower(cfg).eval()
    x = random_user(cfg, 3, [8, 5, 1], torch.Generator().manual_seed(0))
    with torch.no_grad():
        prefix = model.prefix_user_embeddings(x)  # (B, S, D)
        assert prefix.shape == (3, cfg.max_history, cfg.d_model)
        for b, n in enumerate([8, 5, 1]):
            for i in range(n):
                expected = model.user_embedding(truncated(x.rows(slice(b, b + 1)), i + 1))[0]
                torch.testing.assert_close(prefix[b, i], expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="causal"):
        TwoTower(replace(cfg, causal=False)).prefix_user_embeddings(x)
    with pytest.raises(ValueError, match="pooling"):
        replace(cfg, pooling="max")
    with pytest.raises(ValueError, match="dropout"):
        replace(cfg, dropout=1.0)


def test_predecessor_gaps() -> None:
    np.testing.assert_array_equal(predecessor_gaps(np.array([0, 10, 30])), [-1, 10, 20])
    np.testing.assert_array_equal(predecessor_gaps(np.array([50, 40])), [-1, 0])
    assert len(predecessor_gaps(np.array([], np.int64))) == 0


def test_the_held_out_target_leaks_nothing_into_the_user_side() -> None:
    """Leave-one-out: moving the test target later in time or changing its labels (action bits, surface) must not
    change the user tower's inputs or any score; the successor gaps used before put 'target time - newest event'
    into the newest event's gap (issue 22 item 4)."""
    split = leave_one_out(cycle_events(n_users=8))
    corpus = make_corpus(split.train, split.valid, split.test)
    cfg = replace(NANO, user_attributes=("country",))
    torch.manual_seed(0)
    model = TwoTower(cfg).eval()
    retriever = SequenceRetriever(model, post_table(cfg, corpus, split.test_history), "full")
    moved = split.test.copy()
    moved["ts_ms"] += np.arange(1, len(moved) + 1) * 7_777_777  # later by a different amount per user
    moved["actions"] = 0b1011
    moved["surface"] = 2
    base, seen = retriever.score_events(split.test_history, split.test)
    other, seen_other = retriever.score_events(split.test_history, moved)
    torch.testing.assert_close(base, other, rtol=0, atol=0)
    assert all((a == b).all() for a, b in zip(seen, seen_other, strict=True))
    # Training: a window's inputs are its events 0..S-1 and carry no feature of the event each position predicts.
    table = post_table(cfg, corpus, split.train)
    events = split.train.copy()
    windows = sequence_windows(cfg, events, table, "full")
    last = events.groupby("user_id").tail(1).index  # each user's newest train event: a target, never an input
    events.loc[last, "ts_ms"] += 5_000_000
    events.loc[last, "actions"] = 0b110
    shifted = sequence_windows(cfg, events, table, "full")
    for name in ("hist_post_ids", "hist_actions", "hist_surfaces", "hist_gap_ms", "user_ids"):
        torch.testing.assert_close(getattr(windows.user, name), getattr(shifted.user, name), rtol=0, atol=0)


def fit(split: Split, corpus: np.ndarray, context: str = "items", **overrides: Any) -> SequenceTrainResult:
    tc = SequenceTrainConfig(
        **{"epochs": 40, "batch_size": 32, "lr": 1e-2, "eval_every": 5, "patience": 3, "context": context, **overrides}
    )
    return train_sequences(NANO, split.train, split.valid, None, corpus, tc)


@pytest.mark.parametrize("context", ["items", "full"])
def test_learns_a_deterministic_cycle_and_beats_popularity(context: str) -> None:
    split = leave_one_out(cycle_events())
    corpus = make_corpus(split.train, split.valid, split.test)
    res = fit(split, corpus, context)
    check_cycle(split, corpus, res, context)


def test_last_position_pooling_with_dropout_learns_the_cycle() -> None:
    split = leave_one_out(cycle_events())
    corpus = make_corpus(split.train, split.valid, split.test)
    cfg = replace(NANO, pooling="last", dropout=0.1)
    tc = SequenceTrainConfig(epochs=40, batch_size=32, lr=1e-2, eval_every=5, patience=3, context="full")
    check_cycle(split, corpus, train_sequences(cfg, split.train, split.valid, None, corpus, tc), "full")


def check_cycle(split: Split, corpus: np.ndarray, res: SequenceTrainResult, context: str) -> None:
    test = evaluate_sequence_retriever(res.retriever, split.test_history, split.test)
    popular = evaluate_retriever(MostPopular(corpus).fit(split.train), split.test_history, split.test)
    assert res.best_metric > 0.8
    assert test["ndcg@10"] > 0.8
    assert test["ndcg@10"] > popular["ndcg@10"] + 0.4
    if context == "items":  # the Retriever protocol path is the same evaluation
        assert evaluate_retriever(res.retriever, split.test_history, split.test) == test
        assert res.valid_ranks is None
    else:  # the best evaluation's validation ranks are those of the returned weights
        assert res.valid_ranks is not None
        again = sequence_target_ranks(res.retriever, split.train, split.valid)
        assert res.valid_ranks.tolist() == again.tolist()
        assert ranking_metrics(again, len(corpus))["ndcg@10"] == res.best_metric


def test_plateau_decay_halves_the_rate_after_each_evaluation_without_progress() -> None:
    split = leave_one_out(cycle_events())
    corpus = make_corpus(split.train, split.valid, split.test)
    res = fit(split, corpus, epochs=12, eval_every=1, patience=12, plateau_decay=0.5)
    best = -1.0
    for entry, after in zip(res.history, res.history[1:], strict=False):
        improved = entry["ndcg@10"] > best
        best = max(best, entry["ndcg@10"])
        assert after["lr"] == pytest.approx(entry["lr"] * (1.0 if improved else 0.5))
    assert res.history[-1]["lr"] < res.history[0]["lr"]  # the cycle is learnt early, then plateaus
    with pytest.raises(UserError, match="plateau_decay"):
        SequenceTrainConfig(plateau_decay=0.0)


def test_budget_stops_training() -> None:
    split = leave_one_out(cycle_events())
    corpus = make_corpus(split.train, split.valid, split.test)
    res = fit(split, corpus, epochs=1000, eval_every=1000, budget_seconds=0.0)
    assert len(res.history) == 1 and res.history[0]["steps"] == 1 and res.best_epoch == 1


def test_sampled_softmax_and_seeding() -> None:
    split = leave_one_out(cycle_events(seed=1))
    corpus = make_corpus(split.train, split.valid, split.test)
    a = fit(split, corpus, epochs=10, full_softmax_max_items=5, n_negatives=8)
    b = fit(split, corpus, epochs=10, full_softmax_max_items=5, n_negatives=8)
    assert np.isfinite(a.history[-1]["train_loss"])
    assert [h["train_loss"] for h in a.history] == [h["train_loss"] for h in b.history]


def test_rejects_bidirectional_config_and_bad_context() -> None:
    split = leave_one_out(cycle_events())
    corpus = make_corpus(split.train)
    with pytest.raises(UserError, match="causal"):
        train_sequences(replace(NANO, causal=False), split.train, None, None, corpus)
    with pytest.raises(UserError, match="context"):
        SequenceTrainConfig(context="bogus")


def test_sparse_tables_learn_the_cycle_and_leave_the_model_dense() -> None:
    split = leave_one_out(cycle_events())
    corpus = make_corpus(split.train, split.valid, split.test)
    res = fit(split, corpus, "full", sparse_tables=True)
    check_cycle(split, corpus, res, "full")
    assert not any(m.sparse for m in res.model.modules() if isinstance(m, torch.nn.Embedding))


def test_clip_grad_norm_takes_sparse_gradients_as_torch_takes_dense_ones() -> None:
    from models.training import clip_grad_norm

    torch.manual_seed(0)
    ids = torch.tensor([[1, 3, 3, 7], [2, 3, 9, 1]])  # repeated rows: the norm is of their sum
    norms, grads = [], []
    for sparse in (False, True):
        torch.manual_seed(0)
        emb, head = torch.nn.Embedding(10, 4, sparse=sparse), torch.nn.Linear(4, 1)
        (head(emb(ids)) ** 2).sum().backward()
        params = [emb.weight, *head.parameters()]
        clip = clip_grad_norm if sparse else torch.nn.utils.clip_grad_norm_
        norms.append(float(clip(params, 0.5)))
        grads.append([(p.grad.to_dense() if p.grad.is_sparse else p.grad) for p in params])  # type: ignore[union-attr]
    assert norms[0] == pytest.approx(norms[1], rel=1e-5) and norms[0] > 0.5
    for dense, sparse in zip(*grads, strict=True):
        torch.testing.assert_close(sparse, dense)
    assert float(torch.cat([g.flatten() for g in grads[1]]).norm()) == pytest.approx(0.5, rel=1e-4)


def test_sparse_table_adam_moves_only_the_rows_read_at_the_tables_own_rate() -> None:
    from models.training import SparseTableAdam, sparse_tables

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 1))
    assert sparse_tables(model) == 1
    opt = SparseTableAdam(model, lr=1e-2, weight_decay=0.0, table_lr_scale=3.0)
    assert [g["lr"] for g in opt.param_groups] == [1e-2, 1e-2, 3e-2]  # dense decay, dense no-decay, tables
    before = model[0].weight.detach().clone()
    model(torch.tensor([2, 5])).sum().backward()
    opt.step()
    moved = (model[0].weight.detach() != before).any(1)
    assert moved.tolist() == [i in (2, 5) for i in range(10)]
    with pytest.raises(UserError, match="table_lr_scale"):
        SequenceTrainConfig(table_lr_scale=0.0)
