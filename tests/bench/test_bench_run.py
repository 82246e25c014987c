"""BENCHMARKS.md's headline: the numbers that matter, each found in the committed results."""

from __future__ import annotations

import json

import pytest

from bench.harness import RESULTS
from bench.run import HEADLINE, headline


def _bodies() -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(RESULTS.glob("*.json"))]


def test_every_headline_row_is_measured_and_carries_a_target_and_verdict() -> None:
    lines = headline(_bodies())
    table = lines[lines.index("## Headline") + 4 : lines.index("## Every row with a target") - 1]
    assert len(table) == len(HEADLINE)
    for (label, group, name), line in zip(HEADLINE, table, strict=True):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[0] == f"{label} ({group}: {name})"
        assert cells[2] and cells[3], f"{name}: the headline row has no target or no verdict"


def test_a_headline_row_missing_from_the_results_is_an_error() -> None:
    bodies = [b for b in _bodies() if b["group"] != "pipeline"]
    with pytest.raises(KeyError, match="bench/results/pipeline.json"):
        headline(bodies)
