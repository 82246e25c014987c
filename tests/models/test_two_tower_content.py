"""Fresh posts are reachable by content: history tokens read their posts' attributes through the candidate tower's
tables, id dropout acts in training only, and sequence training scores targets against point-in-time snapshots."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from models.layers import MultiHashEmbedding, string_ids
from models.retrieval.model import CandidateFeatures, TwoTower, TwoTowerConfig, UserFeatures
from models.retrieval.train import sampled_softmax_loss
from models.retrieval.train_sequences import (
    SequenceTrainConfig,
    post_table,
    sequence_windows,
    snapshot,
    snapshots,
    train_sequences,
)

CFG = TwoTowerConfig.preset("nano", max_history=8, user_attributes=(), history_attributes=True)
TOPICS = 4


def topic_ids(topics: torch.Tensor) -> torch.Tensor:
    """(..., 2) attribute ids (topic, media) the way the data layer hashes strings; media is always "text"."""
    topic = torch.as_tensor(string_ids([f"t{int(t)}" for t in topics.flatten()])).reshape(topics.shape)
    media = torch.full_like(topic, int(string_ids(["text"])[0]))
    return torch.stack([topic, media], -1)


def users_of(topics: torch.Tensor, post_ids: torch.Tensor) -> UserFeatures:
    """One request per row: a full history of the posts `post_ids` (B, S), each of its row's topic."""
    B, S = post_ids.shape
    zeros = torch.zeros(B, S, dtype=torch.long)
    return UserFeatures(
        user_ids=torch.zeros(B, dtype=torch.long),
        attribute_ids=torch.zeros(B, 0, dtype=torch.long),
        hist_post_ids=post_ids,
        hist_author_ids=zeros,
        hist_actions=zeros,
        hist_surfaces=zeros,
        hist_gap_ms=zeros - 1,
        hist_attributes=topic_ids(topics[:, None].expand(B, S)),
    )


def posts_of(topics: torch.Tensor, post_ids: torch.Tensor) -> CandidateFeatures:
    n = len(post_ids)
    return CandidateFeatures(
        post_ids=post_ids,
        author_ids=torch.zeros(n, dtype=torch.long),
        dense=torch.zeros(n, len(CFG.post_features)),
        age_ms=torch.full((n,), -1, dtype=torch.long),
        attributes=topic_ids(topics),
    )


def topic_accuracy(cfg: TwoTowerConfig, steps: int = 150) -> float:
    """Trains on users who click posts of one topic (post ids from a pool of 400), then asks users whose history
    is all NEVER-SEEN posts of topic T to rank a never-seen post of T against one of another topic: the share of
    pairs ranked right."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    model = TwoTower(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        topics = torch.randint(TOPICS, (64,), generator=g)
        hist = 1 + TOPICS * torch.randint(100, (64, cfg.max_history), generator=g) + topics[:, None]  # id % 4 = topic
        target = 1 + TOPICS * torch.randint(100, (64,), generator=g) + topics
        u, c = model(users_of(topics, hist), posts_of(topics, target))
        loss = sampled_softmax_loss(u, c, target, model.temperature)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    fresh = 10**6 + torch.arange(200 * cfg.max_history).reshape(200, cfg.max_history)  # never trained on
    topics = torch.arange(200) % TOPICS
    with torch.no_grad():
        u = model.user_embedding(users_of(topics, fresh))
        same = model.candidate_embedding(posts_of(topics, 2 * 10**6 + torch.arange(200)))
        other = model.candidate_embedding(posts_of((topics + 1) % TOPICS, 3 * 10**6 + torch.arange(200)))
    return float(((u * same).sum(-1) > (u * other).sum(-1)).float().mean())


def test_a_taste_for_a_topic_reaches_never_seen_posts_of_that_topic() -> None:
    with_attributes = topic_accuracy(CFG)
    without = topic_accuracy(replace(CFG, history_attributes=False))
    assert with_attributes > 0.95
    assert without < with_attributes - 0.2  # post ids alone say nothing of a never-seen history's topic


def test_history_attributes_reach_the_user_tower_through_the_candidate_tables() -> None:
    torch.manual_seed(0)
    model = TwoTower(CFG).eval()
    hist = torch.arange(1, 9)[None, :]
    x = users_of(torch.tensor([1]), hist)
    with torch.no_grad():
        base = model.user_embedding(x)
        assert not torch.allclose(model.user_embedding(users_of(torch.tensor([2]), hist)), base)
        unknown = model.user_embedding(replace(x, hist_attributes=None))
        zeros = model.user_embedding(replace(x, hist_attributes=torch.zeros(1, 8, 2, dtype=torch.long)))
        torch.testing.assert_close(unknown, zeros)  # None reads as all unknown
        # The same tables: changing the candidate tower's topic table moves the user embedding.
        topic_table = model.candidate_tower.attribute_emb[0]
        assert isinstance(topic_table, MultiHashEmbedding)
        topic_table.table.weight.add_(1.0)
        assert not torch.allclose(model.user_embedding(x), base)
    off = TwoTower(replace(CFG, history_attributes=False)).eval()
    assert off.user_tower.history_attribute_proj is None
    with torch.no_grad():
        torch.testing.assert_close(off.user_embedding(x), off.user_embedding(replace(x, hist_attributes=None)))


def test_id_dropout_acts_in_training_only() -> None:
    torch.manual_seed(0)
    model = TwoTower(replace(CFG, id_dropout=0.5))
    posts = posts_of(torch.arange(64) % TOPICS, torch.arange(1, 65))
    with torch.no_grad():
        model.eval()
        torch.testing.assert_close(model.candidate_embedding(posts), model.candidate_embedding(posts))
        model.train()
        a, b = model.candidate_embedding(posts), model.candidate_embedding(posts)
        assert not torch.allclose(a, b)  # a different half of the ids is dropped each call
        model.eval()
        plain = TwoTower(replace(CFG, id_dropout=0.0)).eval()
        plain.load_state_dict(model.state_dict())
        torch.testing.assert_close(model.candidate_embedding(posts), plain.candidate_embedding(posts))
    with pytest.raises(ValueError, match="id_dropout"):
        replace(CFG, id_dropout=1.0)


def test_a_config_saved_before_these_fields_still_loads() -> None:
    body = json.loads(TwoTowerConfig.preset("nano").to_json())
    for key in ("history_attributes", "id_dropout"):
        del body[key]
    old = TwoTowerConfig.from_json(json.dumps(body))
    assert not old.history_attributes and old.id_dropout == 0.0
    assert TwoTower(old).user_tower.history_attribute_proj is None  # the old weights fit: no new parameters


def events() -> pd.DataFrame:
    """Two users, posts 1..4: user 1 engages with 1, 2, 3 at hours 1, 30, 50; user 2 with 2 at hour 26 and 4 at 52."""
    h = 3_600_000
    rows = [(1, 1, h), (1, 2, 30 * h), (1, 3, 50 * h), (2, 2, 26 * h), (2, 4, 52 * h)]
    return pd.DataFrame(
        {
            "user_id": [r[0] for r in rows],
            "post_id": [r[1] for r in rows],
            "author_id": [10 + r[1] for r in rows],
            "actions": [1] * len(rows),
            "surface": [0] * len(rows),
            "ts_ms": [r[2] for r in rows],
            "impression_id": list(range(1, len(rows) + 1)),
        }
    )


def test_snapshots_count_only_earlier_events_and_leave_out_unborn_posts() -> None:
    h = 3_600_000
    cfg = replace(CFG, causal=True, history_attributes=False)
    ev = events()
    table = post_table(cfg, np.arange(1, 5), ev)
    impressions = cfg.post_features.index("post_impressions")
    assert table.features.dense[:, impressions].tolist() == [1, 2, 1, 1]  # the end table counts every event
    table = replace(table, created_ms=np.array([0.0, 20 * h, 45 * h, 51 * h]))
    snaps = snapshots(cfg, table, hours=24)
    assert snaps.times_ms.tolist() == [h, 25 * h, 49 * h]
    # As of hour 25 only the hour-1 event has happened; post 4 (created at hour 51) is not yet born.
    assert snaps.features[1].dense[:, impressions].tolist() == [1, 0, 0, 0]
    assert snaps.features[1].age_ms.tolist() == [25 * h, 5 * h, 0, 0]
    assert snapshot(cfg, table, 49 * h).dense[:, impressions].tolist() == [1, 2, 0, 0]
    assert snaps.index(torch.tensor([h, 30 * h, 52 * h, 0])).tolist() == [0, 1, 2, 0]
    windows = sequence_windows(cfg, ev, table)
    assert sorted(windows.target_ms[windows.target_cols >= 0].tolist()) == [30 * h, 50 * h, 52 * h]


@pytest.mark.parametrize("full_softmax_max_items", [100, 2])
def test_sequence_training_with_snapshots_runs_and_is_seeded(full_softmax_max_items: int) -> None:
    cfg = replace(CFG, causal=True)
    ev = events()
    tc = SequenceTrainConfig(
        epochs=3, batch_size=2, snapshot_hours=24, full_softmax_max_items=full_softmax_max_items, n_negatives=2
    )
    a = train_sequences(cfg, ev, None, None, np.arange(1, 5), tc)
    b = train_sequences(cfg, ev, None, None, np.arange(1, 5), tc)
    losses = [h["train_loss"] for h in a.history]
    assert np.isfinite(losses).all() and losses == [h["train_loss"] for h in b.history]


def test_embeddings_at_several_times_equal_one_table_per_time() -> None:
    torch.manual_seed(0)
    model = TwoTower(CFG).eval()
    posts = posts_of(torch.arange(3), torch.tensor([3, 9, 14]))
    dense = torch.tensor([[[0.0, 0, 0], [1, 1, 0], [2, 1, 1]], [[5.0, 3, 1], [0, 0, 0], [7, 2, 0]]])  # (K=2, N, F)
    age = torch.tensor([[-1, 60_000, 3_600_000], [0, 86_400_000, 10]])  # (K, N)
    together = model.candidate_embeddings_at(posts, dense, age)  # (2, 3, D)
    for k in range(2):
        alone = model.candidate_embedding(replace(posts, dense=dense[k], age_ms=age[k]))
        torch.testing.assert_close(together[k], alone)
    assert not torch.allclose(together[0], together[1])  # counts and ages move the embedding


def test_unborn_posts_are_masked_and_the_metric_early_stopping_keeps_is_checked() -> None:
    from core.errors import UserError
    from models.retrieval.train_sequences import SequenceRetriever

    cfg = replace(CFG, causal=True, history_attributes=False)
    ev = events()
    table = replace(post_table(cfg, np.arange(1, 5), ev), created_ms=np.array([0.0, np.nan, 1e18, 0.0]))
    retriever = SequenceRetriever(TwoTower(cfg), table, "full", None, mask_unborn=True)
    targets = ev.iloc[[-1]]
    scores, _ = retriever.score_events(ev.iloc[:0], targets)
    # Post 3 is created after the request: no index could hold it. Unknown creation (NaN) stays rankable.
    assert torch.isinf(scores[0, 2]) and torch.isfinite(scores[0, [0, 1, 3]]).all()
    assert SequenceTrainConfig(select_metric="recall@200").select_metric == "recall@200"
    with pytest.raises(UserError, match="select_metric"):
        SequenceTrainConfig(select_metric="auc")


def test_training_threads_are_set_for_training_and_restored() -> None:
    from core.errors import UserError

    cfg = replace(CFG, causal=True, history_attributes=False)
    before = torch.get_num_threads()
    seen: list[int] = []
    tc = SequenceTrainConfig(epochs=1, batch_size=2, threads=1)
    train_sequences(cfg, events(), None, None, np.arange(1, 5), tc, log=lambda _: seen.append(torch.get_num_threads()))
    assert seen == [1] and torch.get_num_threads() == before
    with pytest.raises(UserError, match="threads"):
        SequenceTrainConfig(threads=-1)
