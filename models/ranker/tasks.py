"""Labels, availability and losses over the ranker's tasks (the task table itself: models/ranker/task_table.py).

Datasets record different subsets of the vocabulary (`Manifest.observed_actions`: KuaiRand has no report, MovieLens
only click/like/not_interested). Unrecorded actions are all-zero columns, which would teach a head "never happens";
`availability` masks them out of the loss instead.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from models.ranker.task_table import TASKS, Task, TaskKind


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
