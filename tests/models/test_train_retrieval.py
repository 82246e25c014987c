"""Retrieval training: the data path (padding, null history, split), the loss (logQ by hand, masking), learning,
evaluation by hand, early stopping and exact resume."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from models.retrieval.data import RetrievalDataset, candidate_features, corpus_from_rows, temporal_split, user_features
from models.retrieval.model import CandidateFeatures, TwoTower, TwoTowerConfig, UserFeatures, load_two_tower
from models.retrieval.train import (
    TrainConfig,
    TwoTowerTrainTask,
    evaluate,
    item_log_q,
    sampled_softmax_loss,
    train,
)

CFG = TwoTowerConfig.preset("nano", max_history=8)
T0 = pd.Timestamp("2026-01-01", tz="UTC")
N_TOPICS = 4


def rows(n_users: int = 40, n_posts: int = 80, clicks: int = 12, seed: int = 0) -> pd.DataFrame:
    """A learnable retrieval training set: user u clicks only posts of topic u % 4 (post p has topic p % 4, author
    1000 + p % 8); each row's history is the user's earlier clicks. The first row of a user has a null history."""
    rng = np.random.default_rng(seed)
    out = []
    for u in range(1, n_users + 1):
        topic_posts = np.arange(1, n_posts + 1)[np.arange(1, n_posts + 1) % N_TOPICS == u % N_TOPICS]
        posts = rng.choice(topic_posts, clicks)
        times = [T0 + pd.Timedelta(hours=k, minutes=u) for k in range(clicks)]
        for k, (p, t) in enumerate(zip(posts, times, strict=True)):
            ms = [int(x.value // 1_000_000) for x in times[:k]]
            hist = k > 0
            out.append(
                {
                    "user_id": u,
                    "post_id": int(p),
                    "author_id": 1000 + int(p) % 8,
                    "event_timestamp": t,
                    "user_country": ["FR", "IN", "US"][u % 3],
                    "user_language": "en",
                    "user_age_bucket": None if u % 5 == 0 else "25-34",
                    "user_activity": "high",
                    "hist_post_ids": np.array(posts[:k]) if hist else None,
                    "hist_author_ids": np.array([1000 + int(x) % 8 for x in posts[:k]]) if hist else None,
                    "hist_actions": np.ones(k, dtype=np.int64) if hist else None,
                    "hist_surfaces": np.zeros(k, dtype=np.int64) if hist else None,
                    "hist_timestamps": np.array(ms) if hist else None,
                    "hist_length": k if hist else np.nan,
                    "post_created_at_ms": int(T0.value // 1_000_000) - 3_600_000 * int(p % 3),
                    "post_impressions": int(rng.integers(0, 50)),
                    "post_click_count": int(rng.integers(0, 10)),
                    "post_like_count": np.nan if p % 7 == 0 else 1.0,  # a post with no stats row yet
                }
            )
    return pd.DataFrame(out)


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return rows()


# Data


def test_history_is_the_newest_events_right_padded_with_gaps_to_the_request(frame: pd.DataFrame) -> None:
    cfg = replace(CFG, max_history=4)
    user = frame[frame.user_id == 3].reset_index(drop=True)
    x = user_features(user, cfg)
    assert (x.hist_post_ids[0] == 0).all()  # null history: all padding
    assert x.hist_post_ids[2].tolist() == [*user.hist_post_ids[2], 0, 0]  # 2 events, oldest first, then padding
    assert x.hist_post_ids[9].tolist() == list(user.hist_post_ids[9][-4:])  # 9 events: the newest 4
    assert x.hist_gap_ms[9].tolist() == [4 * 3_600_000, 3 * 3_600_000, 2 * 3_600_000, 3_600_000]
    assert (x.attribute_ids != 0).all()
    assert (user_features(frame[frame.user_id == 5], cfg).attribute_ids[:, 2] == 0).all()  # age_bucket None: padding


def test_candidate_features_age_and_missing_counts(frame: pd.DataFrame) -> None:
    c = candidate_features(frame.head(3), CFG)
    created = frame.post_created_at_ms.head(3).to_numpy()
    request = frame.event_timestamp.head(3).astype("int64").to_numpy() // 1_000_000
    assert c.age_ms.tolist() == (request - created).tolist()
    assert not torch.isnan(candidate_features(frame, CFG).dense).any()
    corpus = candidate_features(corpus_from_rows(frame), CFG, now_ms=int(created.max()) + 60_000)
    assert len(corpus) == frame.post_id.nunique() and (corpus.age_ms >= 60_000).all()


def test_temporal_split_puts_only_the_past_in_train(frame: pd.DataFrame) -> None:
    tr, va = temporal_split(frame, 0.25)
    assert tr.event_timestamp.max() < va.event_timestamp.min()
    assert len(tr) + len(va) == len(frame) and 0.2 < len(va) / len(frame) < 0.3


def test_dataset_batches_through_a_dataloader(frame: pd.DataFrame) -> None:
    ds = RetrievalDataset(frame, CFG, item_log_q(frame.post_id.to_numpy()))
    batches = list(ds.loader(100, shuffle=True, generator=torch.Generator().manual_seed(0)))
    assert [len(b) for b in batches] == [100, 100, 100, 100, 80]
    seen = torch.cat([b.user.user_ids for b in batches])
    assert sorted(seen.tolist()) == sorted(frame.user_id.tolist())
    assert len(ds[5]) == 1


# Loss


def test_logq_correction_on_a_hand_example() -> None:
    # Two rows whose scores are all equal; item 0 fills 90% of the sampled batches, item 1 10%.
    user = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    cand = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    ids = torch.tensor([10, 11])
    log_q = torch.log(torch.tensor([0.9, 0.1]))
    plain = sampled_softmax_loss(user, cand, ids, 0.05)
    assert math.isclose(plain.item(), math.log(2), rel_tol=1e-6)
    # Corrected logits are -log(2 q_j): row 0's softmax is [0.1, 0.9], row 1's is [0.1, 0.9] too. The popular item
    # is no longer rewarded for merely being frequent: its row now carries the large loss -log 0.1.
    corrected = sampled_softmax_loss(user, cand, ids, 0.05, log_q=log_q)
    assert math.isclose(corrected.item(), (-math.log(0.1) - math.log(0.9)) / 2, rel_tol=1e-6)


def test_duplicate_positives_and_accidental_hits_are_not_negatives() -> None:
    torch.manual_seed(0)
    user, cand = nn.functional.normalize(torch.randn(3, 4), dim=-1), nn.functional.normalize(torch.randn(3, 4), dim=-1)
    ids = torch.tensor([7, 7, 8])
    logits = user @ cand.T / 0.1
    logits[0, 1] = logits[1, 0] = float("-inf")  # rows 0 and 1 share item 7
    want = nn.functional.cross_entropy(logits, torch.arange(3))
    assert torch.allclose(sampled_softmax_loss(user, cand, ids, 0.1), want)
    # A uniform negative equal to a row's positive is masked for that row only; its logQ is log(M / corpus size).
    neg = nn.functional.normalize(torch.randn(2, 4), dim=-1)
    got = sampled_softmax_loss(
        user, cand, ids, 0.1, torch.zeros(3), neg_emb=neg, neg_ids=torch.tensor([8, 9]), neg_log_q=-math.log(100)
    )
    full = torch.cat([logits - math.log(3), user @ neg.T / 0.1 - math.log(2 / 100)], 1)
    full[2, 3] = float("-inf")
    assert torch.allclose(got, nn.functional.cross_entropy(full, torch.arange(3)))


def test_item_log_q_is_the_log_frequency_of_each_rows_item() -> None:
    got = item_log_q(np.array([5, 5, 5, 9]))
    assert np.allclose(got, np.log([0.75, 0.75, 0.75, 0.25]))


def test_loss_decreases_over_a_few_steps_on_learnable_items(frame: pd.DataFrame) -> None:
    torch.manual_seed(0)
    ds = RetrievalDataset(frame, CFG, item_log_q(frame.post_id.to_numpy()))
    corpus = candidate_features(corpus_from_rows(frame), CFG, now_ms=0)
    task = TwoTowerTrainTask(TwoTower(CFG), corpus, n_negatives=16)
    opt = torch.optim.AdamW(task.parameters(), lr=3e-3)
    batch, g = ds[list(range(0, len(frame), 4))], torch.Generator().manual_seed(0)  # 120 rows
    losses = []
    for _ in range(15):
        loss = task(batch, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


# Evaluation


class FixedModel(nn.Module):
    """Scores from fixed 1-d embeddings: user embedding 1, candidate embedding = its score."""

    def __init__(self, scores: dict[int, float]) -> None:
        super().__init__()
        self.scores = scores
        self.dummy = nn.Parameter(torch.zeros(1))

    def user_embedding(self, x: UserFeatures) -> torch.Tensor:
        return torch.ones(len(x.user_ids), 1)

    def candidate_embedding(self, x: CandidateFeatures) -> torch.Tensor:
        return torch.tensor([[self.scores[int(p)]] for p in x.post_ids])


def test_evaluate_ranks_the_target_over_the_corpus_without_seen_items(frame: pd.DataFrame) -> None:
    scores = {int(p): float(-p) for p in frame.post_id.unique()}  # post 1 ranks first, then 2, ...
    corpus = candidate_features(corpus_from_rows(frame), CFG, now_ms=0)
    q = frame[(frame.user_id == 3)].reset_index(drop=True)
    q = q.assign(post_id=[4 * k + 3 for k in range(len(q))])  # query k's target ranks 4k+2 before filtering
    ds = RetrievalDataset(q, CFG)
    got = evaluate(FixedModel(scores), ds, corpus)  # type: ignore[arg-type]
    seen = [set(h) if h is not None else set() for h in q.hist_post_ids]
    ranks = [
        sum(1 for p in scores if scores[p] > scores[t] and p not in s - {t})
        for t, s in zip(q.post_id, seen, strict=True)
    ]
    assert got["recall@10"] == pytest.approx(np.mean([r < 10 for r in ranks]))
    assert got["ndcg@10"] == pytest.approx(np.mean([1 / np.log2(r + 2) if r < 10 else 0 for r in ranks]))
    assert got["recall@1000"] == 1.0


def test_evaluate_counts_ties_against_the_target(frame: pd.DataFrame) -> None:
    scores = dict.fromkeys((int(p) for p in frame.post_id.unique()), 0.0)  # a collapsed model
    corpus = candidate_features(corpus_from_rows(frame), CFG, now_ms=0)
    got = evaluate(FixedModel(scores), RetrievalDataset(frame.head(5), CFG), corpus)  # type: ignore[arg-type]
    assert got["recall@10"] == 0.0


# Training loop


def _split(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    tr, va = temporal_split(frame, 0.25)
    return tr, va, corpus_from_rows(tr, va)


FAST = TrainConfig(epochs=2, batch_size=64, lr=3e-3, n_negatives=16, patience=2, seed=0)


def test_training_learns_the_topics(frame: pd.DataFrame) -> None:
    tr, va, corpus = _split(frame)
    result = train(CFG, tr, va, corpus, replace(FAST, epochs=6, patience=6))
    # 20 posts per topic of 80: knowing the topic alone gives Recall@10 ~ 0.5, a random model 0.125.
    assert result.best_metrics["recall@10"] > 0.3, result.history
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]


def test_early_stopping_stops_after_patience_and_keeps_the_best_epoch(frame: pd.DataFrame, tmp_path: Path) -> None:
    tr, va, corpus = _split(frame)
    recall = iter([0.1, 0.3, 0.2, 0.25, 0.9])
    states: list[dict[str, torch.Tensor]] = []

    def scripted(model: TwoTower, queries: RetrievalDataset, corpus: CandidateFeatures) -> dict[str, float]:
        states.append({k: v.clone() for k, v in model.state_dict().items()})
        return {"recall@50": next(recall)}

    result = train(CFG, tr, va, corpus, replace(FAST, epochs=5), out=tmp_path, evaluate_fn=scripted)
    assert [h["epoch"] for h in result.history] == [1, 2, 3, 4]  # 3 and 4 did not beat 2: stop before 5
    assert result.best_epoch == 2 and result.best_metrics == {"recall@50": 0.3}
    for name, value in result.model.state_dict().items():
        assert torch.equal(value, states[1][name]), name
    best = load_two_tower(tmp_path / "best").state_dict()
    assert all(torch.equal(best[k], states[1][k]) for k in best)


def test_resume_replays_the_next_steps_of_an_uninterrupted_run(frame: pd.DataFrame, tmp_path: Path) -> None:
    tr, va, corpus = _split(frame)
    whole = train(CFG, tr, va, corpus, FAST)
    first = train(CFG, tr, va, corpus, replace(FAST, epochs=1), out=tmp_path)
    resumed = train(CFG, tr, va, corpus, FAST, out=tmp_path, resume=True)
    steps = len(first.step_losses)
    assert first.step_losses == whole.step_losses[:steps]
    assert resumed.step_losses == whole.step_losses[steps:]  # bit for bit: optimizer state and data order restored
    assert [h["epoch"] for h in resumed.history] == [1, 2]
    with pytest.raises(Exception, match="differs"):
        train(replace(CFG, d_model=64), tr, va, corpus, FAST, out=tmp_path, resume=True)
