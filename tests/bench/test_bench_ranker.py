"""The ranker latency benchmark at tiny sizes: both scoring paths agree, and every row carries its FLOPs."""

from __future__ import annotations

from bench.ranker import bench_ranker


def test_ranker_bench_rows_cover_both_paths_sizes_and_threads() -> None:
    rows = bench_ranker(quick=True, thread_counts=(1,))
    keys = {(r.extra["path"], r.extra["candidates"]) for r in rows}
    assert keys == {("forward", 64), ("cached", 64), ("forward", 512), ("cached", 512)}
    for r in rows:
        assert r.extra["flops"] > 0 and r.extra["gflops_per_s"] > 0
        assert r.extra["p99_ms"] >= r.extra["p50_ms"] > 0
        assert r.command == "python -m bench.ranker"
    flops = {(r.extra["path"], r.extra["candidates"]): r.extra["flops"] for r in rows}
    assert flops[("forward", 512)] > 2 * flops[("forward", 64)]  # candidate tokens dominate at C = 512
