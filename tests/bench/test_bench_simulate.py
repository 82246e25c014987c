"""bench.simulate's verdicts from finished runs' rows (the runs themselves are `ember simulate`, tested elsewhere)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.simulate import no_drift_row, shift_row


def _rows(days: dict[int, dict[str, float]], alarms: set[int] = frozenset(), promoted: set[int] = frozenset()
          ) -> list[dict]:  # fmt: skip
    return [
        {"day": d, "policy": p, "true_reward": v, "alarm": d in alarms, "retrained": d in alarms,
         "promoted": d in promoted}
        for d, values in days.items() for p, v in values.items()
    ]  # fmt: skip


def test_no_drift_verdict_counts_alarm_days() -> None:
    days = {d: {"loop": -5.0} for d in range(1, 21)}
    result = {"rows": _rows(days, alarms={4}), "requests_per_day": 510}
    row = no_drift_row(result, "ember simulate ...", 100.0, 10.0)
    assert row.verdict == "met: 5.0% of 20 days" and row.extra["alarm_days"] == [4]
    row = no_drift_row({"rows": _rows(days, alarms={4, 9}), "requests_per_day": 510}, "c", 1.0, 1.0)
    assert row.verdict.startswith("missed: 10.0%")
    short = {d: {"loop": -5.0} for d in range(1, 10)}
    assert no_drift_row({"rows": _rows(short), "requests_per_day": 5}, "c", 1.0, 1.0).verdict.startswith("missed")


def test_shift_verdict_needs_the_loop_back_and_the_frozen_model_not() -> None:
    def day(loop: float, frozen: float) -> dict[str, float]:
        return {"loop": loop, "frozen": frozen, "oracle": 10.0, "random": 0.0}

    days = {1: day(5, 5), 2: day(5, 5), 3: day(2, 2), 4: day(3, 2), 5: day(4.6, 2)}
    result = {"rows": _rows(days, alarms={3}, promoted={4}), "drift_day": 3, "days": 5, "requests_per_day": 510}
    row = shift_row(result, "c", 1.0, 1.0)
    assert row.verdict == (
        "met: loop at >= 90% of its pre-drift 0.50 from onset day +2 on; frozen below 90% of its pre-drift 0.50 on "
        "the last day (3 days from the onset)"
    )
    assert "day 3: alarm retrain" in row.throughput and "day 4: promotion" in row.throughput
    days[5] = day(4.6, 4.6)
    assert shift_row(result | {"rows": _rows(days)}, "c", 1.0, 1.0).verdict.startswith("missed: loop at >= 90%")
    days[5] = day(2, 2)
    never = shift_row(result | {"rows": _rows(days)}, "c", 1.0, 1.0).verdict
    assert never.startswith("missed: loop below 90% of its pre-drift 0.50 on the last day (3 days from the onset)")
    days[3], days[4], days[5] = day(5, 5), day(5, 5), day(5, 2)  # the frozen model holds, then falls: not recovered
    late = shift_row(result | {"rows": _rows(days)}, "c", 1.0, 1.0).verdict
    assert late.startswith("met: loop at >= 90% of its pre-drift 0.50 from onset day +0 on; frozen below 90%")
    below = {d: day(-1, -1) for d in range(1, 6)}  # below random before the drift: nothing to get back to
    verdict = shift_row(result | {"rows": _rows(below)}, "c", 1.0, 1.0).verdict
    assert verdict == "missed: loop: no positive pre-drift level to get back to (-0.1); frozen: no positive " \
                      "pre-drift level to get back to (-0.1)"  # fmt: skip


def test_only_one_run_keeps_the_others_row_with_when_and_where_it_was_measured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    import bench.harness
    from bench.harness import kept_rows
    from bench.simulate import ROW_NAMES

    names = ("no drift: days with an alarm", "topic_shift: recovery of the true reward")
    fields = {
        "group": "simulate",
        "command": "c",
        "settings": "s",
        "repeats": 1,
        "wall_s_median": 1.0,
        "wall_s_p99": 1.0,
        "peak_rss_mb_max": 1.0,
        "throughput": "t",
        "target": "x",
        "verdict": "met",
    }
    rows = [{**fields, "name": n, "extra": {}} for n in names]
    body = {"group": "simulate", "machine": {"cpu": "EPYC", "cpu_flags": "avx2", "commit": "abc1234"},
            "measured_at": "2026-12-06 22:06 UTC", "rows": rows}  # fmt: skip
    (tmp_path / "simulate.json").write_text(json.dumps(body))
    monkeypatch.setattr(bench.harness, "RESULTS", tmp_path)
    kept = kept_rows("simulate", lambda r: r["name"] != ROW_NAMES["topic_shift"])  # what --only topic_shift keeps
    assert [r.name for r in kept] == ["no drift: days with an alarm"]
    assert kept[0].extra == {"measured_at": "2026-12-06 22:06 UTC", "commit": "abc1234", "cpu": "EPYC (avx2)"}
