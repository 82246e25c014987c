"""The ranker's prediction tasks as data: one declaration for the whole action vocabulary, labels, availability, loss.

Each `Task` is one output head. The binary tasks are the 13 actions of `core.actions`, in vocabulary order; the one
continuous task regresses `dwell_time` on log1p(seconds). A task names its funnel `parent`: in funnel mode the ranker
predicts P(task) = P(parent) * P(task | parent), so a like can never be likelier than the click it needs.

Datasets record different subsets of the vocabulary (`Manifest.observed_actions`: KuaiRand has no report, MovieLens
only click/like/not_interested). Unrecorded actions are all-zero columns, which would teach a head "never happens";
`availability` masks them out of the loss instead.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

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


def availability(observed_actions: Iterable[str], tasks: Sequence[Task] = TASKS) -> torch.Tensor:
    """Which tasks a dataset really labels, from its manifest's `observed_actions`.

    Returns:
        (K,) bool in `tasks` order; False tasks must be masked out of the loss.
    """
    observed = set(observed_actions)
    return torch.tensor([(t.observed_as or t.name) in observed for t in tasks], dtype=torch.bool)


def label_tensor(
    columns: Mapping[str, Any] | pd.DataFrame, tasks: Sequence[Task] = TASKS, available: torch.Tensor | None = None
) -> torch.Tensor:
    """Training targets from impression columns (a DataFrame or a name -> array mapping).

    Binary tasks read their 0/1 column; continuous `dwell_time` becomes log1p(max(seconds, 0)). Columns of
    unavailable tasks may be absent and read as zeros (they are masked out anyway).

    Args:
        columns: N rows; `columns[name]` array-like of length N.
        available: (K,) bool from `availability`; None = every task must have its column.

    Returns:
        (N, K) float32.

    Raises:
        KeyError: an available task's column is missing.
    """
    names = list(columns)  # a DataFrame iterates its column names too
    n = len(columns[names[0]]) if names else 0
    out = torch.zeros(n, len(tasks), dtype=torch.float32)
    for k, t in enumerate(tasks):
        if t.name not in columns:
            if available is None or bool(available[k]):
                raise KeyError(f"label column {t.name!r} missing (task is available)")
            continue
        values = torch.from_numpy(np.asarray(columns[t.name], dtype=np.float32).copy())
        out[:, k] = torch.log1p(values.clamp(min=0)) if t.kind is TaskKind.CONTINUOUS else values
    return out


def loss_mask(available: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Where the loss is taken: available tasks of valid (non-padding) candidates.

    Args:
        available: (K,) bool from `availability`.
        valid: (...) bool, e.g. (B, C) candidate validity.

    Returns:
        (..., K) bool.
    """
    return valid.unsqueeze(-1) & available.to(valid.device)


def ranker_loss(
    outputs: torch.Tensor,
    labels: torch.Tensor,
    mask: torch.Tensor,
    tasks: Sequence[Task] = TASKS,
    huber_delta: float = 1.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Multi-task loss: binary cross-entropy on each binary task's logit, Huber on each continuous task (log1p
    seconds for dwell_time; Huber because dwell has a long tail), each averaged over its unmasked entries and
    weighted by `loss_weight`.

    Masked entries contribute exactly zero loss and zero gradient, even where the labels are NaN. A task with no
    unmasked entry contributes 0.

    Args:
        outputs: (..., K) head outputs (`RankerOutput.logits`): logits for binary tasks, values for continuous ones.
        labels: (..., K) float targets (`label_tensor`).
        mask: broadcastable to (..., K) bool (`loss_mask`).

    Returns:
        The total loss () and a {task name: () per-task mean loss, detached} dict for logging.
    """
    mask = torch.broadcast_to(mask, outputs.shape)
    safe = torch.where(mask, labels, torch.zeros_like(labels))  # NaN labels under the mask never reach a gradient
    total = outputs.new_zeros(())
    per_task: dict[str, torch.Tensor] = {}
    for k, t in enumerate(tasks):
        m = mask[..., k]
        if t.kind is TaskKind.BINARY:
            elem = F.binary_cross_entropy_with_logits(outputs[..., k], safe[..., k], reduction="none")
        else:
            elem = F.huber_loss(outputs[..., k], safe[..., k], reduction="none", delta=huber_delta)
        mean = torch.where(m, elem, torch.zeros_like(elem)).sum() / m.sum().clamp(min=1)
        per_task[t.name] = mean.detach()
        total = total + t.loss_weight * mean
    return total, per_task


def pairwise_loss(
    outputs: torch.Tensor,
    labels: torch.Tensor,
    mask: torch.Tensor,
    tasks: Sequence[Task] = TASKS,
    keys: torch.Tensor | None = None,
) -> torch.Tensor:
    """Within-group ranking loss: for each binary task, logistic loss softplus(-(z_i - z_j)) over every pair of one
    group's candidates with label_i = 1 > label_j = 0, averaged over all pairs of the batch, tasks weighted by
    `loss_weight`. It trains what GAUC measures (the order of one user's items), which the pointwise loss only
    reaches through calibration across users.

    Args:
        outputs: (B, C, K) logits; labels (B, C, K); mask broadcastable to (B, C, K) (`loss_mask`).
        keys: (B,) a key per group (e.g. its user id): pairs then span every group of the batch with the same key,
            not only one group. A candidate's logit depends only on its own group's user state, so a pair of two
            groups compares two (user state, item) scores of one user, as GAUC does across a user's requests.

    Returns:
        () loss; 0 when the batch has no such pair.
    """
    mask = torch.broadcast_to(mask, outputs.shape)
    b, c, k_all = outputs.shape
    if keys is not None:  # one flat group of the batch's N real candidates; a pair needs the same key
        real = mask.reshape(b * c, k_all).any(1)
        outputs, labels, mask = (x.reshape(b * c, k_all)[real].unsqueeze(0) for x in (outputs, labels, mask))
        key = keys.repeat_interleave(c)[real]
        same = (key.unsqueeze(1) == key.unsqueeze(0)).unsqueeze(0)  # (1, N, N)
    total = outputs.new_zeros(())
    for k, t in enumerate(tasks):
        if t.kind is not TaskKind.BINARY:
            continue
        m = mask[..., k]
        pos = m & (labels[..., k] > 0.5)  # (B, C)
        neg = m & (labels[..., k] <= 0.5)
        pairs = pos.unsqueeze(2) & neg.unsqueeze(1)  # (B, C, C): i positive, j negative
        if keys is not None:
            pairs = pairs & same
        n = pairs.sum()
        if n == 0:
            continue
        z = outputs[..., k]
        diff = z.unsqueeze(2) - z.unsqueeze(1)  # (B, C, C) z_i - z_j
        loss = torch.where(pairs, F.softplus(-diff), torch.zeros_like(diff)).sum() / n
        total = total + t.loss_weight * loss
    return total


def blend_loss(
    probs: torch.Tensor,
    multipliers: torch.Tensor,
    labels: torch.Tensor,
    mask: torch.Tensor,
    tasks: Sequence[Task] = TASKS,
) -> torch.Tensor:
    """Pairwise loss that trains the combination module (`BlendCombiner`) to order a request's candidates by their
    observed engagement value.

    Score s_c = sum_k m_k w_k p_k over the binary tasks (w = Task.blend_weight, p detached: the per-task heads learn
    from `ranker_loss` only); gain g_c = sum_k w_k y_k over the same tasks where labelled. For every pair of valid
    candidates of one request with g_i > g_j the loss is softplus(s_j - s_i), averaged over pairs (0 without any).

    Args:
        probs: (B, C, K) predicted probabilities (`Ranker.predictions`).
        multipliers: (B, K) from the combination module.
        labels: (B, C, K) targets; mask: (B, C, K) bool (`loss_mask`).
    """
    binary = torch.tensor([t.kind is TaskKind.BINARY for t in tasks], device=probs.device)
    w = torch.tensor([t.blend_weight for t in tasks], dtype=probs.dtype, device=probs.device) * binary
    labelled = mask & binary
    score = (probs.detach() * labelled * (w * multipliers).unsqueeze(1)).sum(-1)  # (B, C)
    gain = (torch.where(labelled, labels, torch.zeros_like(labels)) * w).sum(-1)  # (B, C)
    valid = mask.any(-1)  # (B, C)
    pairs = (gain.unsqueeze(2) > gain.unsqueeze(1)) & valid.unsqueeze(2) & valid.unsqueeze(1)  # (B, C, C): i over j
    if not pairs.any():
        return score.sum() * 0.0
    diff = score.unsqueeze(2) - score.unsqueeze(1)  # s_i - s_j
    return F.softplus(-diff)[pairs].mean()
