"""The ranker latency benchmark at tiny sizes: both scoring paths agree, every row carries its FLOPs, the Phoenix
anchor is compared only when it ran in the same run (else the rows say why), and the anchor's set-up finds the
release's code or says what is missing."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from bench import phoenix_anchor, ranker
from bench.ranker import bench_ranker
from bench.verdicts import check
from tests.project import git_commit


def test_ranker_bench_rows_cover_both_paths_sizes_and_threads() -> None:
    rows = bench_ranker(quick=True, thread_counts=(1,), phoenix=False)
    ember = [r for r in rows if r.extra["section"] == "ranker"]
    keys = {(r.extra["path"], r.extra["candidates"]) for r in ember}
    assert keys == {(p, c) for p in ("forward", "cached", "compiled forward") for c in (64, 512)}
    for r in ember:
        assert r.group == "ranker" and r.command == "python -m bench.ranker"
        assert r.extra["flops"] > 0 and r.extra["gflops_per_s"] > 0 and r.extra["peak_gflops_per_s"] > 0
        assert r.extra["p99_ms"] >= r.extra["p50_ms"] > 0
        assert "matmul peak" in r.verdict
    flops = {(r.extra["path"], r.extra["candidates"]): r.extra["flops"] for r in ember}
    assert flops[("forward", 512)] > 2 * flops[("forward", 64)]  # candidate tokens dominate at C = 512
    for c in (64, 512):  # the compiled call does the eager forward's arithmetic, and says it was compiled
        assert flops[("compiled forward", c)] == flops[("forward", c)]
        (row,) = [r for r in ember if r.extra["path"] == "compiled forward" and r.extra["candidates"] == c]
        assert "torch.compile (inductor" in row.settings and "compiled it in" in row.settings
    (peak,) = [r for r in rows if r.extra["section"] == "peak"]
    assert peak.extra["peak_flops"] > 0
    # Without the anchor: a row that says so, and no ratio drawn from a number measured elsewhere.
    (anchor,) = [r for r in rows if r.extra["section"] == "phoenix"]
    assert anchor.verdict == "not runnable here: left out by --no-phoenix"
    for r in ember:
        assert r.extra["ratio_to_phoenix_p50"] is None
        if r.extra["candidates"] == 64:
            assert r.verdict.startswith("not measured: the Phoenix anchor is not runnable here")
        else:
            assert "Phoenix not measured" in r.verdict and check(r.target, r.verdict) == (True, "")


def _fake_anchor(ms: dict[str, float]) -> dict[str, Any]:
    return {
        "jax": "0.8.1",
        "haiku": "0.0.17",
        "platform": "cpu",
        "cpus": 1,
        "params": 754_560,
        "shape": "D128, 4 layers",
        "source": "/src/phoenix",
        "source_sha256_12": {"grok.py": "0" * 12, "recsys_model.py": "1" * 12},
        "results": [
            {"candidates": c, "dtype": d, "first_call_s": 1.0, "seconds": [v / 1000] * 10, "flops": 3e8,
             "p_range": [0.4, 0.6]}
            for c in (64, 512)
            for d, v in ms.items()
        ],
    }  # fmt: skip


@pytest.mark.parametrize("phoenix_ms,word", [(1000.0, "met"), (0.001, "missed")])
def test_the_c64_verdict_is_the_median_ratio_to_phoenix_faster_dtype(
    monkeypatch: pytest.MonkeyPatch, phoenix_ms: float, word: str
) -> None:
    monkeypatch.setattr(
        phoenix_anchor, "measure", lambda *a, **kw: _fake_anchor({"bfloat16": 2 * phoenix_ms, "float32": phoenix_ms})
    )
    rows = bench_ranker(quick=True, thread_counts=(1,), compile=False)
    anchors = [r for r in rows if r.extra["section"] == "phoenix"]
    assert {(r.extra["candidates"], r.extra["dtype"]) for r in anchors} == {
        (c, d) for c in (64, 512) for d in ("bfloat16", "float32")
    }
    for r in rows:
        if r.extra["section"] == "ranker" and r.extra["candidates"] == 64:
            assert r.extra["phoenix"]["dtype"] == "float32"  # the faster of the two
            assert r.extra["ratio_to_phoenix_p50"] == pytest.approx(r.extra["p50_ms"] / phoenix_ms)
            assert r.verdict.startswith(f"{word}: ") and check(r.target, r.verdict) == (True, "")


def test_the_source_is_found_where_named_or_said_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMBER_ANCHORS", str(tmp_path / "anchors"))
    monkeypatch.delenv("EMBER_PHOENIX_GIT", raising=False)
    monkeypatch.setenv("EMBER_PHOENIX_SRC", str(tmp_path))
    assert "lacks grok.py, recsys_model.py" in str(phoenix_anchor.find_source())
    monkeypatch.delenv("EMBER_PHOENIX_SRC")
    assert "is not on this machine" in str(phoenix_anchor.find_source())
    for name in phoenix_anchor.SOURCE_FILES:
        (tmp_path / name).write_text("# stand-in\n")
    monkeypatch.setenv("EMBER_PHOENIX_SRC", str(tmp_path))
    assert phoenix_anchor.find_source() == tmp_path


def test_the_source_is_extracted_from_a_clone_at_the_release(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clone = tmp_path / "x-algorithm"
    (clone / "phoenix").mkdir(parents=True)
    for name in phoenix_anchor.SOURCE_FILES:
        (clone / "phoenix" / name).write_text(f"# {name}\n")

    git_commit(clone, "release")
    head = subprocess.run(["git", "-C", str(clone), "rev-parse", "HEAD"], check=True, capture_output=True, text=True)
    monkeypatch.setattr(phoenix_anchor, "RELEASE", head.stdout.strip())
    monkeypatch.setenv("EMBER_ANCHORS", str(tmp_path / "anchors"))
    monkeypatch.delenv("EMBER_PHOENIX_SRC", raising=False)
    monkeypatch.setenv("EMBER_PHOENIX_GIT", str(clone))
    found = phoenix_anchor.find_source()
    assert isinstance(found, Path) and (found / "grok.py").read_text() == "# grok.py\n"
    assert found.is_relative_to(tmp_path / "anchors")
    monkeypatch.setenv("EMBER_PHOENIX_GIT", str(tmp_path / "nowhere"))
    assert "git archive" in str(phoenix_anchor.find_source())


def test_measure_returns_the_reason_when_the_venv_cannot_be_had(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(phoenix_anchor, "ensure_venv", lambda: "could not install jax==0.8.1: no matching distribution")
    assert phoenix_anchor.measure((64,), 1, 5, 1) == {"error": "could not install jax==0.8.1: no matching distribution"}
    rows, best = ranker.phoenix_rows({"error": "no jax"}, 1, 1, 1e9)
    assert best == {} and rows[0].verdict == "not runnable here: no jax" and rows[0].repeats == 0
