"""Weighted scorer: blends per-action probabilities with signed weights into one score (x-algorithm's RankingScorer)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from core.errors import UserError
from models.ranker.task_table import TASKS_BY_NAME, blend_weight_problem, default_blend_weights
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
    """One candidate's offset weighted score: `blend_table` over its row (missing actions count as 0; NaN where a
    prediction is not finite)."""
    if isinstance(actions, ActionRow):
        return float(blend_table(actions.table, np.array([actions.row]), weights)[0])
    return float(blend_table(action_table([actions]), np.zeros(1, dtype=np.int64), weights)[0])


def action_table(rows: Sequence[Mapping[str, float]]) -> ActionTable:
    """An `ActionTable` of per-candidate {action: prediction} mappings (an action a row lacks reads 0)."""
    names = tuple(dict.fromkeys(name for row in rows for name in row))
    values = np.array([[row.get(name, 0.0) for name in names] for row in rows], dtype=np.float64)
    return ActionTable(names, values.reshape(len(rows), len(names)))


def blend_table(table: ActionTable, rows: np.ndarray, weights: ScoringWeights) -> np.ndarray:
    """The offset weighted score of `rows` of the table, the one scoring rule: x = sum(w_i * p_i) with the weights
    times the table's learned multipliers, then negative x squeezed into [0, offset). (R,) float64, NaN where a
    prediction is not finite."""
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
        """Blends each candidate's predictions (None: no predictions, or a non-finite one, which then sinks below
        every scored candidate instead of winning a slot). Candidates the ranker scored in one call share its table;
        predictions given per candidate are blended as one table of their own: the same rule either way."""
        scores = np.full(len(candidates), np.nan)
        shared: dict[int, list[int]] = {}
        loose: list[int] = []
        for i, c in enumerate(candidates):
            if isinstance(c.actions, ActionRow):
                shared.setdefault(id(c.actions.table), []).append(i)
            elif c.actions:
                loose.append(i)
        for at in shared.values():
            rows = [candidates[i].actions for i in at]
            table = rows[0].table  # type: ignore[attr-defined]
            scores[at] = blend_table(table, np.array([r.row for r in rows]), self.weights)  # type: ignore[attr-defined]
        if loose:
            table = action_table([candidates[i].actions for i in loose])
            scores[loose] = blend_table(table, np.arange(len(loose)), self.weights)
        for c, s in zip(candidates, scores.tolist(), strict=True):
            c.score = None if s != s else s  # NaN: no or a non-finite prediction
        return candidates
