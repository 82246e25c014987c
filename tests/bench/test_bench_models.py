"""bench.models on tiny sizes: every measuring function runs and returns sane rows (no timing is asserted)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from bench import models as bm
from bench.verdicts import check
from models.train_retrieval import TrainConfig
from models.two_tower import TwoTowerConfig

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
    for kind in ("HNSW (models.index, option)", "IVF-Flat (models.index, shipped)"):
        assert sum(r.extra["operating_point"] for r in approx if r.extra["index"] == kind) == 1
    assert all(r.extra["build_s"] > 0 for r in approx)
    assert max(r.extra["recall"] for r in approx if r.extra["knob"] == "nprobe 8") == 1.0  # every list probed
    # The shipped search setting is the one marked: the IVF rows are models.index's own index, not a bench copy.
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
