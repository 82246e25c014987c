"""Weighted scorer: blends per-action probabilities with signed weights into one score (x-algorithm's RankingScorer)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from core.errors import UserError
from models.ranker.tasks import TASKS_BY_NAME, blend_weight_problem, default_blend_weights
from serving.component import Component
from serving.types import ActionRow, ActionTable, Candidate, Query

NEGATIVE_SCORES_OFFSET = 0.001  # x-algorithm: non-negative blends sit above it, negative ones are squeezed below it


@dataclass(frozen=True)
class ScoringWeights:
    """Signed blend weights, checked when loaded by the ranker's own rule (`models.ranker.tasks.blend_weight_problem`);
    the defaults are the task table's (`Task.blend_weight`)."""

    weights: dict[str, float] = field(default_factory=default_blend_weights)

    def __post_init__(self) -> None:
        for name, w in self.weights.items():
            if name not in TASKS_BY_NAME:
                raise UserError(f"weights.{name}: unknown action")
            if (problem := blend_weight_problem(name, w)) is not None:
                raise UserError(f"weights.{name}: {problem}")

    @property
    def positive_total(self) -> float:
        return sum(w for w in self.weights.values() if w > 0)

    @property
    def negative_total(self) -> float:
        return -sum(w for w in self.weights.values() if w < 0)


@dataclass(frozen=True)
class _Scaled(ScoringWeights):
    """Weights already checked, scaled by non-negative multipliers (signs kept): not checked again per request."""

    def __post_init__(self) -> None:
        pass


def scaled(weights: ScoringWeights, scales: Mapping[str, float] | None) -> ScoringWeights:
    """The weights times the ranker's learned per-user multipliers (an action without one keeps its weight)."""
    if not scales:
        return weights
    return _Scaled({name: w * scales.get(name, 1.0) for name, w in weights.weights.items()})


def blend(actions: Mapping[str, float], weights: ScoringWeights) -> float:
    """The offset weighted score: x = sum(w_i * p_i), then negative x is squeezed into [0, offset).

    Args:
        actions: per-action probability (and the expected `dwell_time` in seconds); missing actions count as 0.
    """
    if isinstance(actions, ActionRow):
        weights = scaled(weights, actions.table.weight_scales)
    x = sum(w * actions.get(name, 0.0) for name, w in weights.weights.items())
    total = weights.positive_total + weights.negative_total
    if total == 0:
        return max(x, 0.0)
    if x >= 0:
        return x + NEGATIVE_SCORES_OFFSET
    return (x + weights.negative_total) / total * NEGATIVE_SCORES_OFFSET


def blend_table(table: ActionTable, rows: np.ndarray, weights: ScoringWeights) -> np.ndarray:
    """`blend` over whole columns: (R,) float64 scores of `rows` of the table, NaN where a prediction is not finite
    (the per-candidate path's None). The same arithmetic as `blend`, so both paths give the same scores."""
    weights = scaled(weights, table.weight_scales)
    values = table.values[rows].astype(np.float64)  # (R, K)
    x = np.zeros(len(rows), dtype=np.float64)
    for name, w in weights.weights.items():
        if name in table.column:
            x += w * values[:, table.column[name]]
    pos, neg = weights.positive_total, weights.negative_total
    if pos + neg == 0:
        out = np.maximum(x, 0.0)
    else:
        out = np.where(x >= 0, x + NEGATIVE_SCORES_OFFSET, (x + neg) / (pos + neg) * NEGATIVE_SCORES_OFFSET)
    out[~np.isfinite(values).all(axis=1)] = np.nan
    return out


@dataclass
class WeightedScorer(Component):
    weights: ScoringWeights = field(default_factory=ScoringWeights)

    def score(self, query: Query, candidates: list[Candidate]) -> list[Candidate]:
        rows = [c.actions for c in candidates if isinstance(c.actions, ActionRow)]
        if rows and len(rows) == len(candidates) and all(r.table is rows[0].table for r in rows):
            at = np.array([r.row for r in rows], dtype=np.int64)
            for c, s in zip(candidates, blend_table(rows[0].table, at, self.weights).tolist(), strict=True):
                c.score = None if s != s else s  # NaN: a non-finite prediction
            return candidates
        for c in candidates:
            # Non-finite probabilities (a broken model) sink to the bottom instead of winning a slot.
            finite = all(math.isfinite(v) for v in c.actions.values())
            c.score = blend(c.actions, self.weights) if c.actions and finite else None
        return candidates
