"""Protocol A on KuaiRand: the split by the log's date, counters strictly before each impression, the peers' frozen
user side, no label of an impression (or of its request) in its own features, and the CLI end to end."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from cli.main import app
from core.errors import UserError
from features.importers.kuairand import import_kuairand
from models.ranker.kuairand import (
    COUNTED,
    LABELS,
    TEST_DAYS,
    build_protocol_frame,
    counts_before,
    history_before,
    previous_time,
)
from tests.features.test_import_kuairand import LOG, LOG_LINES, USER_LINES, USERS, VIDEO_LINES, VIDEOS

SHANGHAI = timedelta(hours=8)
N_USERS, N_VIDEOS = 30, 25


def _write(path: Path, lines: list[str]) -> None:
    path.write_text("".join(f"{line}\n" for line in lines))


def make_log(rng: np.random.Generator) -> list[str]:
    """A KuaiRand-format log over 2022-04-25..05-05: each user a few requests a day of 1-2 videos each, labels drawn
    at random; one request sits at 23:40 Shanghai time while the log dates it the next day (as the real log does)."""
    lines = [LOG_LINES[0]]
    for day in range(11):
        date = datetime(2022, 4, 25, tzinfo=UTC) + timedelta(days=day)
        for user in range(N_USERS):
            for _ in range(int(rng.integers(1, 4))):
                local = date + timedelta(seconds=int(rng.integers(0, 86_000)))
                ms = int((local - SHANGHAI).timestamp() * 1000)
                for video in rng.choice(N_VIDEOS, int(rng.integers(1, 3)), replace=False):
                    click, long_view, like = (int(rng.random() < p) for p in (0.4, 0.3, 0.05))
                    lines.append(
                        f"{user},{video},{local:%Y%m%d},{local.hour * 100},{ms},{click},{like},0,0,0,0,{long_view},"
                        f"{1000 * (1 + click)},20000,0,0,0,0,{int(rng.integers(0, 3))}"
                    )
    late = datetime(2022, 5, 3, 23, 40, tzinfo=UTC)  # Shanghai 23:40 on 05-03, dated 05-04 by the log
    ms = int((late - SHANGHAI).timestamp() * 1000)
    lines.append(f"0,1,20220504,0,{ms},1,0,0,0,0,0,1,5000,20000,0,0,0,0,1")
    return lines


def make_source(root: Path) -> Path:
    """The hand-written importer files' users and videos, copied to N_USERS and N_VIDEOS ids."""
    rng = np.random.default_rng(7)
    src = root / "kuairand-pure"
    src.mkdir(parents=True)
    users = [USER_LINES[0]] + [f"{u}," + USER_LINES[1 + u % 3].split(",", 1)[1] for u in range(N_USERS)]
    videos = [VIDEO_LINES[0]] + [f"{v}," + VIDEO_LINES[1 + v % 4].split(",", 1)[1] for v in range(N_VIDEOS)]
    _write(src / USERS, users)
    _write(src / VIDEOS, videos)
    _write(src / LOG, make_log(rng))
    return src


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("kuairand-protocol")
    import_kuairand(make_source(root), root / "data")
    return root / "data"


@pytest.fixture(scope="module")
def frozen(data: Path) -> pd.DataFrame:
    return build_protocol_frame(data, max_history=8).frame


def test_split_follows_the_logs_date_not_the_timestamp(data: Path) -> None:
    pf = build_protocol_frame(data, max_history=8)
    imp = pd.read_parquet(data / "impressions").sort_values("impression_id")
    date = imp["x_date"].to_numpy()
    assert (pf.train == (date <= 20220502)).all()
    assert (pf.valid == (date == 20220503)).all()
    assert (pf.test == (date >= 20220504)).all()
    late = pf.frame["event_timestamp"] == pd.Timestamp("2022-05-03 15:40", tz="UTC")
    assert late.sum() == 1 and pf.test[late.to_numpy()].all()  # 05-03 by its timestamp, 05-04 by its date


def test_counters_equal_a_brute_force_count_strictly_before_the_impression(data: Path) -> None:
    pf = build_protocol_frame(data, max_history=8)
    f, ts = pf.frame, pf.frame["event_timestamp"]
    prior = {a: f.loc[pf.train, a].mean() for a in LABELS}  # the smoothing prior: the training days' label means
    for i in np.random.default_rng(0).choice(len(f), 60, replace=False):
        row = f.iloc[i]
        for key, column in (("post", "post_id"), ("author", "author_id")):
            earlier = f[(f[column] == row[column]) & (ts < row["event_timestamp"])]
            assert row[f"x_{key}_n"] == len(earlier)
            for action in COUNTED[key]:
                expected = (earlier[action].sum() + 20 * prior[action]) / (len(earlier) + 20)
                assert row[f"x_{key}_{action}_rate"] == pytest.approx(expected, rel=1e-9)


def test_frozen_user_side_sees_nothing_of_the_test_days_or_of_the_impressions_own_day(
    frozen: pd.DataFrame, data: Path
) -> None:
    pf = build_protocol_frame(data, max_history=8)
    f = pf.frame
    test_start = pd.Timestamp(TEST_DAYS[0], tz="UTC") - SHANGHAI
    for i in np.flatnonzero(pf.test)[:50]:
        row = f.iloc[i]
        before = f[(f["user_id"] == row["user_id"]) & (f["event_timestamp"] < test_start)]
        assert row["x_user_n"] == len(before)
        stamps = np.asarray(row["hist_timestamps"], dtype=np.int64)
        assert (stamps < test_start.value // 1_000_000).all()
        assert len(stamps) == min(len(before), 8)
    for i in np.flatnonzero(pf.valid)[:50]:
        row = f.iloc[i]
        day_start = pd.Timestamp("2022-05-03", tz="UTC") - SHANGHAI
        assert row["x_user_n"] == ((f["user_id"] == row["user_id"]) & (f["event_timestamp"] < day_start)).sum()


def test_no_feature_reads_the_labels_of_its_own_request(data: Path, tmp_path: Path) -> None:
    """Flipping every label of the test rows changes none of their features (their own request included)."""
    flipped = tmp_path / "flipped"
    shutil.copytree(data, flipped)
    part = next((flipped / "impressions").glob("*.parquet"))
    imp = pd.read_parquet(part)
    test = imp["x_date"] >= 20220504
    for action in (*LABELS, "profile_click"):
        imp.loc[test, action] = 1 - imp.loc[test, action]
    imp.to_parquet(part)
    a = build_protocol_frame(data, max_history=8, user_history="realtime", user_counters="realtime")
    b = build_protocol_frame(flipped, max_history=8, user_history="realtime", user_counters="realtime")
    features = [c for c in a.frame.columns if c.startswith("x_") and c != "x_date"]
    first_test = a.frame["event_timestamp"][a.test].min()
    same_time = (a.frame["event_timestamp"] <= first_test).to_numpy()  # nothing at or before the first test time
    pd.testing.assert_frame_equal(a.frame.loc[same_time, features], b.frame.loc[same_time, features])
    # and a flipped test row changes later rows' features (the counters do read the past)
    assert not a.frame[features].equals(b.frame[features])


def test_counting_helpers_on_known_values() -> None:
    keys = np.array([0, 0, 0, 1, 0])
    ts = np.array([10, 20, 20, 20, 30])
    labels = np.array([[1.0], [1.0], [0.0], [1.0], [1.0]])
    n, sums = counts_before(keys, ts, labels, ts)
    assert n.tolist() == [0, 1, 1, 0, 3]  # the two rows at t=20 do not see each other
    assert sums[:, 0].tolist() == [0, 1, 1, 0, 2]
    assert previous_time(keys, ts).tolist() == [-1, 10, 10, -1, 20]
    hist = history_before(keys, ts, ts, {"v": np.array([5, 6, 7, 8, 9])}, max_history=2)
    assert hist["v"].tolist() == [[0, 0], [5, 0], [5, 0], [0, 0], [6, 7]]
    assert hist["length"].tolist() == [0, 1, 1, 0, 2]


def _peer_file(folder: Path) -> None:
    targets = {
        name: {"auc": 0.6, "gauc": 0.55, "logloss": 0.6}
        for name in ("is_click", "long_view", "is_like", "is_follow", "is_comment", "is_forward", "is_hate")
    }
    (folder / "A_lr_s0.json").write_text(json.dumps({"model": "lr", "targets": targets}))


def test_cli_runs_the_protocol_and_writes_the_verdict(data: Path, tmp_path: Path) -> None:
    peers = tmp_path / "peers"
    peers.mkdir()
    _peer_file(peers)
    out = tmp_path / "report.json"
    args = ["evaluate", "ranker", "--protocol", "kuairand-a", "--data", str(data), "--seeds", "0", "--out", str(out)]
    args += ["--peers", str(peers), "--preset", "nano", "--set", "train.epochs=1"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["split"]["test"] == int(report["split"]["test"]) > 0
    assert set(report["verdict"]) == {f"{a}/{m}" for a in ("click", "dwell", "like") for m in ("auc", "gauc")}
    for cell in report["verdict"].values():
        assert cell["met"] == (cell["ours"] >= cell["peer"])
    run = report["runs"][0]
    assert 0.0 <= run["test"]["click"]["auc"] <= 1.0 and run["seconds"] > 0


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--protocol", "kuairand-b"], "--protocol: unknown 'kuairand-b'"),
        (["--protocol", "kuairand-a", "--seeds", "a,b"], "--seeds: not a comma-separated list"),
        (["--protocol", "kuairand-a", "--user-history", "live"], "--user-history: unknown 'live'"),
    ],
)
def test_bad_protocol_options_are_one_line_errors(
    data: Path, tmp_path: Path, run_cli: Callable[..., Any], extra: list[str], needle: str
) -> None:
    out = tmp_path / "report.json"
    result = run_cli("evaluate", "ranker", "--data", str(data), "--out", str(out), *extra)
    assert needle in result.error_line()
    assert not out.exists()


def test_a_data_set_that_is_not_kuairand_is_refused(tmp_path: Path, run_cli: Callable[..., Any]) -> None:
    (tmp_path / "manifest.json").write_text(json.dumps({"dataset": "movielens"}))
    result = run_cli("evaluate", "ranker", "--protocol", "kuairand-a", "--data", str(tmp_path))
    assert "is not a KuaiRand import" in result.error_line()


def test_a_frozen_user_day_is_one_request_group_with_one_user_state(data: Path) -> None:
    frozen = build_protocol_frame(data, max_history=8, group_user_day=True).frame
    groups = frozen.groupby("request_id")
    assert (groups["user_id"].nunique() == 1).all()
    for column in ("x_user_n", "x_user_click_rate", "user_activity"):
        assert (groups[column].nunique() == 1).all(), column
    assert (groups["hist_post_ids"].agg(lambda v: len({tuple(x) for x in v})) == 1).all()
    assert frozen["request_id"].nunique() < frozen["x_request_id"].nunique()
    with pytest.raises(UserError, match="group_user_day"):
        build_protocol_frame(data, user_history="realtime", group_user_day=True)


def test_extended_counters_add_the_tab_topic_window_and_watch_columns(data: Path) -> None:
    pf = build_protocol_frame(data, max_history=8, counters="extended")
    assert {"x_post_tab_n", "x_post_24h_click_rate", "x_user_topic_like_rate", "x_post_watch_ratio"} <= set(pf.dense)
    f, ts = pf.frame, pf.frame["event_timestamp"]
    row = f.iloc[len(f) // 2]
    day = pd.Timedelta(days=1)
    window = f[(f.post_id == row.post_id) & (ts < row.event_timestamp) & (ts >= row.event_timestamp - day)]
    assert row["x_post_24h_n"] == len(window)
    same_tab = f[(f.post_id == row.post_id) & (f.surface == row.surface) & (ts < row.event_timestamp)]
    assert row["x_post_tab_n"] == len(same_tab)
