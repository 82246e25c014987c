"""Blending, diversity, the out-of-network factor and top-K selection, with hand-computed numbers."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest

from core.errors import UserError
from serving.scorers.author_diversity import AuthorDiversityScorer
from serving.scorers.out_of_network import OutOfNetworkScorer
from serving.scorers.weighted import NEGATIVE_SCORES_OFFSET, ScoringWeights, WeightedScorer, blend
from serving.selectors.top_k import TopKSelector
from serving.types import Candidate, Query

Q = Query(user_id=1, now=datetime(2026, 1, 5, tzinfo=UTC))


def _c(post_id: int, author_id: int, score: float | None = None, in_network: bool = True) -> Candidate:
    return Candidate(post_id, author_id, 0, "test", in_network=in_network, score=score)


def test_blend_is_the_signed_sum_plus_offset() -> None:
    w = ScoringWeights({"click": 1.0, "like": 2.0, "report": -10.0})
    assert blend({"click": 0.5, "like": 0.25, "report": 0.01}, w) == pytest.approx(
        0.5 + 0.5 - 0.1 + NEGATIVE_SCORES_OFFSET
    )


def test_negative_blends_are_squeezed_below_the_offset_in_order() -> None:
    w = ScoringWeights({"click": 1.0, "report": -10.0})  # W+ = 1, W- = 10
    worse, bad = blend({"report": 0.9}, w), blend({"report": 0.1}, w)
    assert bad == pytest.approx((-1.0 + 10.0) / 11.0 * NEGATIVE_SCORES_OFFSET)
    assert 0 <= worse < bad < NEGATIVE_SCORES_OFFSET == blend({"click": 0.0}, w)


@pytest.mark.parametrize(
    ("weights", "field"),
    [({"report": 1.0}, "weights.report"), ({"like": -0.5}, "weights.like"), ({"laugh": 1.0}, "weights.laugh"),
     ({"click": math.nan}, "weights.click")],
)  # fmt: skip
def test_weights_are_checked_at_load(weights: dict[str, float], field: str) -> None:
    with pytest.raises(UserError, match=field):
        ScoringWeights(weights)


def test_default_weights_are_the_task_table() -> None:
    from models.ranker.task_table import TASKS

    assert ScoringWeights().weights == {t.name: t.blend_weight for t in TASKS}
    with pytest.raises(UserError, match=r"^weights\.report: a negative action needs a weight <= 0, got 1\.0$"):
        ScoringWeights({"report": 1.0})
    with pytest.raises(UserError, match=r"^weights\.dwell_time: must be finite, got inf$"):
        ScoringWeights({"dwell_time": math.inf})


def test_non_finite_predictions_get_no_score() -> None:
    c = _c(1, 1)
    c.actions = {"click": math.nan}
    assert WeightedScorer().score(Q, [c])[0].score is None


def test_author_diversity_multipliers() -> None:
    scorer = AuthorDiversityScorer()
    assert [scorer.multiplier(k) for k in range(4)] == [1.0, 0.625, 0.4375, 0.34375]
    cands = [_c(1, 7, 10.0), _c(2, 7, 8.0), _c(3, 8, 9.0), _c(4, 7, 4.0)]
    scorer.score(Q, cands)
    assert [c.score for c in cands] == [10.0, 8.0 * 0.625, 9.0, 4.0 * 0.4375]


def test_out_of_network_factor_applies_to_out_of_network_only() -> None:
    cands = OutOfNetworkScorer().score(Q, [_c(1, 1, 1.0, in_network=True), _c(2, 2, 1.0, in_network=False)])
    assert [c.score for c in cands] == [1.0, 0.75]


def test_top_k_ranks_missing_and_nan_scores_last_and_breaks_ties_by_id() -> None:
    cands = [_c(5, 1, None), _c(4, 1, math.nan), _c(3, 1, 2.0), _c(2, 1, 2.0), _c(1, 1, 3.0)]
    assert [c.post_id for c in TopKSelector(k=4).select(Q, cands)] == [1, 2, 3, 4]


def test_the_column_blend_gives_the_per_candidate_scores_exactly() -> None:
    import numpy as np

    from serving.types import ActionRow, ActionTable

    rng = np.random.default_rng(3)
    names = ("click", "like", "reply", "report", "block_author", "dwell_time")
    values = rng.random((40, len(names))).astype(np.float32)
    values[:, -1] *= 30.0  # dwell_time in seconds
    values[5, 3] = np.float32(0.99)  # a report-heavy candidate: a negative blend
    values[7, 1] = np.nan  # a broken prediction
    table = ActionTable(names, values)
    vectorised = [_c(i, i) for i in range(40)]
    for i, c in enumerate(vectorised):
        c.actions = ActionRow(table, i)
    per_candidate = [_c(i, i) for i in range(40)]
    for i, c in enumerate(per_candidate):
        c.actions = {n: float(v) for n, v in zip(names, values[i], strict=True)}
    WeightedScorer().score(Q, vectorised)
    WeightedScorer().score(Q, per_candidate)
    assert [c.score for c in vectorised] == [c.score for c in per_candidate]  # bit-identical, None for NaN
    assert vectorised[7].score is None and vectorised[5].score is not None
    assert vectorised[5].score < NEGATIVE_SCORES_OFFSET  # the report pushed it below the offset
    assert dict(vectorised[2].actions) == per_candidate[2].actions
