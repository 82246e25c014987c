"""The ranker's prediction tasks as data, without torch: one declaration for the whole action vocabulary, its funnel
and the one rule for blend weights (serving's weighted scorer and the ranker's own blend both read it).

Each `Task` is one output head. The binary tasks are the 13 actions of `core.actions`, in vocabulary order; the one
continuous task regresses `dwell_time` on log1p(seconds). A task names its funnel `parent`: in funnel mode the ranker
predicts P(task) = P(parent) * P(task | parent), so a like can never be likelier than the click it needs. Labels,
availability and the losses over these tasks are models/ranker/tasks.py.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from core.actions import BY_NAME, DWELL_TIME, Polarity


class TaskKind(StrEnum):
    BINARY = "binary"  # a logit, trained with binary cross-entropy
    CONTINUOUS = "continuous"  # a regression value, trained with a Huber loss


@dataclass(frozen=True)
class Task:
    """One ranker head.

    Attributes:
        name: head name; also the label column in the impressions table.
        kind: binary (an action) or continuous (a regression target).
        loss_weight: weight of this task's mean loss in `ranker_loss`.
        blend_weight: signed weight of the prediction in the default blended score (negative actions <= 0).
        parent: the funnel parent (a binary task that must happen first), or None for a root / independent task.
        observed_as: the manifest action whose presence means this task's label is real; None = `name`.
    """

    name: str
    kind: TaskKind
    loss_weight: float
    blend_weight: float
    parent: str | None = None
    observed_as: str | None = None


# Blend weights: home-mixer R3 `params/param.rs` defaults (phoenix.md 1.6), favorite -> like, retweet -> repost. They
# fold in base rates (a report is ~1000x rarer than a like), which is why the negatives are so large. Funnel: every
# positive engagement except the click itself needs the user to open the post first; negatives can come from the
# feed without a click, so they are roots.
TASKS: tuple[Task, ...] = (
    Task("click", TaskKind.BINARY, 1.0, 0.4),
    Task("like", TaskKind.BINARY, 1.0, 0.5, parent="click"),
    Task("reply", TaskKind.BINARY, 1.0, 5.0, parent="click"),
    Task("repost", TaskKind.BINARY, 1.0, 1.0, parent="click"),
    Task("quote", TaskKind.BINARY, 1.0, 5.0, parent="click"),
    Task("share", TaskKind.BINARY, 1.0, 2.0, parent="click"),
    Task("profile_click", TaskKind.BINARY, 1.0, 0.0, parent="click"),
    Task("follow_author", TaskKind.BINARY, 1.0, 4.0, parent="click"),
    Task("dwell", TaskKind.BINARY, 1.0, 0.0, parent="click"),
    Task("not_interested", TaskKind.BINARY, 1.0, -43.2),
    Task("block_author", TaskKind.BINARY, 1.0, -31.2),
    Task("mute_author", TaskKind.BINARY, 1.0, -58.8),
    Task("report", TaskKind.BINARY, 1.0, -234.0),
    # Regression on log1p(seconds) over every impression (0 s when not opened); blended as predicted seconds, so
    # 0.004 makes 100 s worth one click. Real wherever the dataset records dwell at all.
    Task(DWELL_TIME, TaskKind.CONTINUOUS, 1.0, 0.004, observed_as="dwell"),
)
TASK_NAMES: tuple[str, ...] = tuple(t.name for t in TASKS)
TASKS_BY_NAME: dict[str, Task] = {t.name: t for t in TASKS}


def default_blend_weights(tasks: Sequence[Task] = TASKS) -> dict[str, float]:
    """The default blend: each task's signed `blend_weight` by name, in task order (serving's `ScoringWeights`)."""
    return {t.name: t.blend_weight for t in tasks}


def blend_weight_problem(name: str, weight: float) -> str | None:
    """What is wrong with `weight` as the blend weight of `name`'s prediction, or None. A weight must be finite, and
    a blend may never reward a negative action nor penalise a positive one (x-algorithm's ranking_scorer.rs): a
    negative action's weight is <= 0, a positive action's >= 0. The continuous `dwell_time` takes either sign."""
    if not math.isfinite(weight):
        return f"must be finite, got {weight}"
    polarity = BY_NAME[name].polarity if name in BY_NAME else None
    if polarity is Polarity.NEGATIVE and weight > 0:
        return f"a negative action needs a weight <= 0, got {weight}"
    if polarity is Polarity.POSITIVE and weight < 0:
        return f"a positive action needs a weight >= 0, got {weight}"
    return None


def validate_tasks(tasks: Sequence[Task]) -> None:
    """Checks a task list: unique names, binary tasks are known actions, blend weights pass `blend_weight_problem`,
    parents are binary tasks declared earlier (so one pass in order resolves the funnel).

    Raises:
        ValueError: the first problem found.
    """
    seen: dict[str, Task] = {}
    for t in tasks:
        if t.name in seen:
            raise ValueError(f"task {t.name!r} declared twice")
        if t.kind is TaskKind.BINARY and t.name not in BY_NAME:
            raise ValueError(f"binary task {t.name!r} is not an action of core.actions")
        if (problem := blend_weight_problem(t.name, t.blend_weight)) is not None:
            raise ValueError(f"task {t.name!r}: blend weight: {problem}")
        if t.parent is not None and (t.parent not in seen or seen[t.parent].kind is not TaskKind.BINARY):
            raise ValueError(f"task {t.name!r}: parent {t.parent!r} is not a binary task declared before it")
        if t.loss_weight < 0:
            raise ValueError(f"task {t.name!r}: negative loss weight {t.loss_weight}")
        seen[t.name] = t


validate_tasks(TASKS)


def select_tasks(names: Iterable[str]) -> tuple[Task, ...]:
    """The tasks named, in `TASKS` order (the head order is fixed by the declaration, not by the caller).

    Raises:
        ValueError: an unknown name.
    """
    wanted = set(names)
    unknown = wanted - set(TASK_NAMES)
    if unknown:
        raise ValueError(f"unknown tasks {sorted(unknown)} (choose from {', '.join(TASK_NAMES)})")
    return tuple(t for t in TASKS if t.name in wanted)
