"""bench.simulate's verdicts from finished runs' rows (the runs themselves are `ember simulate`, tested elsewhere)."""

from __future__ import annotations

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
    assert row.verdict == "met: loop back on onset day +2, frozen back never"
    assert "day 3: alarm retrain" in row.throughput and "day 4: promotion" in row.throughput
    days[5] = day(4.6, 4.6)
    assert shift_row(result | {"rows": _rows(days)}, "c", 1.0, 1.0).verdict.startswith("missed")
