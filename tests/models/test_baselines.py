"""Retrieval baselines on tiny hand-made event sequences: popularity order, item co-occurrence, and SASRec learning a
deterministic next-item cycle (leave-one-out, full ranking)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from core.errors import UserError
from models.retrieval.baselines import (
    ItemKNN,
    MostPopular,
    SASRec,
    SASRecConfig,
    evaluate_baselines,
    evaluate_retriever,
    make_corpus,
)
from models.retrieval.sequences import leave_one_out


def events(sequences: dict[int, list[int]]) -> pd.DataFrame:
    """An events frame: user u engages with sequences[u] in order, one second apart."""
    rows = [(u, p, t) for u, seq in sequences.items() for t, p in enumerate(seq)]
    n = len(rows)
    return pd.DataFrame(
        {
            "user_id": np.array([r[0] for r in rows], np.int64),
            "post_id": np.array([r[1] for r in rows], np.int64),
            "author_id": np.array([r[1] for r in rows], np.int64),
            "actions": np.ones(n, np.int64),
            "surface": np.zeros(n, np.int64),
            "ts_ms": np.array([1000 * r[2] for r in rows], np.int64),
            "impression_id": np.arange(1, n + 1, dtype=np.int64),
        }
    )


def test_most_popular_ranks_by_train_count() -> None:
    ev = events({1: [5, 7, 7], 2: [7, 9], 3: [5, 7]})
    corpus = np.array([5, 7, 9, 11])
    pop = MostPopular(corpus).fit(ev)
    scores = pop.score([np.array([5]), np.array([], np.int64)])
    assert scores.shape == (2, 4)
    assert scores[0].tolist() == [2.0, 4.0, 1.0, 0.0]
    assert torch.equal(scores[0], scores[1])
    with pytest.raises(UserError, match="corpus"):
        MostPopular(np.array([3, 2]))


def test_item_knn_recommends_the_co_occurring_item() -> None:
    # 1 and 2 always go together, 3 and 4 together; 5 is popular but with everyone.
    ev = events({1: [1, 2, 5], 2: [1, 2, 5], 3: [3, 4, 5], 4: [3, 4, 5], 5: [1, 2]})
    corpus = make_corpus(ev)
    knn = ItemKNN(corpus).fit(ev)
    scores = knn.score([np.array([1]), np.array([3]), np.array([], np.int64)])
    assert corpus[int(scores[0].argmax())] == 2
    assert corpus[int(scores[1].argmax())] == 4
    assert scores[0, 0] == 0.0  # no self-similarity
    assert scores[0, 1] == pytest.approx(3 / np.sqrt(3 * 3))  # cosine of items 1 and 2: 3 shared users of 3 each
    assert (scores[2] == 0).all()
    last = ItemKNN(corpus, last_k=1).fit(ev).score([np.array([1, 3])])
    assert corpus[int(last[0].argmax())] == 4  # only the newest item counts
    pruned = ItemKNN(corpus, neighbors=1).fit(ev)
    assert (np.diff(pruned.sim.indptr) <= 1).all()


def cycle_events(n_items: int = 20, n_users: int = 60, seed: int = 0) -> pd.DataFrame:
    """Each user walks the cycle 1 -> 2 -> ... -> n_items -> 1 from a random start, for 6..15 steps (no repeats)."""
    rng = np.random.default_rng(seed)
    seqs = {}
    for u in range(1, n_users + 1):
        start, length = int(rng.integers(n_items)), int(rng.integers(6, 16))
        seqs[u] = [1 + (start + k) % n_items for k in range(length)]
    return events(seqs)


def test_sasrec_learns_a_deterministic_cycle_and_beats_popularity() -> None:
    split = leave_one_out(cycle_events())
    corpus = make_corpus(split.train, split.valid, split.test)
    cfg = SASRecConfig.preset("nano", epochs=30, eval_every=5, patience=2, seed=0)
    res = evaluate_baselines(
        split.train, split.valid, split.test, corpus, split.test_history, sasrec=cfg, names=("most_popular", "sasrec")
    )
    assert res["sasrec"]["ndcg@10"] > 0.9
    assert res["sasrec"]["ndcg@10"] > res["most_popular"]["ndcg@10"] + 0.5
    assert res["sasrec"]["best_epoch"] >= 1


def test_sasrec_sampled_softmax_and_seeding() -> None:
    split = leave_one_out(cycle_events(seed=1))
    corpus = make_corpus(split.train, split.valid, split.test)
    # full_softmax_max_items below the corpus size: uniform sampled negatives instead of the full softmax.
    cfg = SASRecConfig.preset("nano", epochs=30, eval_every=10, full_softmax_max_items=5, n_negatives=8, seed=3)
    a = SASRec(corpus, cfg, device="cpu").fit(split.train, split.valid)
    assert evaluate_retriever(a, split.test_history, split.test)["recall@10"] > 0.8
    histories = [np.array([1, 2, 3]), np.array([], np.int64)]
    short = replace(cfg, epochs=2)
    b, c = (SASRec(corpus, short, device="cpu").fit(split.train) for _ in range(2))
    assert torch.equal(b.score(histories), c.score(histories))  # same seed, same model
    assert a.score(histories).shape == (2, len(corpus))
    assert a.result is not None and len(a.result.history) >= 1


def test_unknown_baseline_is_a_user_error() -> None:
    ev = cycle_events()
    split = leave_one_out(ev)
    with pytest.raises(UserError, match="unknown"):
        evaluate_baselines(split.train, split.valid, split.test, make_corpus(ev), names=("bm25",))
