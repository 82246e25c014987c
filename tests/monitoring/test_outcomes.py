"""Outcomes: read from a file (JSONL / parquet) and joined to served items, or simulated from the synthetic truth."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.actions import ACTION_NAMES
from core.errors import UserError
from features.synth import EPOCH, SynthConfig, World, build_world
from monitoring.outcomes import join_outcomes, read_outcomes, simulate_outcomes


@pytest.fixture(scope="module")
def world() -> World:
    return build_world(SynthConfig.for_scale("nano", seed=3))


def served_items(world: World, n_requests: int, slate: int = 10, seed: int = 0) -> pd.DataFrame:
    """Random slates of posts that exist 3 days into the world, served 3 days in."""
    rng = np.random.default_rng(seed)
    t = EPOCH + timedelta(days=3)
    alive = np.flatnonzero(world.post_created_s <= 3 * 86_400) + 1
    return pd.DataFrame(
        {
            "request_id": np.repeat([f"q{i}" for i in range(n_requests)], slate),
            "user_id": np.repeat(rng.integers(1, world.cfg.n_users + 1, n_requests), slate),
            "post_id": rng.choice(alive, n_requests * slate),
            "position": np.tile(np.arange(slate), n_requests),
            "ts": t.timestamp(),
        }
    )


def test_simulation_is_seeded_and_follows_the_truth(world: World) -> None:
    items = served_items(world, 2000)
    a = simulate_outcomes(items, world, seed=1)
    b = simulate_outcomes(items, world, seed=1)
    c = simulate_outcomes(items, world, seed=2)
    assert a.source == "simulated" and "truth model" in a.detail and "each request's ts" in a.detail
    assert a.actions == ACTION_NAMES and a.n_with_outcome == len(items)
    pd.testing.assert_frame_equal(a.frame, b.frame)
    assert not a.frame["click"].equals(c.frame["click"])
    # Drawn from the true probabilities: the rates match their means within sampling error (20k items).
    for action in ("click", "like", "dwell"):
        rate, p = a.frame[action].mean(), a.frame[f"p_{action}"].mean()
        assert abs(rate - p) < 4 * np.sqrt(p * (1 - p) / len(items)) + 1e-3, action
    # Position bias: the top slot is clicked more than the last.
    by_pos = a.frame.groupby("position")["p_click"].mean()
    assert by_pos[0] > by_pos[9]
    assert ((a.frame["dwell_time"] > 0) == (a.frame["click"].astype(bool) | a.frame["dwell"].astype(bool))).all()


def test_unknown_ids_get_no_outcome_and_wall_clock_ts_is_clamped(world: World) -> None:
    items = served_items(world, 50)
    items.loc[0, "post_id"] = 10**9
    items.loc[1, "user_id"] = 0
    items["ts"] = (EPOCH + timedelta(days=300)).timestamp()  # a wall-clock log of a replayed world
    res = simulate_outcomes(items, world, seed=0)
    assert res.n_with_outcome == len(items) - 2
    assert res.frame.loc[[0, 1], list(ACTION_NAMES)].to_numpy().sum() == 0
    assert "world's end" in res.detail
    assert res.frame["p_click"].iloc[2:].mean() > 0.01  # not the ~0 of a post 300 days old


def test_as_of_is_used_and_reported(world: World) -> None:
    items = served_items(world, 200)
    early = simulate_outcomes(items, world, seed=0, as_of=EPOCH + timedelta(days=3))
    late = simulate_outcomes(items, world, seed=0, as_of=EPOCH + timedelta(days=4))
    assert "as_of 2026-01-04" in early.detail
    assert late.frame["p_click"].mean() < early.frame["p_click"].mean()  # the same posts a day older


def test_read_jsonl_and_parquet_and_join(tmp_path: Path) -> None:
    lines = [
        {"request_id": "r1", "post_id": 10, "click": 1, "like": True},
        {"request_id": "r1", "post_id": 10, "click": 0, "like": False, "extra": "x"},  # same item again: any wins
        {"request_id": "r2", "post_id": 11, "click": 0},
    ]
    jsonl = tmp_path / "o.jsonl"
    jsonl.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    got = read_outcomes(jsonl)
    assert list(got.columns) == ["request_id", "post_id", "click", "like"]
    assert got.set_index(["request_id", "post_id"]).loc[("r1", 10)].tolist() == [1, 1]
    parquet = tmp_path / "o.parquet"
    pd.DataFrame(lines).drop(columns="extra").to_parquet(parquet)
    pd.testing.assert_frame_equal(read_outcomes(parquet), got)

    served = pd.DataFrame({"request_id": ["r1", "r1", "r2"], "post_id": [10, 12, 11], "position": [0, 1, 0]})
    joined = join_outcomes(served, got, "outcomes file o.jsonl")
    assert joined.source == "file" and joined.n_with_outcome == 2 and joined.actions == ("click", "like")
    assert joined.frame["click"].tolist() == [1, 0, 0] and joined.frame["like"].tolist() == [1, 0, 0]


@pytest.mark.parametrize(
    "content, match",
    [
        ('{"request_id": "r1", "click": 1}\n', "missing \\['post_id'\\]"),
        ('{"request_id": "r1", "post_id": 1}\n', "no action column"),
        ('{"request_id": "r1", "post_id": 1, "click": 1}\nnot json\n', "line 2 is not JSON"),
        ("[1, 2]\n", "line 1 is not a JSON object"),
    ],
)
def test_bad_outcome_files_are_user_errors(tmp_path: Path, content: str, match: str) -> None:
    path = tmp_path / "o.jsonl"
    path.write_text(content)
    with pytest.raises(UserError, match=match):
        read_outcomes(path)


def test_missing_outcome_file_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not found"):
        read_outcomes(tmp_path / "nope.jsonl")
