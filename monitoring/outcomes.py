"""Outcomes of the served items: what users did with what they were shown, keyed by (request_id, post_id).

The exposure log records what was served, not what happened next. Two sources:

- a file (`read_outcomes`): JSONL or parquet with request_id, post_id and one 0/1 column per observed action (any
  subset of core.actions); a served item with no row had no action;
- the synthetic world's ground truth (`simulate_outcomes`): each served item's actions are drawn, seeded, from the
  truth model of features/synth.py (relevance, click logit, position bias, the click funnel, negative actions), so a
  monitor run on synthetic data has outcomes to score.

Every `OutcomeSet` says which one it holds (`source` and `detail`), and the monitor's result repeats it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd

from core.actions import ACTION_NAMES, DWELL_TIME, prob_column
from core.errors import UserError

if TYPE_CHECKING:
    from features.synth import World

OutcomeSource = Literal["file", "simulated", "none"]
KEYS = ("request_id", "post_id")


@dataclass
class OutcomeSet:
    """Outcomes joined to served items: one row per served item (request_id, post_id, position, ...) plus one int8
    column per observed action; `actions` lists those columns."""

    frame: pd.DataFrame
    source: OutcomeSource
    detail: str
    actions: tuple[str, ...] = ()
    n_served: int = 0
    n_with_outcome: int = 0  # served items that had a row in the outcomes (file) or in the synthetic world

    def describe(self) -> dict[str, object]:
        return {
            "source": self.source,
            "detail": self.detail,
            "actions": list(self.actions),
            "n_served": self.n_served,
            "n_with_outcome": self.n_with_outcome,
        }


def _key_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """request_id as text and post_id as int64, so a JSON log and a parquet file join on the same keys."""
    out = frame.copy()
    out["request_id"] = out["request_id"].map(lambda v: None if v is None else str(v)).astype("string")
    out["post_id"] = pd.to_numeric(out["post_id"], errors="coerce").astype("Int64")
    return out


def read_outcomes(path: Path) -> pd.DataFrame:
    """An outcomes file (.parquet, or JSONL: one object per line) as request_id, post_id and 0/1 action columns.

    Raises:
        UserError: a missing or unreadable file, a missing key column, no action column, a malformed line.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: outcomes file not found")
    if path.suffix == ".parquet":
        try:
            frame = pd.read_parquet(path)
        except Exception as err:  # pyarrow raises several types for a bad file
            raise UserError(f"{path}: not a readable parquet file: {str(err).splitlines()[0]}") from None
    else:
        rows = []
        with open(path, "rb") as handle:
            for n, raw in enumerate(handle, 1):
                if not raw.strip():
                    continue
                try:
                    row = json.loads(raw)
                except ValueError:
                    raise UserError(f"{path}: line {n} is not JSON") from None
                if not isinstance(row, dict):
                    raise UserError(f"{path}: line {n} is not a JSON object")
                rows.append(row)
        frame = pd.DataFrame(rows)
    missing = [k for k in KEYS if k not in frame.columns]
    if missing:
        raise UserError(f"{path}: outcomes need columns {list(KEYS)}; missing {missing}")
    actions = [a for a in ACTION_NAMES if a in frame.columns]
    if not actions:
        raise UserError(f"{path}: no action column (expected some of {', '.join(ACTION_NAMES)})")
    out = _key_frame(frame[[*KEYS, *actions]])
    for a in actions:
        values = pd.to_numeric(out[a].map(lambda v: float(v) if isinstance(v, bool) else v), errors="coerce")
        out[a] = (values.fillna(0) > 0).astype("int8")
    out = out.dropna(subset=list(KEYS))
    # The same item reported twice (an action per event): it happened if any row says so.
    return out.groupby(list(KEYS), as_index=False, sort=False)[actions].max()


def join_outcomes(served: pd.DataFrame, outcomes: pd.DataFrame, detail: str) -> OutcomeSet:
    """Served items (request_id, post_id, ...) left-joined with an outcomes frame; no row = no action."""
    actions = tuple(a for a in ACTION_NAMES if a in outcomes.columns)
    items = _key_frame(served)
    found = outcomes.assign(_found=1)
    joined = items.merge(found[[*KEYS, *actions, "_found"]], on=list(KEYS), how="left")
    n_found = int(joined["_found"].notna().sum())
    for a in actions:
        joined[a] = joined[a].fillna(0).astype("int8")
    return OutcomeSet(
        frame=joined.drop(columns="_found"),
        source="file",
        detail=detail,
        actions=actions,
        n_served=len(items),
        n_with_outcome=n_found,
    )


def _served_times(items: pd.DataFrame, world: World, as_of: datetime | None) -> tuple[np.ndarray, str]:
    """(each item's synthetic time in seconds from the world's epoch, how it was chosen): `as_of`, else the row's
    ts, or the world's end where ts lies outside the synthetic days."""
    from features.synth import DAY_S, EPOCH

    horizon_end = world.cfg.days * DAY_S
    if as_of is not None:
        return np.full(
            len(items), int((as_of - EPOCH).total_seconds()), dtype=np.int64
        ), f"at as_of {as_of.isoformat()}"
    ts = pd.to_numeric(items.get("ts", pd.Series(np.nan, index=items.index)), errors="coerce").to_numpy(float)
    rel_s = ts - EPOCH.timestamp()
    inside = np.isfinite(rel_s) & (rel_s >= 0) & (rel_s <= horizon_end)
    t = np.where(inside, np.nan_to_num(rel_s), horizon_end).astype(np.int64)
    return t, "at each request's ts" if inside.all() else "at request ts, or the world's end where ts is outside it"


def simulate_outcomes(served: pd.DataFrame, world: object, seed: int = 0, as_of: datetime | None = None) -> OutcomeSet:
    """Draws the outcomes of served items from a synthetic world's truth model (features/synth.py), seeded.

    Args:
        served: one row per served item with request_id, user_id, post_id, position and ts (epoch seconds).
        world: a features.synth.World (features.oracle.load_world rebuilds it from a dataset's manifest).
        seed: same served frame and seed -> the same outcomes.
        as_of: the synthetic time the requests were served at (a service run with a fixed `as_of`); None = each
            row's ts, or the end of the synthetic days when ts lies outside them (a wall-clock log of a replayed
            world: a post would otherwise look months old and never be clicked).

    Returns:
        An OutcomeSet with every action, dwell_time and the true probabilities p_<action>; items whose user or post
        is not in the world get no outcome row (counted in n_with_outcome) and all-zero actions.
    """
    from features.synth import World, action_probabilities, draw_outcomes, relevance

    assert isinstance(world, World)
    items = _key_frame(served).reset_index(drop=True)
    for col in ("user_id", "position"):
        if col not in items.columns:
            raise UserError(f"served items: column {col!r} is missing (needed to simulate outcomes)")
    n = len(items)
    user = pd.to_numeric(items["user_id"], errors="coerce").fillna(0).to_numpy(np.int64) - 1
    post = items["post_id"].fillna(0).to_numpy(np.int64) - 1
    position = pd.to_numeric(items["position"], errors="coerce").fillna(0).to_numpy(np.int64)
    known = (user >= 0) & (user < len(world.user_act)) & (post >= 0) & (post < len(world.post_author))
    t, when = _served_times(items, world, as_of)
    u, p = user[known], post[known]
    tk = np.maximum(t[known], world.post_created_s[p])  # a post is never seen before it exists
    keys = (u << 32) | world.post_author[p]
    pos = np.clip(np.searchsorted(world.follow_keys, keys), 0, max(len(world.follow_keys) - 1, 0))
    in_network = (world.follow_keys[pos] == keys) if len(world.follow_keys) else np.zeros(len(u), bool)
    rel = relevance(world, u, p, tk, in_network.astype(np.float64))
    probs, given_click = action_probabilities(world, rel, p, tk, position[known], in_network)
    # The same draws as the synthetic log's (the funnel included), from this seed's own stream.
    rng = np.random.default_rng(np.random.SeedSequence([seed, 8]))
    flags, dwell_time = draw_outcomes(world, rng, rel, p, probs, given_click)

    out = items.copy()
    for name in ACTION_NAMES:
        column = np.zeros(n, dtype=np.int8)
        column[known] = flags[name]
        out[name] = column
        prob = np.full(n, np.nan)
        prob[known] = probs[name]
        out[prob_column(name)] = prob
    out[DWELL_TIME] = 0.0
    out.loc[known, DWELL_TIME] = dwell_time
    world_name = f"{world.cfg.scale}, seed {world.cfg.seed}"
    detail = f"simulated from the synthetic truth model ({world_name}), outcome seed {seed}, {when}"
    return OutcomeSet(
        frame=out,
        source="simulated",
        detail=detail,
        actions=ACTION_NAMES,
        n_served=n,
        n_with_outcome=int(known.sum()),
    )


def no_outcomes(served: pd.DataFrame) -> OutcomeSet:
    """The served items with no outcome columns: quality and target drift will say insufficient data."""
    return OutcomeSet(frame=_key_frame(served), source="none", detail="no outcomes given", n_served=len(served))
