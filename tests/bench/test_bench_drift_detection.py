"""bench.drift_detection on the smallest setting: the daily monitor catches a topic shift on its onset day and stays
quiet on a world without drift (seeded worlds, so the verdicts are deterministic)."""

from __future__ import annotations

import numpy as np

from bench import drift_detection as dd
from monitoring.config import load_config

TINY = dd.Setting(n_users=300, drift_day=2, days_after=1, none_days=2)
CALIBRATED = dd.Monitor("calibrated", load_config())


def test_daily_frames_have_every_feature_and_label_and_match_the_config() -> None:
    cfg = TINY.synth("none", seed=5)
    frames = dict(dd.daily_frames(cfg))
    assert sorted(frames) == list(range(cfg.days))
    for day, frame in frames.items():
        assert list(frame.columns) == [*dd.FEATURES, *dd.LABELS] and len(frame) > 1000
        assert not frame[list(dd.FEATURES)].isna().any().any()
        # Day 0 has no previous day; later days carry the previous day's history.
        assert (frame["user_impressions_1d"] == 0).all() == (day == 0)
    again = dict(dd.daily_frames(cfg))
    assert all(again[d].equals(frames[d]) for d in frames)


def test_topic_shift_is_caught_on_its_onset_day_and_none_raises_no_alarm() -> None:
    shift = dd.monitor_world(TINY, "topic_shift", seed=5, monitors=[CALIBRATED])["calibrated"]
    assert [c.day for c in shift] == [TINY.drift_day]
    assert dd.first_alarm_delay(shift, TINY.drift_day) == 0
    assert shift[0].target == "fail" and "click" in shift[0].target_drifted

    quiet = dd.monitor_world(TINY, "none", seed=5, monitors=[CALIBRATED])["calibrated"]
    assert [c.day for c in quiet] == [2, 3]
    assert not any(c.alarm for c in quiet), [(c.day, c.data_drifted, c.target_drifted) for c in quiet]


def test_rows_report_delays_and_the_false_alarm_rate() -> None:
    def check(day: int, alarm: bool) -> dd.DayCheck:
        return dd.DayCheck(day=day, data="fail" if alarm else "pass", data_share=0.5 if alarm else 0.0, target="pass")

    setting = dd.Setting(drift_day=4, days_after=3, none_days=20)
    outcomes = [
        dd.Outcome("topic_shift", 1, [check(4, False), check(5, True), check(6, True)], 1.0),
        dd.Outcome("topic_shift", 2, [check(4, True), check(5, True), check(6, True)], 1.0),
        dd.Outcome("none", 1, [check(d, d == 9) for d in range(4, 24)], 2.0),
    ]
    rows = dd.rows_for(outcomes, setting, "x", "s", "python -m bench.drift_detection")
    by_name = {r.name: r for r in rows}
    shift = by_name["topic_shift: detection delay (x)"]
    assert shift.extra["delays_days"] == {1: 1, 2: 0} and shift.verdict == "met: 2/2 seeds within 1 day"
    none = by_name["none: false-alarm rate (x)"]
    assert none.verdict == "met: 5.0%" and none.extra["alarm_days"] == {1: [9]}
    assert np.isclose(none.wall_s_median, 2.0)
