"""bench.models on tiny sizes: every measuring function runs and returns sane rows (no timing is asserted)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np
import pytest
import torch

from bench import models as bm
from bench.verdicts import check
from models.retrieval.model import TwoTowerConfig
from models.retrieval.train import TrainConfig

TINY = dict(user_rows=512, post_rows=512, author_rows=512, attribute_rows=16)


def test_encode_latency_of_one_user_returns_one_time_per_repeat() -> None:
    cfg = TwoTowerConfig.preset("nano", max_history=128, **TINY)
    seconds = bm.encode_latency(cfg, history=128, reps=5, warmup=1)
    assert len(seconds) == 5 and all(s > 0 for s in seconds)
    x = bm.one_user(cfg, 128)
    assert x.hist_post_ids.shape == (1, 128) and bool((x.hist_post_ids != 0).all())


def test_quick_encode_rows_have_p99_at_least_median_and_a_verdict() -> None:
    rows = bm.bench_encode(quick=True, threads=1)
    assert [r.extra["section"] for r in rows] == ["encode", "encode"]
    for r in rows:
        assert r.repeats >= 10 and 0 < r.wall_s_median <= r.wall_s_p99
        assert check(r.target, r.verdict) == (True, "")
        assert "Phoenix" not in r.target + r.verdict  # no Phoenix figure that was not measured beside it
        assert r.command.startswith("python -m bench.models")


def test_gaussian_mixture_is_unit_norm_and_seeded() -> None:
    a = bm.gaussian_mixture(1000, 16, centres=10, spread=1.0, seed=3)
    assert a.dtype == np.float32 and a.shape == (1000, 16)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(a, bm.gaussian_mixture(1000, 16, centres=10, spread=1.0, seed=3))
    assert not np.array_equal(a[:10], bm.gaussian_mixture(10, 16, centres=10, spread=1.0, seed=3, draw=1))


def test_ann_quick_exact_recall_is_one_and_approximate_recall_is_a_fraction() -> None:
    s = bm.AnnSettings(n_items=3000, dim=16, centres=10, n_queries=12, k=50, recall_k=10, ef_search=(50,),
                       ivf_lists=8, ivf_train=3000, nprobe=(2, 8, 32))  # fmt: skip
    rows = bm.bench_ann(s, build_threads=1)
    exact = [r for r in rows if r.extra["index"] == "flat"]
    assert len(exact) == 1 and exact[0].extra["recall"] == 1.0
    approx = [r for r in rows if r.extra["index"] != "flat"]
    assert len(approx) == 4  # one efSearch, three nprobe
    for r in rows:
        assert 0.0 <= r.extra["recall"] <= 1.0
        assert 0 < r.wall_s_median <= r.wall_s_p99 and r.repeats == 12
    for kind in ("HNSW (models.retrieval.index, option)", "IVF-Flat (models.retrieval.index, shipped)"):
        assert sum(r.extra["operating_point"] for r in approx if r.extra["index"] == kind) == 1
    assert all(r.extra["build_s"] > 0 for r in approx)
    assert max(r.extra["recall"] for r in approx if r.extra["knob"] == "nprobe 8") == 1.0  # every list probed
    # The shipped search setting is the one marked: the IVF rows are models.retrieval.index's own index, not a bench
    # copy.
    assert [r.extra["knob"] for r in approx if "(shipped)" in r.extra["knob"]] == ["nprobe 32 (shipped)"]


def test_recall_at_counts_the_overlap_of_the_top_k() -> None:
    truth = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    got = np.array([[2, 1, 9, 9], [9, 9, 9, 9]])
    assert bm.recall_at(truth, got, 2) == 0.5
    assert bm.recall_at(truth, truth, 4) == 1.0


def test_flops_per_step_grow_with_the_model_and_match_the_formula_by_hand() -> None:
    nano = TwoTowerConfig.preset("nano")
    small = TwoTowerConfig.preset("small")
    assert 0 < bm.train_step_flops(nano, 256, 128) < bm.train_step_flops(small, 256, 128)
    # By hand for a 1-layer, D=8 model, no post age: only the terms of the docstring.
    cfg = replace(nano, d_model=8, emb_dim=4, n_layers=1, n_heads=2, n_kv_heads=1, max_history=3, ffn_mult=1.0,
                  use_post_age=False, n_hashes=1)  # fmt: skip
    D, E, A, S, T, hd, F = 8, 4, cfg.n_actions, 3, 4, 4, 8  # ffn_hidden(8, 1.0) = 8
    user = 2 * E * D + S * (2 * A * E + 2 * (2 * E + 2 * E) * D)
    user += T * (2 * D * D + 2 * D * 2 * hd + 2 * D * D + 4 * T * D + 6 * D * F)
    cand = 2 * (2 * E + 3) * 2 * D + 4 * D * D
    fwd = user + (1 + 4 / 2) * cand + 2 * (2 + 4) * D
    assert bm.train_step_flops(cfg, batch_size=2, n_negatives=4) == pytest.approx(3 * fwd)


def test_train_throughput_runs_real_steps_and_reports_a_share_of_peak() -> None:
    df = bm.train_frame(n_users=8, clicks=6, n_posts=32)
    assert len(df) == 48 and df["hist_post_ids"].isna().sum() == 8
    cfg = TwoTowerConfig.preset("nano", **TINY)
    seconds, losses = bm.train_throughput(cfg, df, steps=3, warmup=1, tc=TrainConfig(batch_size=16, n_negatives=8))
    assert len(seconds) == 3 and len(losses) == 4 and all(np.isfinite(losses))
    peak = bm.peak_flops(threads=torch.get_num_threads(), n=128, repeats=2)
    assert peak > 0


def test_quick_train_rows() -> None:
    rows = bm.bench_train(quick=True, threads=torch.get_num_threads())
    peak, train = rows[0], rows[1:]
    assert peak.extra["peak_flops"] > 0 and len(train) == 1
    for r in train:
        assert r.extra["flops_per_example"] > 0 and r.extra["share_of_peak"] > 0
        assert r.wall_s_median <= r.wall_s_p99


# ann-served: the served index against exact search on real request vectors (the measuring functions on tiny data)


def test_newest_day_users_are_those_with_an_impression_on_the_last_utc_day() -> None:
    day = 86_400_000
    users = np.array([1, 2, 3, 4, 5, 3, 6])
    ts = np.array([0, day + 5, 2 * day, 2 * day + 10, day - 1, 2 * day + day - 1, 10])
    np.testing.assert_array_equal(bm.newest_day_users(users, ts, n=10), [3, 4])
    many = np.arange(1, 101)
    drawn = bm.newest_day_users(many, np.full(100, 5 * day), n=10, seed=1)
    assert len(drawn) == 10 and len(set(drawn)) == 10 and list(drawn) == sorted(drawn)
    np.testing.assert_array_equal(drawn, bm.newest_day_users(many, np.full(100, 5 * day), n=10, seed=1))


@pytest.mark.parametrize("kind", ["exact", "ivf", "hnsw"])
def test_index_vectors_are_the_stored_vectors_by_row_and_leave_the_index_alone(kind: str) -> None:
    import faiss

    items = bm.gaussian_mixture(2000, 8, centres=5, spread=1.0, seed=0)
    cfg = bm.IndexConfig(exact_below=0 if kind != "exact" else 10**6, approximate="hnsw" if kind == "hnsw" else "ivf",
                         ivf_lists=8, hnsw_m=8, ef_construction=20)  # fmt: skip
    ann = bm.build_index(np.arange(2000) + 7, items, cfg)
    assert ann.kind == kind
    np.testing.assert_array_equal(bm.index_vectors(ann), items)
    if kind == "ivf":  # no direct map added to the index that is timed
        assert faiss.extract_index_ivf(ann.index).direct_map.type == faiss.DirectMap.NoMap  # type: ignore[attr-defined]


def test_served_ann_rows_score_an_exact_index_at_one_and_a_starved_ivf_below_with_agreeing_verdicts() -> None:
    items = bm.gaussian_mixture(3000, 16, centres=10, spread=1.0, seed=0)
    queries = bm.gaussian_mixture(15, 16, centres=10, spread=1.0, seed=0, draw=1)
    ids = np.arange(3000, dtype=np.int64) + 100
    exact = bm.build_index(ids, items, bm.IndexConfig())  # below exact_below: a flat index
    ivf = bm.build_index(ids, items, bm.IndexConfig(exact_below=0, ivf_lists=64, nprobe=1))
    extra = {"section": "ann-served"}
    for ann, perfect in ((exact, True), (ivf, False)):
        anchor, row = bm.served_ann_rows("t", "cmd", "data", ids, items, ann, queries, 50, 10, extra, passes=2)
        assert anchor.extra["index"] == "flat" and row.extra["index"] == ann.kind
        assert anchor.repeats == row.repeats == 30  # 15 queries x 2 passes
        assert 0 < row.extra["p99_best_ms"] <= row.extra["p99_ms"]
        r10, r50 = row.extra["recall_at_10"], row.extra["recall_at_50"]
        assert (r10 == 1.0 and r50 == 1.0) if perfect else (r10 < 1.0 and r50 < 1.0)
        assert check(row.target, row.verdict) == (True, "")
        assert "Recall@10 " in row.verdict and "Recall@50 " in row.verdict


def test_side_by_side_alternates_and_keeps_the_first_pass_ids() -> None:
    calls: list[str] = []

    def search(name: str, offset: int) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
        def run(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            calls.append(name)
            return np.array([[int(q[0, 0]) + offset]]), np.zeros((1, 1))

        return run

    queries = np.arange(4, dtype=np.float32)[:, None]
    es, truth, an, got = bm.side_by_side(search("e", 0), search("a", 1), queries, warmup=1, passes=3)
    assert es.shape == an.shape == (3, 4)
    assert calls == ["e", "a"] * (1 + 3 * 4)
    np.testing.assert_array_equal(truth[:, 0], [0, 1, 2, 3])
    np.testing.assert_array_equal(got[:, 0], [1, 2, 3, 4])


def test_tiled_corpus_repeats_every_feature_under_fresh_post_ids() -> None:
    from models.retrieval.data import CandidateFeatures

    base = CandidateFeatures(post_ids=torch.tensor([1, 5, 9]), author_ids=torch.tensor([2, 2, 3]),
                             dense=torch.arange(6.0).reshape(3, 2), age_ms=torch.tensor([0, 10, -1]),
                             attributes=torch.tensor([[1, 2], [3, 4], [5, 6]]))  # fmt: skip
    big = bm.tiled_corpus(base, 3)
    assert len(big.post_ids.unique()) == 9 and big.post_ids[:3].tolist() == [1, 5, 9]
    assert big.post_ids[3:6].tolist() == [11, 15, 19]
    assert big.author_ids.tolist() == [2, 2, 3] * 3 and big.age_ms.tolist() == [0, 10, -1] * 3
    torch.testing.assert_close(big.dense, base.dense.repeat(3, 1))
    torch.testing.assert_close(big.attributes, base.attributes.repeat(3, 1))


def test_served_user_embeddings_use_the_two_tower_source_and_skip_cold_starts() -> None:
    from dataclasses import replace as dc_replace
    from datetime import UTC, datetime
    from types import SimpleNamespace

    from serving.sources.two_tower import TwoTowerSource
    from serving.types import Query

    cfg = TwoTowerConfig.preset("nano", **TINY)
    model = bm.TwoTower(cfg).eval()
    items = bm.gaussian_mixture(100, cfg.d_model, centres=4, spread=1.0, seed=0)
    source = TwoTowerSource(model, bm.build_index(np.arange(1, 101), items, bm.IndexConfig()), max_results=10)

    class Hydrator:
        def hydrate(self, q: Query) -> Query:
            cold = frozenset({"user_stats", "user_history"}) if q.user_id == 2 else frozenset()
            return dc_replace(q, user_stats={"country": "US"}, missing_views=cold)

    now = datetime(2026, 1, 9, tzinfo=UTC)
    rec = SimpleNamespace(pipeline=SimpleNamespace(sources=[source]), query_hydrators=[Hydrator()], clock=lambda: now)
    emb, seconds, skipped = bm.served_user_embeddings(rec, np.array([1, 2, 3]))
    assert emb.shape == (2, cfg.d_model) and len(seconds) == 2 and skipped == 1
    expected = source.embed(Hydrator().hydrate(Query(user_id=3, now=now)))
    np.testing.assert_allclose(emb[1], expected[0], atol=1e-6)


def test_rows_kept_from_an_earlier_run_render_with_their_own_time_commit_and_cpu() -> None:
    from bench.run import measured

    body = {"measured_at": "2026-12-06 06:36 UTC", "machine": {"cpu": "AMD EPYC", "cpu_flags": "avx2", "commit": "b"}}
    fresh = {"extra": {"section": "ann-served"}}
    kept = {"extra": {"measured_at": "2026-11-23 03:09 UTC", "commit": "a", "cpu": "Intel Xeon (avx512f)"}}
    assert measured(body, fresh) == ("2026-12-06 06:36 UTC", "b", "AMD EPYC (avx2)")
    assert measured(body, kept) == ("2026-11-23 03:09 UTC", "a", "Intel Xeon (avx512f)")
