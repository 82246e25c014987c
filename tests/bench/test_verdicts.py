"""Every BENCHMARKS row's verdict word must agree with its numbers: the check (bench/verdicts.py) on hand-made rows, a
word flipped included, then on every row of bench/results/*.json, the data BENCHMARKS.md is rendered from."""

from __future__ import annotations

import json

import pytest

from bench.harness import RESULTS
from bench.verdicts import check

AGREE = [
    ("p99 <= 30 ms at concurrency 1", "met: 0.85x"),
    ("p99 <= 30 ms at concurrency 1", "missed: 1.20x of target; 0 degraded, 0 errors of 300"),
    ("<= 300 s", "met: 0.59x the target"),
    ("<= 60 s, <= 2048 MB", "met: 0.08x time budget, 0.16x memory"),
    ("<= 60 s, <= 2048 MB", "missed: 0.08x time budget, 1.16x memory"),
    ("p99 <= 2 ms (anchor: Feast p99 4.61 ms)", "met: 0.33x of target; 4.9x faster than Feast (p50)"),
    ("p99 <= 1 ms at Recall@100 >= 0.95", "missed: Recall@100 0.919, 0.50x of target, 0.02x exact p99"),
    ("p99 <= 1 ms at Recall@100 >= 0.95", "met: Recall@100 0.998, 0.49x of target, 0.022x exact p99 (46x faster)"),
    ("Recall@200 >= 0.9 x oracle", "missed: 0.085x oracle"),
    ("NDCG@10 >= 1.05 x SASRec (same split)", "met: 1.252x SASRec"),
    ("median <= 0.33x Phoenix's median (same run)", "missed: 0.72x Phoenix's median (6.39 vs 8.93 ms)"),
    ("median <= 0.33x Phoenix's median (same run)", "met: 0.30x Phoenix's median (2.70 vs 8.93 ms)"),
    ("<= 60 s on 2 cores", "met: 6.6 s"),
    ("<= 5% of days over >= 20 days", "met: 0.0%"),
    ("first alarm <= 1 day after onset", "met: 3/3 seeds within 1 day"),
    ("first alarm <= 1 day after onset", "missed: 2/3 seeds within 1 day"),
    ("p99 <= 25 ms", "missed: 1.00x of target"),  # 1.00 may be 1.004: rounding decides, either word stands
    ("p99 <= 25 ms", "met: 1.00x of target"),
]


def _flip(verdict: str) -> str:
    word, rest = verdict.split(":", 1)
    return {"met": "missed", "missed": "met"}[word] + ":" + rest


@pytest.mark.parametrize("target,verdict", AGREE)
def test_a_verdict_that_agrees_passes_and_its_flipped_word_fails(target: str, verdict: str) -> None:
    assert check(target, verdict) == (True, "")
    if "1.00x" in verdict:  # inside the rounding interval: either word
        assert check(target, _flip(verdict)) == (True, "")
        return
    flipped = check(target, _flip(verdict))
    assert flipped is not None and flipped[0] is False and flipped[1]


def test_rows_without_a_readable_comparison_are_not_judged() -> None:
    assert check("side-by-side anchor", "Recall@100 1.000") is None
    assert check("", "not runnable here: no jax") is None
    assert check("0 errors, worker RSS growth < 5%", "met: errors 0, worker RSS 645.0 -> 645.1 MB") is None


def _rows() -> list[tuple[str, dict]]:
    return [(p.name, r) for p in sorted(RESULTS.glob("*.json")) for r in json.loads(p.read_text())["rows"]]


def test_every_recorded_verdict_agrees_with_its_numbers() -> None:
    rows = _rows()
    judged = [(f, r, check(r["target"], r["verdict"])) for f, r in rows]
    wrong = [f"{f}: {r['name']}: {res[1]}" for f, r, res in judged if res is not None and not res[0]]
    assert not wrong, "\n".join(wrong)
    # The check must keep reading the rows (a format change that it no longer parses would silence it).
    assert sum(res is not None for _, _, res in judged) >= 25


def test_the_results_hold_rows_of_each_kind_the_check_reads() -> None:
    groups = {f for f, r in _rows() if check(r["target"], r["verdict"]) is not None}
    assert {"models.json", "ranker.json", "serving.json", "pipeline.json"} <= groups, groups
