"""The task table's blend rule (models/ranker/task_table.py): one sign check for the table and for serving's weights."""

from __future__ import annotations

import math

import pytest

from core.actions import ACTION_NAMES, DWELL_TIME
from models.ranker.task_table import (
    TASK_NAMES,
    TASKS,
    Task,
    TaskKind,
    blend_weight_problem,
    default_blend_weights,
    validate_tasks,
)


def test_default_blend_weights_are_the_task_table_in_task_order() -> None:
    weights = default_blend_weights()
    assert list(weights) == list(TASK_NAMES) == [*ACTION_NAMES, DWELL_TIME]
    assert weights == {t.name: t.blend_weight for t in TASKS}
    assert weights["report"] == -234.0 and weights[DWELL_TIME] == 0.004


@pytest.mark.parametrize(
    ("name", "weight", "problem"),
    [
        ("report", 1.0, "a negative action needs a weight <= 0, got 1.0"),
        ("like", -0.5, "a positive action needs a weight >= 0, got -0.5"),
        ("click", math.nan, "must be finite, got nan"),
        (DWELL_TIME, math.inf, "must be finite, got inf"),
        ("report", 0.0, None),
        ("like", 0.0, None),
        (DWELL_TIME, -1.0, None),  # a continuous task: no polarity, either sign
    ],
)
def test_blend_weight_problem(name: str, weight: float, problem: str | None) -> None:
    assert blend_weight_problem(name, weight) == problem


def test_validate_tasks_rejects_a_wrong_signed_blend_weight() -> None:
    with pytest.raises(ValueError, match=r"^task 'report': blend weight: a negative action needs a weight <= 0"):
        validate_tasks([Task("report", TaskKind.BINARY, 1.0, 5.0)])
    with pytest.raises(ValueError, match=r"^task 'like': blend weight: a positive action needs a weight >= 0"):
        validate_tasks([Task("like", TaskKind.BINARY, 1.0, -1.0)])
    validate_tasks([Task(DWELL_TIME, TaskKind.CONTINUOUS, 1.0, -1.0)])
