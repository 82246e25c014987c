"""The exposure log and its outcomes as canonical impressions (monitoring/served_impressions.py), merged into a base
dataset (features/merge.py): fast, on the tiny dataset, with the log written by serving's own ExposureLog."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest

from core.schema import Manifest, read_table
from features.windows import training_window
from monitoring.served_impressions import SERVED_ID_BASE
from serving.exposure import ExposureLog, ExposureSettings
from tests.features.tiny import write_tiny

AS_OF = "2026-01-04T00:00:00+00:00"  # the end of the tiny world's newest day
# request id -> (user, surface, served posts), best first
SERVED = {"r1": (1, 0, [101, 100]), "r2": (2, 1, [100]), "r3": (1, 0, [100, 101])}
OUTCOMES = [
    {"request_id": "r1", "post_id": 101, "click": 1, "like": 1},
    {"request_id": "r1", "post_id": 100, "click": 0, "like": 0},
    {"request_id": "r2", "post_id": 100, "click": 1, "like": 0},
    {"request_id": "r3", "post_id": 100, "click": 0, "like": 0},
    {"request_id": "r3", "post_id": 101, "click": 0, "like": 1},
]


def _log(path: Path, served: dict[str, tuple[int, int, list[int]]]) -> Path:
    log = ExposureLog(ExposureSettings(path=path / "exposure.jsonl"))
    for request_id, (user, surface, posts) in served.items():
        items = [{"post_id": p, "position": n, "score": 1.0 - n, "source": "ann", "actions": {}} for n, p in
                 enumerate(posts)]  # fmt: skip
        record = {"kind": "exposure", "endpoint": "recommend", "request_id": request_id, "ts": 1.767e9,
                  "user_id": user, "surface": surface, "variant": "ranker", "items": items, "features": {}}  # fmt: skip
        log.log(record)
        log.log({**record, "kind": "shadow", "request_id": f"{request_id}-shadow"})  # not shown: skipped
    assert log.flush()
    log.close()
    return path


@pytest.fixture
def world(tmp_path: Path) -> dict[str, Path]:
    outcomes = tmp_path / "outcomes.jsonl"
    outcomes.write_text("".join(json.dumps(o) + "\n" for o in OUTCOMES))
    return {"tiny": write_tiny(tmp_path / "tiny"), "logs": _log(tmp_path / "logs", SERVED), "outcomes": outcomes}


def _exposures(run_cli, world: dict[str, Path], out: Path, *extra: str):
    return run_cli("data", "exposures", "--exposure", str(world["logs"]), "--data", str(world["tiny"]),
                   "--outcomes", str(world["outcomes"]), "--as-of", AS_OF, "--out", str(out), *extra)  # fmt: skip


def test_served_items_become_impressions_with_their_outcomes(world: dict[str, Path], tmp_path: Path, run_cli) -> None:
    out = tmp_path / "served"
    assert _exposures(run_cli, world, out).code == 0
    manifest = Manifest.load(out)
    assert manifest.dataset == "served" and manifest.observed_actions == ("click", "like")
    imp = read_table(out, "impressions").to_pandas()
    assert len(imp) == 5 and imp["x_served_request"].nunique() == 3
    assert (imp["impression_id"] >= SERVED_ID_BASE).all() and (imp["request_id"] >= SERVED_ID_BASE).all()
    assert (imp["ts"] == pd.Timestamp(AS_OF)).all()
    got = imp.set_index(["x_served_request", "post_id"])
    for o in OUTCOMES:
        row = got.loc[(o["request_id"], o["post_id"])]
        assert (row["click"], row["like"], row["share"]) == (o["click"], o["like"], 0)
        user, surface, posts = SERVED[o["request_id"]]
        assert (row["user_id"], row["surface"], row["position"]) == (user, surface, posts.index(o["post_id"]))
        assert row["author_id"] == 10 and bool(row["in_network"]) == (user == 1)  # user 1 follows author 10


def test_each_record_is_served_at_its_own_as_of_unless_the_option_overrides(
    world: dict[str, Path], tmp_path: Path, run_cli
) -> None:
    log = world["logs"] / "exposure.jsonl"
    records = [json.loads(line) for line in log.read_text().splitlines()]
    at = {"r1": datetime(2026, 1, 3, 12, tzinfo=UTC), "r2": datetime(2026, 1, 3, 18, tzinfo=UTC)}  # r3: wall clock
    for r in records:
        if r["request_id"] in at:
            r["as_of"] = at[r["request_id"]].timestamp()
    log.write_text("".join(json.dumps(r) + "\n" for r in records))
    args = ["data", "exposures", "--exposure", str(world["logs"]), "--data", str(world["tiny"]),
            "--outcomes", str(world["outcomes"])]  # fmt: skip
    assert run_cli(*args, "--out", str(tmp_path / "own")).code == 0
    imp = read_table(tmp_path / "own", "impressions").to_pandas().groupby("x_served_request")["ts"].first()
    assert imp["r1"] == pd.Timestamp(at["r1"]) and imp["r2"] == pd.Timestamp(at["r2"])
    assert imp["r3"] == pd.Timestamp(1.767e9, unit="s", tz="UTC")  # no as_of: the record's ts
    assert run_cli(*args, "--as-of", AS_OF, "--out", str(tmp_path / "fixed")).code == 0
    fixed = read_table(tmp_path / "fixed", "impressions").to_pandas()
    assert (fixed["ts"] == pd.Timestamp(AS_OF)).all()  # the option still overrides every record


def test_merged_impressions_are_read_by_the_window_and_keep_the_base(
    world: dict[str, Path], tmp_path: Path, run_cli
) -> None:
    served, merged = tmp_path / "served", tmp_path / "merged"
    assert _exposures(run_cli, world, served).code == 0
    assert run_cli("data", "merge", str(world["tiny"]), str(served), "--out", str(merged)).code == 0
    manifest = Manifest.load(merged)
    assert manifest.dataset == "tiny" and manifest.rows["impressions"] == 10
    assert manifest.observed_actions == ("click", "like")  # what every part observes
    imp = read_table(merged, "impressions").to_pandas()
    assert imp["impression_id"].is_unique
    assert read_table(merged, "posts").equals(read_table(world["tiny"], "posts"))
    # the served day is the newest: the window now ends after it
    assert training_window(merged, days=1)[:2] == (datetime(2026, 1, 4, tzinfo=UTC), datetime(2026, 1, 5, tzinfo=UTC))
    again = run_cli("data", "merge", str(world["tiny"]), str(served), str(served), "--out", str(tmp_path / "twice"))
    assert "impression_id" in again.error_line() and not (tmp_path / "twice").exists()


def test_an_empty_log_gives_an_empty_dataset(world: dict[str, Path], tmp_path: Path, run_cli) -> None:
    (tmp_path / "empty").mkdir()
    out = tmp_path / "served"
    args = ["data", "exposures", "--exposure", str(tmp_path / "empty"), "--data", str(world["tiny"])]
    assert run_cli(*args, "--synthetic", str(world["tiny"]), "--out", str(out)).code == 0
    assert Manifest.load(out).rows["impressions"] == 0


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("line", ":2: not a JSON line"),
        ("post", ":1: post_id: 999 is not a post of"),
        ("user", ":1: user_id: 77 is not a user of"),
        ("position", ":1: items[0].position: must be an integer"),
        ("outcome", ":1: request r1 post 101: no outcome row in"),
        ("slot", ":1: items: position 0 is served twice in request r1"),
        ("request", ":5: request_id: r1 was logged before, at"),
        ("as_of", ":1: as_of: must be epoch seconds, got 'yesterday'"),
    ],
)
def test_bad_input_is_one_line_naming_the_place_and_writes_nothing(
    world: dict[str, Path], tmp_path: Path, run_cli, bad: str, message: str
) -> None:
    log = world["logs"] / "exposure.jsonl"
    lines = log.read_text().splitlines()
    first = json.loads(lines[0])
    if bad == "line":
        lines.insert(1, '{"kind": "exposure", "request_id": ')
    elif bad == "post":
        first["items"][0]["post_id"] = 999
    elif bad == "user":
        first["user_id"] = 77
    elif bad == "position":
        first["items"][0]["position"] = "top"
    elif bad == "slot":
        first["items"][1]["position"] = 0
    elif bad == "request":
        lines.insert(4, lines[0])  # the same request logged again (line 5)
    elif bad == "as_of":
        first["as_of"] = "yesterday"
    elif bad == "outcome":
        world["outcomes"].write_text("".join(json.dumps(o) + "\n" for o in OUTCOMES[1:]))
    if bad in ("post", "user", "position", "slot", "as_of"):
        lines[0] = json.dumps(first)
    log.write_text("\n".join(lines) + "\n")
    out = tmp_path / "served"
    line = _exposures(run_cli, world, out).error_line()
    assert str(log) in line and message in line, line
    assert not out.exists() and not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]
    if bad == "outcome":  # the monitor's reading, on request: no row, no action
        assert _exposures(run_cli, world, out, "--allow-missing").code == 0
        imp = read_table(out, "impressions").to_pandas().set_index(["x_served_request", "post_id"])
        assert imp.loc[("r1", 101), "click"] == 0
