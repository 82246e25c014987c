"""bench/quality.py: a section whose input is missing stops the run before anything is measured, naming the stage;
the retrieval rows' verdicts follow their numbers."""

from __future__ import annotations

from pathlib import Path

import pytest

import bench.quality as quality


def test_a_missing_input_names_the_dvc_stage_that_builds_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(quality, "REPO", tmp_path)
    with pytest.raises(
        SystemExit, match=r"retrieval-movielens reads data/movielens/manifest.json.*dvc repro import_movielens"
    ):
        quality._check_inputs(["retrieval-movielens"])
    (tmp_path / "data" / "synth").mkdir(parents=True)
    (tmp_path / "data" / "synth" / "manifest.json").write_text("{}")
    quality._check_inputs(["retrieval-synthetic", "ranker-kuairand"])  # present, or nothing to read: no exit
    with pytest.raises(SystemExit, match=r"dvc repro training_set_ranker"):
        quality._check_inputs(["ranker-synthetic"])


def test_retrieval_verdicts_follow_the_numbers() -> None:
    from bench.quality import _retrieval_cells, _time_to_sasrec

    m = {"ndcg@10": 0.0979, "recall@10": 0.19, "recall@200": 0.80}
    report = {"two_tower_vs_sasrec": {"ndcg@10": 1.081}, "two_tower_vs_sasrec_per_seed": [1.0, 1.2, 1.04]}
    numbers, target, verdict = _retrieval_cells("retrieval-movielens", "two_tower", m, {"ndcg@10": 0.0007}, report)
    assert numbers.startswith("NDCG@10 0.0979 ± 0.0007") and verdict.startswith("met: 0.0979, 1.081x SASRec")
    report["two_tower_vs_sasrec"]["ndcg@10"] = 1.02
    assert _retrieval_cells("retrieval-movielens", "two_tower", m, {}, report)[2].startswith("missed")
    assert _retrieval_cells("retrieval-movielens", "sasrec", m, {}, report)[1:] == ("", "")
    synthetic = {"vs_oracle": {"two_tower": {"recall@200": 0.656}, "popular": {"recall@200": 0.2}}}
    assert _retrieval_cells("retrieval-synthetic", "two_tower", m, {}, synthetic)[2] == "missed: 0.656x oracle"
    assert _retrieval_cells("retrieval-synthetic", "popular", m, {}, synthetic)[1:] == ("", "0.200x oracle")
    per_seed = {"two_tower": [{"seconds_to_reach": 49.6}, {"seconds_to_reach": 61.0}],
                "sasrec": [{"valid_ndcg@10": 0.12}, {"valid_ndcg@10": 0.11}]}  # fmt: skip
    row = _time_to_sasrec("retrieval-movielens", ["ember"], 100.0, "s", {"per_seed": per_seed})
    assert row.verdict == "missed: worst seed 61.0 s" and row.wall_s_median == pytest.approx(55.3)


def test_kuairand_verdict_needs_every_cell_four_clear_wins_and_the_time() -> None:
    from bench.quality import _kuairand_verdict

    def cells(met: int, plus: int) -> dict[str, dict[str, object]]:
        return {f"c{i}": {"met": i < met, "plus_0.01": i < plus, "margin": 0.01 if i < plus else -0.001,
                          "best_peer": "lr"} for i in range(6)}  # fmt: skip

    assert _kuairand_verdict({"verdict": cells(6, 4)}, [100.0, 119.0, 130.0])[1].startswith("met: 6/6")
    assert _kuairand_verdict({"verdict": cells(6, 3)}, [100.0])[1].startswith("missed: 6/6 cells >= best peer, 3/6")
    assert _kuairand_verdict({"verdict": cells(5, 5)}, [100.0])[1].startswith("missed: 5/6")
    slow = _kuairand_verdict({"verdict": cells(6, 6)}, [121.0, 125.0, 90.0])[1]
    assert slow.startswith("missed") and "training median 121 s" in slow
