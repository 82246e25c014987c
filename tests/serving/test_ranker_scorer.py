"""The served ranker stage and two-tower source (issue 15.3) against the straightforward computation they replace:
RankerScorer.score on hydrated candidates equals, for each candidate, the reference `Ranker.forward` on that one
candidate built by the per-candidate path (candidate isolation included); the shared-column batch equals the
per-candidate batch on odd values; the history attributes and request times equal their plain reading; the two-tower
source fetches what the reference embedding searches."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest
import torch

from models.layers import string_id
from models.ranker.model import Ranker, RankerConfig, RankerOutput
from models.retrieval.index import IndexConfig, build_index
from models.retrieval.model import TwoTower, TwoTowerConfig
from serving.hydrators.post_features import FeatureRow, FeatureTable
from serving.inputs import epoch_ms, user_inputs
from serving.scorers.ranker import RankerScorer, candidate_batch, history_attributes
from serving.sources.two_tower import TwoTowerSource
from serving.types import Candidate, Query

NOW = datetime(2026, 1, 9, 12, tzinfo=UTC)
NOW_MS = int(NOW.timestamp() * 1000)
CFG = RankerConfig.preset("nano", max_history=8)
TOL = dict(rtol=1e-5, atol=2e-6)  # float rounding of the fused serving path (tests/models/test_inference_paths.py)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def trained_looking(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2 and "position_bias" not in name:  # position row 0 stays zero, as training leaves it
                p.normal_(std=0.3)
    return model.eval()


def query(n_history: int = 12, seed: int = 0, **kw: object) -> Query:
    rng = np.random.default_rng(seed)
    posts = [int(p) for p in rng.integers(1, 400, n_history)]
    posts[-1] = posts[0]  # a post engaged twice: its newest row's attributes count
    hist = {
        "hist_post_ids": tuple(posts),
        "hist_author_ids": tuple(int(a) for a in rng.integers(1, 50, n_history)),
        "hist_actions": tuple(int(a) for a in rng.integers(0, 1 << 13, n_history)),
        "hist_surfaces": tuple(int(s) for s in rng.integers(0, 3, n_history)),
        "hist_timestamps": tuple(int(t) for t in np.sort(rng.integers(NOW_MS - 86_400_000, NOW_MS, n_history))),
        "hist_post_topic": tuple([None, *(int(t) for t in rng.integers(0, 9, n_history - 1))]),
        "hist_post_media_type": tuple(["video", "", *(["text", None] * n_history)][:n_history]),
    }
    stats = {f: float(v) for f, v in zip(CFG.candidate_features, rng.random(len(CFG.candidate_features)), strict=True)}
    stats |= {"user_country": "de", "user_language": "de", "user_age_bucket": 2, "user_activity": "high"}
    return Query(user_id=7, now=NOW, user_stats=stats, history=hist, **kw)  # type: ignore[arg-type]


def hydrated(n: int, seed: int = 1) -> tuple[list[Candidate], FeatureTable]:
    """n candidates as PostFeaturesHydrator leaves them: rows of one shared table (two extra rows nobody reads),
    odd values included: posts and authors the store lacks, None / "" / NaN attributes, int32 counts, float32
    rates, int64 counts."""
    rng = np.random.default_rng(seed)
    rows = n + 2
    post = {
        "post_created_at_ms": NOW_MS - rng.integers(0, 3 * 86_400_000, rows),
        "post_topic": rng.integers(0, 12, rows).astype(np.int32),
        "post_media_type": np.array((["text", "video", None, "", "image"] * rows)[:rows], dtype=object),
        "post_impressions": rng.integers(0, 10**6, rows).astype(np.int32),
        "post_click_count": rng.integers(0, 10**4, rows),  # int64
    }
    post |= {f: rng.random(rows).astype(np.float32) for f in CFG.candidate_features if f.endswith("_rate")}
    author = {f: rng.random(rows).astype(np.float32) for f in CFG.candidate_features if f.startswith("author_")}
    author["author_follower_count"] = rng.integers(0, 10**5, rows).astype(np.int32)
    post_missing, author_missing = rng.random(rows) < 0.1, rng.random(rows) < 0.1
    table = FeatureTable(post, author, post_missing, author_missing)
    order = rng.permutation(rows)[:n]  # the filters kept some rows, in another order
    cands = [
        Candidate(int(100 + r), int(10 + r % 7), 0, "test", in_network=bool(r % 3 == 0), features=FeatureRow(table, r))
        for r in order
    ]
    return cands, table


def plain(cands: list[Candidate]) -> list[Candidate]:
    """The same candidates with their features as a plain dict each: the per-candidate path."""
    return [replace(c, features=dict(c.features)) for c in cands]


def test_column_batch_equals_the_per_candidate_batch_on_odd_values() -> None:
    model = Ranker(CFG)
    cands, table = hydrated(40)
    for q in (query(), query(missing_views=frozenset({"user_stats"})), replace(query(), user_stats=None)):
        fast, slow = candidate_batch(model, q, cands), candidate_batch(model, q, plain(cands))
        for name in ("post_ids", "author_ids", "surfaces", "age_ms", "dense", "attributes", "in_network", "positions"):
            got, want = getattr(fast, name), getattr(slow, name)
            assert got.dtype == want.dtype and torch.equal(got, want), name
    attrs = candidate_batch(model, query(), cands).attributes[0]
    assert (attrs[:, 1] == 0).any() and len(set(attrs[:, 0].tolist())) > 3  # None and "" read as 0; topics vary


def test_history_attributes_are_the_newest_rows_attributes() -> None:
    model = Ranker(CFG)
    q = query(n_history=12)
    user = user_inputs(q, model.cfg)
    got = history_attributes(model, q, user)[0]
    hist = q.history or {}
    ids = list(hist["hist_post_ids"])
    for slot, post in enumerate(user.hist_post_ids[0].tolist()):
        if post == 0:
            assert (got[slot] == 0).all()
            continue
        row = max(i for i, p in enumerate(ids) if p == post)
        want = [string_id(hist[f"hist_{a}"][row]) for a in model.cfg.candidate_attributes]
        assert got[slot].tolist() == want


def test_served_predictions_equal_the_reference_forward_per_candidate() -> None:
    """The scorer (shared columns, user encoded once, one chunk for all candidates, the fused inference path)
    against the straightforward computation: each candidate alone, its inputs built from a plain dict, through
    Ranker.forward."""
    model = trained_looking(Ranker(CFG))
    assert isinstance(model, Ranker)
    q = query()
    cands, _ = hydrated(37)
    scored = RankerScorer(model).score(q, cands)
    got = np.array([[c.actions[t.name] for t in model.tasks] for c in scored])
    user = user_inputs(q, model.cfg)
    attrs = history_attributes(model, q, user)
    want = []
    with torch.no_grad():
        for c in plain(cands):
            out = model(user, candidate_batch(model, q, [c]), attrs)
            want.append(model.predictions(RankerOutput(out.logits, None))[0, 0].numpy())
    np.testing.assert_allclose(got, np.array(want), **TOL)
    # candidate isolation: a subset, in another order, scores the same
    subset = [replace(c, actions={}) for c in cands[::-3]]
    again = RankerScorer(model).score(q, subset)
    by_post = {c.post_id: row for c, row in zip(scored, got, strict=True)}
    for c in again:
        np.testing.assert_allclose([c.actions[t.name] for t in model.tasks], by_post[c.post_id], **TOL)


def test_epoch_ms_is_the_floored_pandas_reading() -> None:
    times = [
        NOW,
        NOW.replace(tzinfo=None),
        datetime(2026, 1, 9, 12, 0, 0, 999_999, tzinfo=timezone(timedelta(hours=-5))),
        datetime(1969, 12, 31, 23, 59, 59, 999_500),  # before the epoch: floored, not truncated
        pd.Timestamp("2026-01-09 12:00:00.123456789"),
        pd.Timestamp("2026-01-09 12:00:00.123456789", tz="Asia/Kolkata"),
    ]
    for t in times:
        ts = pd.Timestamp(t)
        ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
        assert epoch_ms(t) == (ts - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(milliseconds=1), t


def test_two_tower_source_fetches_what_the_reference_embedding_searches() -> None:
    cfg = TwoTowerConfig.preset(
        "nano", max_history=8, causal=True, history_attributes=True, history_gaps="predecessor", history_action="click"
    )
    model = trained_looking(TwoTower(cfg))
    assert isinstance(model, TwoTower)
    items = np.random.default_rng(0).standard_normal((2_000, cfg.d_model)).astype(np.float32)
    items /= np.linalg.norm(items, axis=1, keepdims=True)
    index = build_index(np.arange(1, 2_001), items, IndexConfig())
    source = TwoTowerSource(model, index, max_results=300)
    for seed in range(4):
        q = query(n_history=20, seed=seed)
        with torch.no_grad():
            reference = model.user_embedding(user_inputs(q, cfg)).numpy()
        np.testing.assert_allclose(source.embed(q), reference, **TOL)
        ids, _ = index.search(reference, 300)
        got = source.fetch(q)
        assert [c.post_id for c in got] == ids[0].tolist()
        assert all(type(c.post_id) is int and c.source == "TwoTowerSource" for c in got)


def test_learned_blend_multipliers_reach_the_served_score() -> None:
    """A ranker trained with a combination module (learn_blend) is served with the blend it learned: the weighted
    scorer's score is the offset transform of Ranker.blend(predictions, the user's multipliers)."""
    from serving.scorers.weighted import NEGATIVE_SCORES_OFFSET, WeightedScorer

    model = trained_looking(Ranker(replace(CFG, learn_blend=True)))
    assert isinstance(model, Ranker)
    q = query()
    cands, _ = hydrated(29)
    scored = WeightedScorer().score(q, RankerScorer(model).score(q, cands))
    table = scored[0].actions.table  # type: ignore[union-attr]
    assert table.weight_scales is not None and len(set(table.weight_scales.values())) > 1
    probs = torch.tensor(np.array([[c.actions[t.name] for t in model.tasks] for c in scored]))[None]
    scales = torch.tensor([[table.weight_scales[t.name] for t in model.tasks]])
    raw = model.blend(probs, scales)[0].numpy()
    unscaled = model.blend(probs)[0].numpy()
    assert not np.allclose(raw, unscaled)  # the multipliers change the blend
    got = np.array([c.score for c in scored])
    positive = raw >= 0
    np.testing.assert_allclose(got[positive], raw[positive] + NEGATIVE_SCORES_OFFSET, rtol=1e-6)
    assert ((got[~positive] >= 0) & (got[~positive] < NEGATIVE_SCORES_OFFSET)).all()
    assert (np.argsort(-got, kind="stable") == np.argsort(-raw, kind="stable")).all()  # the learned order is served
