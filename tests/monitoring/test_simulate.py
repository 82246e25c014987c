"""Simulated production's world, requests, reference policies, true reward and day data (monitoring/simulate.py), and
`ember simulate`'s refusals. The served loop through the deployed flows: tests/flows/test_simulate.py."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.actions import ACTION_NAMES, prob_column
from core.errors import UserError
from core.schema import Manifest, read_table
from features.synth import DAY_S, EPOCH, SynthConfig, generate, relevance
from features.windows import data_end
from monitoring.simulate import (
    POLICIES,
    check_args,
    day_requests,
    exposure_records,
    extend_world,
    load_synthetic,
    parse_policies,
    reference_slates,
    served_frame,
    slate_outcomes,
    summary_line,
    synth_params,
    true_rewards,
    world_requests_per_day,
    write_day,
    write_results,
)

DAYS = 4  # nano


@pytest.fixture(scope="module")
def nano(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sim") / "synth"
    generate(SynthConfig.for_scale("nano", seed=7), out)
    return out


@pytest.fixture(scope="module")
def world(nano: Path):
    return load_synthetic(nano)


def test_extend_world_keeps_the_dataset_world_and_adds_each_simulated_days_posts(world) -> None:
    sim = extend_world(world, 3, seed=1)
    n = len(world.post_author)
    assert sim.cfg.days == DAYS + 3 and sim.cfg.drift == "none"
    for name in ("post_author", "post_created_s", "post_topic", "post_topic2", "post_weight", "post_media"):
        assert np.array_equal(getattr(sim, name)[:n], getattr(world, name)), name
    new = sim.post_created_s[n:]
    assert (new >= DAYS * DAY_S).all() and (new < (DAYS + 3) * DAY_S).all()
    assert (np.diff(sim.post_created_s) >= 0).all()  # ids still increase with creation time
    per_day = np.bincount(new // DAY_S - DAYS, minlength=3)
    expected = n / (DAYS + 2)
    assert (np.abs(per_day - expected) < 0.2 * expected).all(), per_day
    assert sim.is_author[sim.post_author[n:]].all()
    # the same truth for every (user, post) the dataset had
    users, posts = np.arange(50), np.arange(0, n, 97)
    t = np.full((50, len(posts)), DAYS * DAY_S + 3600)
    args = (users[:, None], posts[None, :], t, np.zeros(t.shape))
    assert np.array_equal(relevance(sim, *args), relevance(world, *args))
    assert np.array_equal(extend_world(world, 3, seed=1).post_topic, sim.post_topic)  # seeded


def test_topic_shift_changes_the_truth_from_its_onset_on(world) -> None:
    calm = extend_world(world, 3, seed=1)
    shifted = extend_world(world, 3, "topic_shift", drift_day=2, seed=1)
    onset = (DAYS + 1) * DAY_S  # the start of simulated day 2
    assert shifted.cfg.drift == "topic_shift" and shifted.onset_s == onset
    n, k = len(world.post_author), world.cfg.n_topics
    users = np.arange(len(world.user_act))[:, None]
    posts = np.arange(0, len(calm.post_author), 13)[None, :]
    zeros = np.zeros((users.shape[0], posts.shape[1]))
    before, after = np.full(zeros.shape, onset - 60), np.full(zeros.shape, onset + 60)
    # posts created before the onset keep their topics: the truth differs only from the onset on
    early = shifted.post_created_s < onset
    assert np.array_equal(shifted.post_topic[early], calm.post_topic[calm.post_created_s < onset])
    old = posts[:, posts[0] < n]
    z = zeros[:, : old.shape[1]]
    before_old, after_old = before[:, : old.shape[1]], after[:, : old.shape[1]]
    assert np.allclose(relevance(shifted, users, old, before_old, z), relevance(calm, users, old, before_old, z),
                       atol=1e-6)  # fmt: skip
    assert not np.allclose(relevance(shifted, users, old, after_old, z), relevance(calm, users, old, after_old, z),
                           atol=1e-6)  # fmt: skip
    # the last topic gains: more of the new posts, and more relevance of its posts for the users
    late = shifted.post_created_s >= onset
    assert (shifted.post_topic[late] == k - 1).mean() > 0.4 > (calm.post_topic[late] == k - 1).mean()
    last = np.flatnonzero(world.post_topic == k - 1)[None, :20]
    z = np.zeros((users.shape[0], 20))
    gain = relevance(shifted, users, last, after[:, :20], z) - relevance(calm, users, last, after[:, :20], z)
    assert gain.mean() > 0.3


def test_requests_come_from_users_in_proportion_to_their_activity(nano: Path, world) -> None:
    sim = extend_world(world, 2, seed=0)
    logged = read_table(nano, "impressions", columns=["request_id"]).column("request_id").to_numpy()
    assert abs(world_requests_per_day(world) - len(np.unique(logged)) / DAYS) < 0.05 * world_requests_per_day(world)
    requests = day_requests(sim, DAYS, 30_000, seed=3)
    assert requests.equals(day_requests(sim, DAYS, 30_000, seed=3))
    assert not requests.user_id.equals(day_requests(sim, DAYS, 30_000, seed=4).user_id)
    t = requests.ts.to_numpy() - EPOCH.timestamp()
    assert (t >= DAYS * DAY_S).all() and (t < (DAYS + 1) * DAY_S).all() and (np.diff(t) >= 0).all()
    assert requests.request_id.is_unique and requests.request_id.str.startswith(f"sim-d{DAYS}-").all()
    counts = np.bincount(requests.user_id - 1, minlength=len(sim.user_act))
    share = counts / counts.sum()
    expected = sim.user_act / sim.user_act.sum()
    assert np.corrcoef(share, expected)[0, 1] > 0.95
    assert np.abs(share - expected).sum() < 0.1


def test_the_oracle_earns_the_most_true_reward_and_random_the_least_every_day(world) -> None:
    sim = extend_world(world, 3, seed=0)
    for day in range(DAYS, DAYS + 3):
        requests = day_requests(sim, day, 40, seed=0)
        reward = {}
        for policy in ("oracle", "popular", "random"):
            slates = reference_slates(sim, requests, policy, 10, seed=0)
            assert all(len(s) == 10 and len(set(s)) == 10 for s in slates)
            items = slate_outcomes(sim, served_frame(requests, slates), seed=day)
            created = sim.post_created_s[items.post_id - 1]
            assert (created < day * DAY_S).all() and (created >= day * DAY_S - 2 * DAY_S).all()  # the 48 h pool
            assert (sim.post_author[items.post_id - 1] != items.user_id - 1).all()  # never the user's own posts
            reward[policy] = true_rewards(items, requests)
        assert (reward["oracle"] >= reward["random"]).all()
        assert reward["oracle"].mean() > reward["popular"].mean() > reward["random"].mean(), {
            p: r.mean() for p, r in reward.items()
        }


def test_true_reward_is_the_blend_of_the_truths_probabilities_with_position(world) -> None:
    from models.ranker.task_table import TASKS, TaskKind

    sim = extend_world(world, 1, seed=0)
    requests = day_requests(sim, DAYS, 3, seed=0)
    slates = reference_slates(sim, requests, "random", 5, seed=0)
    items = slate_outcomes(sim, served_frame(requests, slates), seed=0)
    weights = {t.name: t.blend_weight for t in TASKS if t.kind is TaskKind.BINARY}
    blend = sum(w * items[prob_column(a)] for a, w in weights.items())
    assert np.allclose(items.true_reward, blend)
    assert np.allclose(true_rewards(items, requests), items.groupby("request_id", sort=False).true_reward.sum())
    # the same post one slot lower is clicked less often
    lower = served_frame(requests.iloc[:1], [[slates[0][0]] * 1]).assign(position=4)
    top = served_frame(requests.iloc[:1], [[slates[0][0]]])
    assert slate_outcomes(sim, lower, 0)[prob_column("click")][0] < slate_outcomes(sim, top, 0)[prob_column("click")][0]


def test_a_served_day_becomes_the_next_days_impressions_with_the_drawn_outcomes(nano: Path, world, tmp_path: Path
                                                                                ) -> None:  # fmt: skip
    from monitoring.replay import write_records
    from monitoring.served_impressions import SERVED_ID_BASE, _hash_id

    data = tmp_path / "synth"
    shutil.copytree(nano, data)
    sim = extend_world(world, 2, seed=0)
    requests = day_requests(sim, DAYS, 25, seed=0)
    slates = reference_slates(sim, requests, "popular", 10, seed=0)
    items = [[{"post_id": p, "score": 1.0 - n / 10, "source": "popular", "actions": {}} for n, p in enumerate(s)]
             for s in slates]  # fmt: skip
    log = write_records(exposure_records(requests, items, "ranker", "v1"), tmp_path / "logs" / "day-01.jsonl")
    before = Manifest.load(data)
    info = write_day(data, sim, log, data, (DAYS + 1) * DAY_S, seed=11, work=tmp_path / "work")
    assert info["rows"] == 250 and info["requests"] == 25

    after = Manifest.load(data)
    assert after.rows["impressions"] == before.rows["impressions"] + 250
    assert data_end(data) == EPOCH + pd.Timedelta(days=DAYS + 1)  # the data now ends with the served day
    impressions = read_table(data, "impressions").to_pandas()
    new = impressions[impressions.request_id >= SERVED_ID_BASE].reset_index(drop=True)
    expected = slate_outcomes(sim, served_frame(requests, slates), seed=11)
    assert list(new.request_id) == [_hash_id(r) for r in expected.request_id]
    for column in ("user_id", "post_id", "position", *ACTION_NAMES, prob_column("click")):
        assert np.allclose(new[column].to_numpy(float), expected[column].to_numpy(float)), column
    assert (new.ts.astype("int64") // 10**3 == (expected.ts * 1000).astype("int64") // 10**3).all()
    assert new.click.sum() > 0
    # the posts of the served day join the dataset's posts; the next day's do not yet
    posts = read_table(data, "posts").to_pandas()
    created = (posts.created_at.astype("int64") // 10**9 - int(EPOCH.timestamp())).to_numpy()
    assert created.max() < (DAYS + 1) * DAY_S <= sim.post_created_s[-1]
    assert len(posts) == np.searchsorted(sim.post_created_s, (DAYS + 1) * DAY_S) > len(world.post_author)
    assert after.params["simulated"]["posts_through_s"] == (DAYS + 1) * DAY_S
    from core.errors import UserError

    with pytest.raises(UserError, match="^--data: "):  # served days are no longer what the synth stage generates
        synth_params(data)
    assert synth_params(nano) == {"scale": "nano", "seed": 7, "drift": "none", "drift_day": 2, "days": 4}


def test_results_are_json_and_a_csv_plot_with_a_one_line_summary(tmp_path: Path) -> None:
    rows = [
        {"day": d, "date": f"2026-01-0{4 + d}", "policy": p, "true_reward": r, "requests": 10, "alarm": d == 2,
         "retrained": d == 2, "promoted": False, "champion": "a-b"}
        for d in (1, 2) for p, r in (("loop", 1.0 * d), ("oracle", 5.0))
    ]  # fmt: skip
    write_results(tmp_path, rows, {"days": 2})
    frame = pd.read_csv(tmp_path / "simulate.csv")
    assert list(frame.columns) == ["day", "date", "loop", "oracle", "alarm", "retrained", "promoted", "champion"]
    assert frame.loop.tolist() == [1.0, 2.0] and frame.oracle.tolist() == [5.0, 5.0]
    assert frame.alarm.tolist() == [False, True]
    line = summary_line(rows)
    assert "\n" not in line and "loop 1.5000" in line and "oracle 5.0000" in line and "1 alarms, 1 retrains" in line


def test_policies_and_numbers_are_checked() -> None:
    from core.errors import UserError

    assert parse_policies("random, loop") == ("loop", "random")
    assert parse_policies(",".join(POLICIES)) == POLICIES
    for bad, where in (
        (lambda: parse_policies("loop,best"), "--policies"),
        (lambda: parse_policies(" , "), "--policies"),
        (lambda: check_args(0, 10, "none", None, 0), "--days"),
        (lambda: check_args(2, -1, "none", None, 0), "--requests-per-day"),
        (lambda: check_args(2, 10, "none", None, -1), "--seed"),
        (lambda: check_args(2, 10, "author_spam", 1, 0), "--drift"),
        (lambda: check_args(2, 10, "topic_shift", 3, 0), "--drift-day"),
        (lambda: check_args(2, 10, "topic_shift", None, 0), "--drift-day"),
        (lambda: check_args(2, 10, "none", None, 0, k=0), "--k"),
        (lambda: check_args(2, 10, "none", None, 0, retrain_every=-1), "--retrain-every"),
        (lambda: check_args(2, 10, "none", None, 0, explore_slots=-1), "--explore-slots"),
        (lambda: check_args(2, 10, "none", None, 0, k=5, explore_slots=6), "--explore-slots"),
    ):
        with pytest.raises(UserError, match=f"^{where}:"):
            bad()


@pytest.mark.parametrize(
    ("args", "where"),
    [
        (["--days", "0"], "--days: must be >= 1"),
        (["--requests-per-day", "-3"], "--requests-per-day"),
        (["--drift", "new_users", "--drift-day", "1"], "--drift"),
        (["--drift", "topic_shift", "--drift-day", "9"], "--drift-day"),
        (["--policies", "loop,bogus"], "--policies: unknown policy 'bogus'"),
        (["--set", "train_ranker"], "--set"),
        (["--set", "train_ranker.no_such_key=1"], "--set: 'train_ranker.no_such_key'"),
        (["--data", "NOT_A_DATASET"], "--data: not a synthetic dataset"),
        (["--data", "DRIFTED"], "--data"),
        (["--data", "NOT_A_PRESET"], "--data"),
    ],
)
def test_bad_input_is_one_line_naming_the_parameter_and_out_is_untouched(
    run_cli, nano: Path, tmp_path: Path, args: list[str], where: str
) -> None:
    import json

    drifted = tmp_path / "drifted"
    shutil.copytree(nano, drifted)
    manifest = json.loads((drifted / "manifest.json").read_text())
    manifest["params"]["drift"] = "topic_shift"
    (drifted / "manifest.json").write_text(json.dumps(manifest))
    odd = tmp_path / "odd"
    shutil.copytree(nano, odd)
    manifest["params"].update(drift="none", n_users=301)
    (odd / "manifest.json").write_text(json.dumps(manifest))
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "notes.txt").write_text("no dataset here")
    places = {"NOT_A_DATASET": tmp_path / "plain", "DRIFTED": drifted, "NOT_A_PRESET": odd}
    args = [str(places.get(a, a)) for a in args]

    out = tmp_path / "out"
    out.mkdir()
    (out / "kept.txt").write_text("an earlier run")
    base = ["simulate", "--data", str(nano), "--days", "2", "--out", str(out)]
    line = run_cli(*base, *args).error_line()
    assert line.startswith(f"error: {where}"), line
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".out")) == []  # no temp dir left
    assert [p.name for p in out.iterdir()] == ["kept.txt"] and (out / "kept.txt").read_text() == "an earlier run"


def test_recovery_reads_the_normalised_reward_against_the_pre_drift_level() -> None:
    from monitoring.simulate import normalised_rewards, recovery

    days = {  # day: (loop, frozen, oracle, random)
        1: (5.0, 5.0, 10.0, 0.0), 2: (6.0, 6.0, 10.0, 2.0),  # before: loop 0.5, 0.5 of the way to the oracle
        3: (2.0, 2.0, 10.0, 0.0), 4: (3.5, 1.0, 8.0, 1.0), 5: (5.0, 1.0, 10.0, 0.0),
    }  # fmt: skip
    rows = [{"day": d, "policy": p, "true_reward": v} for d, values in days.items()
            for p, v in zip(("loop", "frozen", "oracle", "random"), values, strict=True)]  # fmt: skip
    norm = normalised_rewards(rows)
    assert norm.loc[2, "loop"] == pytest.approx(0.5) and norm.loc[4, "loop"] == pytest.approx(2.5 / 7)
    out = recovery(rows, drift_day=3)
    assert out["loop"]["pre_drift"] == 0.5 and out["loop"]["back_from"] == 2 and out["loop"]["recovered"]
    assert out["frozen"]["back_from"] is None and not out["frozen"]["recovered"]
    assert not recovery(rows, drift_day=3, within=1)["loop"]["recovered"]
    # Not reached by the drift on the onset day, then falling: it has not recovered (it never held).
    late = {**days, 3: (5.0, 5.0, 10.0, 0.0)}
    rows = [{"day": d, "policy": p, "true_reward": v} for d, values in late.items()
            for p, v in zip(("loop", "frozen", "oracle", "random"), values, strict=True)]  # fmt: skip
    out = recovery(rows, drift_day=3)
    assert out["frozen"]["back_from"] is None and not out["frozen"]["recovered"]
    assert out["loop"]["back_from"] == 2 and out["loop"]["recovered"]  # day 4 (0.36) below 0.45, day 5 back
    assert recovery(rows, None) == {} and recovery(rows, 1) == {}
    assert recovery([r for r in rows if r["policy"] != "random"], 3) == {}


def test_appended_outcomes_are_what_the_monitor_reads_back(tmp_path: Path) -> None:
    from monitoring.outcomes import read_outcomes
    from monitoring.simulate import append_outcomes

    day = pd.DataFrame({"request_id": ["sim-d4-0", "sim-d4-0"], "post_id": [5, 9], "user_id": [1, 1],
                        "click": [1, 0], "like": [0, 0], "true_reward": [0.3, 0.1]})  # fmt: skip
    log = tmp_path / "logs" / "outcomes.jsonl"
    append_outcomes(day, log)
    append_outcomes(day.assign(request_id="sim-d5-0", click=[0, 1]), log)
    append_outcomes(day.iloc[:0], log)
    back = read_outcomes(log)
    assert list(back["request_id"]) == ["sim-d4-0", "sim-d4-0", "sim-d5-0", "sim-d5-0"]
    assert list(back["click"]) == [1, 0, 0, 1] and list(back["post_id"]) == [5, 9, 5, 9]
    assert "true_reward" not in back.columns and "user_id" not in back.columns


@pytest.mark.parametrize("hours", [-1, 25])
def test_bad_live_hours_are_named_before_anything_runs(hours: int) -> None:
    from monitoring.simulate_live import check_live_hours

    with pytest.raises(UserError, match=r"--live-hours: must be in \[0, 24\]"):
        check_live_hours(hours)
    check_live_hours(0)  # the day served from its start
    check_live_hours(24)
