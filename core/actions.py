"""The one action vocabulary shared by data, features, models, serving and monitoring."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Polarity(StrEnum):
    """Whether an action is something the product wants more of (positive) or less of (negative)."""

    POSITIVE = "positive"
    NEGATIVE = "negative"


@dataclass(frozen=True)
class Action:
    """One binary engagement outcome of an impression.

    Attributes:
        name: column name in the impressions table and head name in the ranker.
        polarity: positive actions get non-negative blend weights, negative ones non-positive.
        bit: position in the history action bitmask (`1 << bit`).
    """

    name: str
    polarity: Polarity
    bit: int


# Order is part of the schema: it fixes the bitmask bits and the ranker head order. Append only.
ACTIONS: tuple[Action, ...] = (
    Action("click", Polarity.POSITIVE, 0),
    Action("like", Polarity.POSITIVE, 1),
    Action("reply", Polarity.POSITIVE, 2),
    Action("repost", Polarity.POSITIVE, 3),
    Action("quote", Polarity.POSITIVE, 4),
    Action("share", Polarity.POSITIVE, 5),
    Action("profile_click", Polarity.POSITIVE, 6),
    Action("follow_author", Polarity.POSITIVE, 7),
    Action("dwell", Polarity.POSITIVE, 8),
    Action("not_interested", Polarity.NEGATIVE, 9),
    Action("block_author", Polarity.NEGATIVE, 10),
    Action("mute_author", Polarity.NEGATIVE, 11),
    Action("report", Polarity.NEGATIVE, 12),
)

ACTION_NAMES: tuple[str, ...] = tuple(a.name for a in ACTIONS)
POSITIVE_ACTIONS: tuple[str, ...] = tuple(a.name for a in ACTIONS if a.polarity is Polarity.POSITIVE)
NEGATIVE_ACTIONS: tuple[str, ...] = tuple(a.name for a in ACTIONS if a.polarity is Polarity.NEGATIVE)
BY_NAME: dict[str, Action] = {a.name: a for a in ACTIONS}

# The one continuous outcome: seconds spent on the item (0 when there was no dwell).
DWELL_TIME = "dwell_time"


def prob_column(action: str) -> str:
    """Name of the column holding the ground-truth probability of `action` (synthetic data only)."""
    return f"p_{action}"


def action_mask(flags: dict[str, bool]) -> int:
    """Packs a {action: happened} mapping into the history bitmask.

    Raises:
        KeyError: an action name that is not in the vocabulary.
    """
    mask = 0
    for name, happened in flags.items():
        if happened:
            mask |= 1 << BY_NAME[name].bit
    return mask
