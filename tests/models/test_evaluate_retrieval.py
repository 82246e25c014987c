"""`ember evaluate retrieval`: every model on one split of a synthetic feed, the oracle beside them, bad input."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from features.synth import SynthConfig, generate
from tests.conftest import CliResult

Cli = Callable[..., CliResult]
MODELS = ("most_popular", "item_knn", "sasrec", "two_tower", "oracle")


@pytest.fixture(scope="module")
def feed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("eval") / "nano"
    generate(SynthConfig.for_scale("nano", seed=11, days=3), out)
    return out


def test_all_models_and_the_oracle_rank_the_same_targets(feed: Path, tmp_path: Path, run_cli: Cli) -> None:
    out = tmp_path / "eval.json"
    result = run_cli("evaluate", "retrieval", "--data", str(feed), "--protocol", "temporal", "--budget-s", "3",
                     "--out", str(out), "--set", "train.eval_every=1")  # fmt: skip
    assert result.code == 0, result.stderr
    report = json.loads(out.read_text())
    assert report["dataset"] == "synthetic" and report["protocol"] == "temporal"
    assert set(report["models"]) == set(MODELS)
    for name, row in report["models"].items():
        assert 0.0 <= row["recall@10"] <= row["recall@50"] <= row["recall@200"] <= row["recall@1000"] <= 1.0, name
        assert 0.0 <= row["ndcg@10"] <= row["ndcg@50"] <= 1.0, name
    oracle = report["models"]["oracle"]
    # The oracle knows the true affinities: far above popularity on the same targets.
    assert oracle["recall@200"] > 2 * report["models"]["most_popular"]["recall@200"]
    ratio = report["vs_oracle"]["two_tower"]["recall@200"]
    assert ratio == pytest.approx(report["models"]["two_tower"]["recall@200"] / oracle["recall@200"], abs=1e-3)
    assert report["models"]["sasrec"]["seconds"] < 3 + 30  # the budget binds (plus one evaluation)
    assert "two_tower_vs_sasrec" in report
    # Recall@200 split by whether anyone engaged with the target's post before the cut-off.
    share = report["split"]["test_targets_engaged_before_cutoff"]
    assert 0.0 <= share <= 1.0
    for name in ("two_tower", "oracle"):
        row = report["models"][name]
        parts = [row[f"recall@200_{k}"] for k in ("engaged", "new")]
        assert row["recall@200"] == pytest.approx(share * parts[0] + (1 - share) * parts[1], abs=1e-3), name
    # The share of the oracle's top-20 the two-tower retrieves; early stopping kept the best validation Recall@200.
    two_tower = report["models"]["two_tower"]
    assert 0.0 <= two_tower["oracle_top20_in_top200"] <= 1.0
    assert 0.0 <= two_tower["valid_recall@200_engaged"] <= 1.0 and 0.0 <= two_tower["valid_recall@200_new"] <= 1.0
    assert "valid_recall@200" in two_tower


def test_bad_protocol_and_unknown_keys_are_one_line_errors(feed: Path, tmp_path: Path, run_cli: Cli) -> None:
    out = tmp_path / "eval.json"
    line = run_cli("evaluate", "retrieval", "--data", str(feed), "--protocol", "random", "--out", str(out)).error_line()
    assert "--protocol" in line and "random" in line
    line = run_cli("evaluate", "retrieval", "--data", str(feed), "--protocol", "temporal", "--out", str(out),
                   "--set", "train.warmup=3").error_line()  # fmt: skip
    assert "train.warmup" in line
    line = run_cli("evaluate", "retrieval", "--data", str(feed), "--seeds", "0,x", "--out", str(out)).error_line()
    assert "--seeds" in line
    line = run_cli("evaluate", "retrieval", "--data", str(feed), "--seeds", "1,1", "--out", str(out)).error_line()
    assert "--seeds" in line
    line = run_cli(
        "evaluate", "retrieval", "--data", str(feed), "--set", "sasrec.depth=3", "--out", str(out)
    ).error_line()
    assert "sasrec.depth" in line
    assert not out.exists()


def test_top_overlap_counts_the_ideal_slate_found_at_depth() -> None:
    import numpy as np
    import torch

    from models.retrieval.evaluate import top_overlap

    truth = torch.tensor([[4.0, 3.0, 2.0, 1.0], [4.0, 3.0, 2.0, 1.0]])
    scores = torch.tensor([[4.0, 1.0, 2.0, 3.0], [1.0, 2.0, 3.0, 4.0]])
    seen = [np.array([], np.int64), np.array([0])]
    # Row 0: ideal top-2 {0, 1}, retrieved top-2 {0, 3} -> 1/2. Row 1: post 0 seen, ideal {1, 2}, retrieved {3, 2}.
    assert top_overlap(truth, scores, seen, k=2, depth=2).tolist() == [0.5, 0.5]
    assert top_overlap(truth, scores, seen, k=2, depth=3).tolist() == [0.5, 1.0]


def test_seeds_report_mean_std_and_every_run_and_converge_drops_the_budget(feed: Path) -> None:
    import numpy as np

    from models.retrieval.evaluate import evaluate_retrieval

    caps = {"epochs": 2, "patience": 1}
    report = evaluate_retrieval(
        feed, "leave-one-out", "nano", None, seeds=[0, 1], names=("most_popular", "sasrec", "two_tower"),
        train_overrides=caps, sasrec_overrides={**caps, "eval_every": 1},
    )  # fmt: skip
    assert report["seeds"] == [0, 1] and report["budget_s"] is None
    assert report["config"]["sasrec"]["epochs"] == 2 and "budget_seconds" not in report["config"]["sasrec"]
    assert len(report["per_seed"]["sasrec"]) == len(report["per_seed"]["two_tower"]) == 2
    assert len(report["per_seed"]["most_popular"]) == 1 and report["std"]["most_popular"]["ndcg@10"] == 0.0
    for name in ("sasrec", "two_tower"):
        runs = [r["ndcg@10"] for r in report["per_seed"][name]]
        assert report["models"][name]["ndcg@10"] == np.mean(runs)
        assert report["std"][name]["ndcg@10"] == np.std(runs, ddof=1)
    ratios = report["two_tower_vs_sasrec_per_seed"]
    assert len(ratios) == 2 and all(r >= 0 or np.isnan(r) for r in ratios)
    # Each seed's time to reach is measured against that seed's SASRec (NaN where it never reached).
    assert all(r["seconds_to_reach"] >= 0 or np.isnan(r["seconds_to_reach"]) for r in report["per_seed"]["two_tower"])


def test_compare_retrievers_scores_saved_models_on_the_window_training_reported(feed: Path, tmp_path: Path) -> None:
    """The gate's like-for-like retrieval check: a saved two-tower re-scored by compare_retrievers on the data it
    was trained on gets exactly the test metrics training reported; a second model on the same window differs."""
    from models.retrieval.job import compare_retrievers, train_retrieval_events

    first = train_retrieval_events(feed, tmp_path / "a", "nano", {}, {"epochs": 1}, budget_s=30, seed=0)
    second = train_retrieval_events(feed, tmp_path / "b", "nano", {}, {"epochs": 1}, budget_s=30, seed=1)
    result = compare_retrievers(feed, {"challenger": tmp_path / "a" / "best", "champion": tmp_path / "b" / "best"})
    for name, trained in (("challenger", first), ("champion", second)):
        for metric in ("recall@200", "ndcg@10", "recall@200_new"):
            assert result[name][metric] == pytest.approx(trained[metric], abs=1e-5), (name, metric)
    assert result["challenger"] != result["champion"]
    assert result["window"]["targets"] > 0 and result["window"]["corpus"] > 0


def test_evaluate_compare_needs_data_and_both_towers_together(feed: Path, tmp_path: Path, run_cli: Cli) -> None:
    ranker = tmp_path / "ranker"
    ranker.mkdir()
    (ranker / "config.json").write_text("{}")
    base = ("evaluate", "compare", "--challenger", str(ranker), "--champion", str(ranker), "--out",
            str(tmp_path / "c.json"))  # fmt: skip
    line = run_cli(*base, "--data", str(feed), "--challenger-retrieval", str(tmp_path)).error_line()
    assert "--champion-retrieval: needed with --data, --challenger-retrieval" in line
    line = run_cli(*base, "--data", str(feed), "--challenger-retrieval", str(tmp_path), "--champion-retrieval",
                   str(tmp_path)).error_line()  # fmt: skip
    assert "--challenger-retrieval" in line and "not a saved two-tower model" in line
    assert not (tmp_path / "c.json").exists()
